"""Random inputs and well-formed random layouts for the sparse-path tests,
with the masked f32 reference they are checked against."""

import jax.numpy as jnp
import numpy as np

from kernel_test_utils import fresh_rng as fresh_rng
from kernel_test_utils import random_qkv as random_qkv
from kernel_test_utils import reference as reference
from pallas_kernels.layouts import (
    AShapeLayout,
    BlockSparseLayout,
    VerticalSlashLayout,
)

BS = 64


def random_vs_layout(rng, b, n, t, ns, nv, inactive=()):
  """A random well-formed VS layout (numpy loops, test sizes).

  Windows: disjoint, ascending, unaligned starts anywhere in [0, T) (some past
  the diagonal or the sequence end). Columns: ascending, < m * 64, outside the
  windows. Padding holds random in-range values that must never be read.
  """
  tb = -(-t // BS)
  count = np.zeros((b, n, tb), np.int32)
  offset = rng.integers(0, t, (b, n, tb, ns)).astype(np.int32)
  ccount = np.zeros((b, n, tb), np.int32)
  cindex = rng.integers(0, t, (b, n, tb, nv)).astype(np.int32)
  for bb in range(b):
    for h in range(n):
      if h in inactive:
        continue
      for m in range(tb):
        starts, pos = [], int(rng.integers(0, BS))
        while pos < t and len(starts) < ns:
          if rng.random() < 0.5:
            starts.append(pos)
            pos += BS
          pos += int(rng.integers(1, 2 * BS))
        count[bb, h, m] = len(starts)
        offset[bb, h, m, : len(starts)] = starts
        covered = np.zeros(t, bool)
        for s0 in starts:
          covered[s0 : s0 + BS] = True
        free = np.flatnonzero(~covered[: m * BS])
        k = int(rng.integers(0, min(nv, free.size) + 1))
        cols = np.sort(rng.choice(free, k, replace=False))
        ccount[bb, h, m] = k
        cindex[bb, h, m, :k] = cols
  return VerticalSlashLayout(*map(jnp.asarray, (count, offset, ccount, cindex)))


def random_bs_layout(rng, b, n, t, kb, inactive=()):
  """A random well-formed BS layout: sorted distinct key blocks <= m."""
  tb = -(-t // BS)
  count = np.zeros((b, n, tb), np.int32)
  index = rng.integers(0, tb, (b, n, tb, kb)).astype(np.int32)
  for bb in range(b):
    for h in range(n):
      if h in inactive:
        continue
      for m in range(tb):
        k = int(rng.integers(0, min(kb, m + 1) + 1))
        index[bb, h, m, :k] = np.sort(rng.choice(m + 1, k, replace=False))
        count[bb, h, m] = k
  return BlockSparseLayout(jnp.asarray(count), jnp.asarray(index))


def random_a_shape_layout(rng, n, t, inactive=()):
  n_init = rng.integers(0, t + 5, n)
  n_local = rng.integers(1, t + 5, n)
  for h in inactive:
    n_init[h] = n_local[h] = 0
  return AShapeLayout(jnp.asarray(n_init, jnp.int32),
                      jnp.asarray(n_local, jnp.int32))


def assert_close(out, ref, dtype, seed, what):
  assert out.dtype == dtype, (out.dtype, dtype)
  out = np.asarray(out.astype(jnp.float32))
  assert np.isfinite(out).all(), f"non-finite ({what}, seed={seed})"
  if dtype == jnp.float32:
    err = np.abs(out - ref).max()
    assert err <= 1e-5, f"max abs err {err:.2e} ({what}, seed={seed})"
  else:
    rel = np.linalg.norm(out - ref) / np.linalg.norm(ref)
    assert rel <= 1e-2, f"rel err {rel:.2e} ({what}, seed={seed})"
