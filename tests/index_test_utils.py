"""Random inputs and checks shared by the index-builder tests: structured
q/k whose top-k is not degenerate, random index sets, layout properties."""

import math

import jax.numpy as jnp
import numpy as np
import numpy_reference as ref

from minference_jax.index import VerticalSlashIndices
from pallas_kernels.reference import vertical_slash_mask

# (N, K): GQA group sizes 1, 2, 4 and 8.
HEADS = [(2, 2), (4, 2), (4, 1), (8, 1)]


def structured_qk(rng, b, t, n, kv, d=16):
  """Random q/k with a few strong key columns and one strong diagonal.

  The structure makes the top-k non-degenerate; the continuous noise makes
  exact score ties have probability zero.
  """
  g = n // kv
  q = rng.standard_normal((b, t, n, d))
  k = rng.standard_normal((b, t, kv, d))
  for h in range(kv):
    u = rng.standard_normal(d)
    u /= np.linalg.norm(u)
    cols = rng.choice(t, size=min(3, t), replace=False)
    k[:, cols, h] += 2.0 * math.sqrt(d) * u
    q[:, :, h * g : (h + 1) * g] += 2.0 * u
  offset = int(rng.integers(0, t))
  w = rng.standard_normal((b, t, d))
  q += 1.5 * w[:, :, None, :]
  k[:, : t - offset] += 1.5 * w[:, offset:, None, :]
  return q.astype(np.float32), k.astype(np.float32)


def assert_same_top(got, want, score, what):
  """Selected sets agree, except entries whose scores tie within tolerance."""
  got, want = set(got.tolist()), set(want.tolist())
  assert len(got) == len(want), what
  if got == want:
    return
  threshold = min(score[j] for j in want)  # smallest selected score
  tol = 1e-5 * max(1.0, abs(threshold)) + 1e-7
  for j in got - want:
    assert score[j] >= threshold - tol, (what, j, score[j], threshold)
  for j in want - got:
    assert score[j] <= threshold + tol, (what, j, score[j], threshold)


def random_indices(rng, b, n, t, force_zero):
  """Random VerticalSlashIndices with many kinds of gaps between slashes."""
  counts_v = rng.integers(0, min(t, 40) + 1, (b, n))
  counts_s = rng.integers(0 if not force_zero else 1, min(t, 40) + 1, (b, n))
  nv, ns = max(int(counts_v.max()), 1), max(int(counts_s.max()), 1)
  vertical = np.full((b, n, nv), t - 1, np.int32)
  slash = np.zeros((b, n, ns), np.int32)
  for bi in range(b):
    for h in range(n):
      vertical[bi, h, : counts_v[bi, h]] = np.sort(
          rng.choice(t, counts_v[bi, h], replace=False)
      )
      # Offsets as cumulative gaps: short, around one to two windows, long.
      gaps = rng.choice([1, 3, 17, 63, 64, 65, 90, 127, 128, 129, 200], 3 * t)
      offsets = np.cumsum(gaps) - (gaps[0] if force_zero else 0)
      offsets = offsets[offsets < t]
      cnt = min(int(counts_s[bi, h]), len(offsets))
      counts_s[bi, h] = cnt
      slash[bi, h, :cnt] = np.sort(offsets[:cnt])[::-1]
  return VerticalSlashIndices(
      vertical=jnp.asarray(vertical),
      vertical_count=jnp.asarray(counts_v, jnp.int32),
      slash=jnp.asarray(slash),
      slash_count=jnp.asarray(counts_s, jnp.int32),
  )


def layout_arrays(layout):
  return tuple(
      np.asarray(x)
      for x in (
          layout.block_count,
          layout.block_offset,
          layout.column_count,
          layout.column_index,
      )
  )


def check_layout_properties(layout, indices, t):
  """Exact cover of the causal VS mask, no key twice, columns left of rows."""
  bs = layout.block_size
  count, offset, c_count, c_index = layout_arrays(layout)
  b, n, tb = count.shape
  ns, nv = offset.shape[-1], c_index.shape[-1]
  vertical, v_count = np.asarray(indices.vertical), np.asarray(
      indices.vertical_count
  )
  slash, s_count = np.asarray(indices.slash), np.asarray(indices.slash_count)
  assert np.all((count >= 0) & (count <= ns))
  assert np.all((c_count >= 0) & (c_count <= nv))
  for bi in range(b):
    for h in range(n):
      for m in range(tb):
        starts = offset[bi, h, m, : count[bi, h, m]]
        cols = c_index[bi, h, m, : c_count[bi, h, m]]
        assert np.all((starts >= 0) & (starts < t))
        assert np.all(np.diff(starts) >= bs)  # ascending, disjoint
        assert np.all(cols < m * bs) and np.all(np.diff(cols) > 0)
        hits = np.zeros(t + bs, int)
        for o in starts:
          hits[o : o + bs] += 1
        hits[cols] += 1
        assert hits.max(initial=0) <= 1, (bi, h, m)  # no key twice
  exact = ref.vs_exact_mask(
      {(bi, h): vertical[bi, h, : v_count[bi, h]]
       for bi in range(b) for h in range(n)},
      {(bi, h): slash[bi, h, : s_count[bi, h]]
       for bi in range(b) for h in range(n)},
      b, n, t,
  )
  covered = np.asarray(vertical_slash_mask(layout, t, t))
  missing = exact & ~covered
  assert not missing.any(), np.argwhere(missing)[:5]
