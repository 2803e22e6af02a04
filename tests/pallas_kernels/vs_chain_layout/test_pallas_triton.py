"""Pallas chain-layout builder (interpret mode) vs the XLA builder, exactly."""

import jax.numpy as jnp
import numpy as np
import pytest

import kernel_test_utils as ktu
from minference_jax import index_vs_layout
from minference_jax.index import (
    VerticalSlashIndices,
    vertical_slash_chain_layout,
    vertical_slash_indices,
)
from pallas_kernels.vs_chain_layout import Config, vs_chain_layout

FIELDS = ("window_next", "run_length", "run_next", "vertical",
          "vertical_prefix")
# Gaps between consecutive slash offsets: dense stretches (runs of adjacent
# windows longer than a tile), gaps around one and two windows of 16 / 64
# (some residues break, some do not), and long ones.
GAPS = (1, 1, 1, 2, 3, 15, 16, 17, 31, 33, 63, 64, 65, 100, 127, 128, 129,
        300)


def dense_indices(rng, b, n, t, ns, nv) -> VerticalSlashIndices:
  """Sorted lists with many slashes per tile, random counts (0 and full
  included) and random garbage past the counts (never to be read)."""
  slash = rng.integers(-5, 2 * t, (b, n, ns)).astype(np.int32)
  vertical = rng.integers(-5, 2 * t, (b, n, nv)).astype(np.int32)
  s_count = rng.integers(0, ns + 1, (b, n))
  v_count = rng.integers(0, nv + 1, (b, n))
  s_count.flat[0], v_count.flat[0] = ns, nv  # one head with full lists
  s_count.flat[-1] = 0  # and one without slashes
  for bi in range(b):
    for h in range(n):
      start = 0 if rng.random() < 0.7 else int(rng.integers(1, 40))
      offsets = start + np.cumsum(rng.choice(GAPS, ns)) - 1
      offsets = np.unique(np.minimum(offsets, t - 1))
      cnt = min(int(s_count[bi, h]), len(offsets))
      s_count[bi, h] = cnt
      slash[bi, h, :cnt] = offsets[:cnt][::-1]  # descending
      cnt = int(v_count[bi, h])
      vertical[bi, h, :cnt] = np.sort(rng.choice(t, cnt, replace=False))
  return VerticalSlashIndices(
      vertical=jnp.asarray(vertical),
      vertical_count=jnp.asarray(v_count, jnp.int32),
      slash=jnp.asarray(slash),
      slash_count=jnp.asarray(s_count, jnp.int32),
  )


def assert_same_layout(got, want, what):
  assert got.block_size == want.block_size
  for field in FIELDS:
    g, w = np.asarray(getattr(got, field)), np.asarray(getattr(want, field))
    assert g.shape == w.shape and g.dtype == w.dtype == np.int32, field
    bad = np.argwhere(g != w)
    assert not len(bad), (what, field, bad[:3].tolist(),
                          g[tuple(bad[0])], w[tuple(bad[0])])


@pytest.mark.parametrize("b, n, t, bs, ns, nv, rows", [
    (1, 3, 700, 16, 300, 200, 2),  # 23 tiles: runs cross many tiles
    (2, 2, 333, 64, 200, 40, 1),  # one row per tile (all carried)
    (1, 2, 1000, 64, 60, 30, 32),  # the default tile; T not a multiple
    (1, 2, 5, 16, 3, 2, 4),  # T below one window
])
def test_pallas_builder_equals_xla_builder(b, n, t, bs, ns, nv, rows):
  rng, seed = ktu.fresh_rng()
  indices = dense_indices(rng, b, n, t, ns, nv)
  want = vertical_slash_chain_layout(indices, t, bs)  # XLA
  got = vs_chain_layout(
      indices.slash, indices.slash_count, indices.vertical,
      indices.vertical_count, t, bs, config=Config(rows_per_tile=rows),
      interpret=True)
  assert_same_layout(got, want, f"seed={seed}")
  if rows <= 2:  # runs longer than a tile: the carry is read
    assert np.asarray(want.run_length).max() > rows


def test_pallas_builder_on_estimated_indices():
  """builder="pallas" on `vertical_slash_indices` output (GQA, one inactive
  head, per-head budgets) equals builder="xla"."""
  rng, seed = ktu.fresh_rng()
  t, n = 260, 4
  q, k, _ = ktu.random_qkv(rng, 1, t, n, 2, 32, jnp.float32)
  indices = vertical_slash_indices(q, k, (40, 5, 100, 70), (60, 50, 200, 90),
                                   active=(True, False, True, True))
  want = vertical_slash_chain_layout(indices, t)
  got = vertical_slash_chain_layout(indices, t, builder="pallas",
                                    interpret=True)
  assert_same_layout(got, want, f"seed={seed}")


def test_bad_arguments():
  indices = dense_indices(np.random.default_rng(0), 1, 1, 50, 4, 3)
  with pytest.raises(ValueError, match="builder must be"):
    vertical_slash_chain_layout(indices, 50, builder="cuda")
  with pytest.raises(ValueError, match="power of two"):
    vertical_slash_chain_layout(indices, 50, 48, builder="pallas")
  for rows in (3, 64, 0):
    with pytest.raises(ValueError, match="rows_per_tile"):
      Config(rows_per_tile=rows)
  with pytest.raises(ValueError, match="num_warps"):
    Config(num_warps=3)
  assert (index_vs_layout.vertical_slash_chain_layout
          is vertical_slash_chain_layout)
