"""The search's building blocks against the public index builders and plain
references: rank selections, layouts, kernel cost, key sets and scores."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from minference_jax.index import (
    block_sparse_indices,
    vertical_slash_indices,
    vertical_slash_layout,
)
from minference_jax.patterns import AShape, BlockSparse, Dense, VerticalSlash
from minference_jax.search import (
    KeySets,
    a_shape_tiles,
    block_sparse_tiles,
    build_keysets,
    head_estimates,
    kernel_tiles,
    measure_patterns,
    pattern_arrays,
    score_keysets,
    tile_share,
)
from minference_jax.search.keysets import vs_column_count, vs_windows

T, N, KV, D = 300, 4, 2, 16  # T not a multiple of 64; GQA group 2


def fresh_rng() -> tuple[np.random.Generator, int]:
  """A generator from OS entropy and its seed (printed on failure)."""
  seed = int(np.random.SeedSequence().entropy % (2**32))
  return np.random.default_rng(seed), seed


def structured_qkv(rng, b=2, t=T):
  """q/k with a few strong columns and a diagonal (non-degenerate ranks)."""
  q = rng.standard_normal((b, t, N, D))
  k = rng.standard_normal((b, t, KV, D))
  k[:, rng.choice(t, 5, replace=False)] += 2.0 * q[:, -1:, ::2]
  k[:, 7:] += 0.5 * q[:, :-7, ::2]
  v = rng.standard_normal((b, t, KV, D))
  return tuple(jnp.asarray(x, jnp.float32) for x in (q, k, v))


@pytest.fixture(scope="module")
def layer():
  """One random layer shared by the tests (compiles once): seed, q, k, v,
  estimates and the key sets of MIXED."""
  rng, seed = fresh_rng()
  q, k, v = structured_qkv(rng)
  est = head_estimates(q, k)
  return seed, q, k, v, est, build_keysets(est, pattern_arrays(MIXED), T)


# Candidate rows [C][N]: per-head budgets, and kinds mixed within a row.
MIXED = [
    [VerticalSlash(30, 50), VerticalSlash(40, 120), VerticalSlash(90, 60),
     VerticalSlash(200, 150)],
    [AShape(16, 100), AShape(0, 64), AShape(70, 1), AShape(5, 300)],
    [VerticalSlash(35, 70), AShape(10, 90), BlockSparse(2),
     BlockSparse(100)],
]


def _sets(values, counts):
  return [set(np.asarray(v)[: int(c)].tolist()) for v, c in
          zip(values, counts)]


@pytest.mark.parametrize("nv,ns", [(30, 50), (100, 260)])
def test_vertical_slash_ranks_select_the_builders_lines(layer, nv, ns):
  seed, q, k, _, est, _ = layer
  ref = vertical_slash_indices(q, k, nv, ns)
  kv, ks = min(T, max(nv, 30)), min(T, max(ns, 50))
  for b in range(q.shape[0]):
    for h in range(N):
      verts = set(np.flatnonzero(np.asarray(est.vertical_rank[b, h]) < kv))
      slash = set(np.flatnonzero(np.asarray(est.slash_rank[b, h]) < ks))
      assert verts == _sets(ref.vertical[b, h][None], [kv])[0], seed
      assert slash == _sets(ref.slash[b, h][None], [ks])[0], seed


@pytest.mark.parametrize("top_k", [1, 4])
def test_block_ranks_select_the_builders_blocks(layer, top_k):
  seed, q, k, _, est, _ = layer
  ref = block_sparse_indices(q, k, top_k)
  rank = np.asarray(est.block_rank)
  for b in range(q.shape[0]):
    for h in range(N):
      for m in range(rank.shape[2]):
        mine = set(np.flatnonzero(rank[b, h, m] < min(m + 1, top_k)))
        count = int(ref.block_count[b, h, m])
        theirs = set(np.asarray(ref.block_index[b, h, m, :count]).tolist())
        assert mine == theirs, (seed, b, h, m)


NV, NS = (30, 64, 150, 31), (50, 100, 70, 250)  # per-head budgets


def test_windows_and_columns_are_the_builders(layer):
  """Windows come from the public builder; the column count from prefix
  sums equals the builder's own column list."""
  seed, q, k, _, est, _ = layer
  ref = vertical_slash_layout(vertical_slash_indices(q, k, NV, NS), T)

  @jax.jit
  def windows_and_columns(v_rank, s_rank):
    kv, ks = jnp.asarray([NV], jnp.int32), jnp.asarray([NS], jnp.int32)
    count, starts = vs_windows(s_rank, ks, T)
    vertical = v_rank[None] < kv[..., None]
    return count, starts, vs_column_count(vertical, count, starts)

  count, starts, columns = windows_and_columns(est.vertical_rank[0],
                                               est.slash_rank[0])
  np.testing.assert_array_equal(count[0], ref.block_count[0], str(seed))
  np.testing.assert_array_equal(columns[0], ref.column_count[0], str(seed))
  for h in range(N):
    for m in range(count.shape[-1]):
      c = int(count[0, h, m])
      np.testing.assert_array_equal(starts[0, h, m, :c],
                                    ref.block_offset[0, h, m, :c], str(seed))


def _kernel_a_shape_tiles(n_init, n_local, t):
  """The A-shape kernel's loop bounds, literally, summed over row blocks."""
  total = 0
  for r0 in range(0, t, 64):
    r_end = min(r0 + 64, t)
    sink_end = max(min(n_init, r_end - n_local), 0)
    total += -(-sink_end // 64)
    lo = max(r0 + 1 - n_local, 0) // 64
    hi = -(-r_end // 64) if n_local > 0 else lo
    total += hi - lo
  return total


@pytest.mark.parametrize("t", [300, 1000])
def test_static_costs_count_the_kernels_tiles(t):
  rng, seed = fresh_rng()
  for n_init, n_local in [(0, 0), (0, 1), (128, 64), (*rng.integers(
      0, t, 2).tolist(),), (1, t)]:
    assert int(a_shape_tiles(n_init, n_local, t)) == _kernel_a_shape_tiles(
        n_init, n_local, t), (seed, n_init, n_local)
  tb = -(-t // 64)
  for top_k in (1, 3, tb + 5):
    q = jnp.asarray(rng.standard_normal((1, t, 2, 8)), jnp.float32)
    layout = block_sparse_indices(q, q, top_k)
    assert int(block_sparse_tiles(top_k, t)) == int(
        np.asarray(layout.block_count)[0, 0].sum()), seed


def test_vertical_slash_cost_counts_the_builders_layout(layer):
  seed, q, k, _, est, _ = layer
  rows = [[VerticalSlash(v, s) for v, s in zip(NV, NS)]]
  tiles = np.asarray(jax.jit(kernel_tiles, static_argnums=2)(
      est, pattern_arrays(rows), T))  # [B, C, N]
  layout = vertical_slash_layout(vertical_slash_indices(q, k, NV, NS), T)
  bc = np.asarray(layout.block_count)
  cc = np.asarray(layout.column_count)
  np.testing.assert_array_equal(tiles[:, 0], (bc + -(-cc // 64)).sum(-1),
                                str(seed))


def keyset_masks(ks: KeySets, t: int) -> np.ndarray:
  """KeySets -> [B, C, N, T, T] by the documented rule (NumPy)."""
  starts, counts = np.asarray(ks.window_start), np.asarray(ks.window_count)
  vertical, block = np.asarray(ks.vertical), np.asarray(ks.block)
  n_init, n_local = np.asarray(ks.n_init), np.asarray(ks.n_local)
  b, c, n, tb, _ = starts.shape
  rows, cols = np.arange(t)[:, None], np.arange(t)[None, :]
  out = np.zeros((b, c, n, t, t), bool)
  for i in np.ndindex(b, c, n):
    window = np.zeros((tb, t), bool)
    for m in range(tb):
      for s in starts[i][m, : counts[i][m]]:
        window[m, s: s + 64] = True
    m_of = rows[:, 0] // 64
    mask = (window[m_of] | vertical[i][None]
            | block[i][m_of][:, cols[0] // 64]
            | (cols < n_init[i[1:]]) | (rows - cols < n_local[i[1:]]))
    out[i] = mask & (cols <= rows)
  return out


def layout_masks(q, k, rows, t):
  """The same key sets from the public builders' layouts: [B, C, N, T, T]
  (one builder call per row and kind, per-head budgets)."""
  b = q.shape[0]
  r, cc = np.arange(t)[:, None], np.arange(t)[None, :]
  out = np.zeros((b, len(rows), N, t, t), bool)
  for c, row in enumerate(rows):
    kind = lambda cls: tuple(isinstance(p, cls) for p in row)
    size = lambda cls, f: tuple(getattr(p, f) if isinstance(p, cls) else 1
                                for p in row)
    vs = bs = None
    if any(kind(VerticalSlash)):
      vs = vertical_slash_layout(vertical_slash_indices(
          q, k, size(VerticalSlash, "n_vertical"),
          size(VerticalSlash, "n_slash"), active=kind(VerticalSlash)), t)
    if any(kind(BlockSparse)):
      bs = block_sparse_indices(q, k, size(BlockSparse, "top_k"),
                                active=kind(BlockSparse))
    for h, p in enumerate(row):
      if isinstance(p, AShape):
        out[:, c, h] = (cc < p.n_init) | (r - cc < p.n_local)
      for bi in range(b):
        for m in range(-(-t // 64)):
          rows_m = out[bi, c, h, m * 64:(m + 1) * 64]
          if isinstance(p, BlockSparse):
            for j in np.asarray(bs.block_index[bi, h, m,
                                               :bs.block_count[bi, h, m]]):
              rows_m[:, j * 64:(j + 1) * 64] = True
          if isinstance(p, VerticalSlash):
            for s in np.asarray(vs.block_offset[bi, h, m,
                                                :vs.block_count[bi, h, m]]):
              rows_m[:, s:s + 64] = True
            rows_m[:, np.asarray(vs.column_index[
                bi, h, m, :vs.column_count[bi, h, m]])] = True
      out[:, c, h] &= cc <= r
  return out


def test_key_sets_are_what_the_layouts_compute(layer):
  seed, q, k, _, _, ks = layer
  np.testing.assert_array_equal(keyset_masks(ks, T),
                                layout_masks(q, k, MIXED, T), str(seed))


def _dense_scores(q, k, v, masks):
  """Recall, output error and covered pairs from dense float64 softmax."""
  q, k, v = (np.asarray(x, np.float64) for x in (q, k, v))
  b, t, n, d = q.shape
  g = n // k.shape[2]
  c = masks.shape[1]
  causal = np.tril(np.ones((t, t), bool))
  rec, err = np.zeros((b, c, n)), np.zeros((b, c, n))
  for bi in range(b):
    for h in range(n):
      logits = np.where(causal, q[bi, :, h] @ k[bi, :, h // g].T / math.sqrt(
          d), -np.inf)
      p = np.exp(logits - logits.max(1, keepdims=True))
      p /= p.sum(1, keepdims=True)
      y = p @ v[bi, :, h // g]
      for ci in range(c):
        pm = np.where(masks[bi, ci, h], p, 0.0)
        mass = pm.sum(1)
        rec[bi, ci, h] = mass.mean()
        yc = pm @ v[bi, :, h // g] / np.where(mass > 0, mass, 1)[:, None]
        err[bi, ci, h] = np.sqrt(((yc - y) ** 2).sum() / (y**2).sum())
  return rec, err, masks.sum((-2, -1))


def test_streamed_scores_match_dense_softmax(layer):
  """Tiles of 3 query blocks over 128-key chunks: several chunks per tile,
  a partial last tile and a partial last chunk (T = 300)."""
  seed, q, k, v, _, ks = layer
  scores, out = score_keysets(q, k, v, ks, row_blocks=3, key_chunk=128)
  rec, err, cov = _dense_scores(q, k, v, keyset_masks(ks, T))
  np.testing.assert_allclose(scores.recall, rec, atol=2e-5, err_msg=str(seed))
  np.testing.assert_allclose(scores.output_error, err, rtol=1e-3, atol=2e-5,
                             err_msg=str(seed))
  np.testing.assert_array_equal(scores.covered, cov, str(seed))
  qf, kf, vf = (np.asarray(x, np.float64) for x in (q, k, v))
  logits = np.einsum("btnd,bsnd->bnts", qf, np.repeat(kf, 2, 2)) / 4.0
  logits = np.where(np.tril(np.ones((T, T), bool)), logits, -np.inf)
  p = np.exp(logits - logits.max(-1, keepdims=True))
  p /= p.sum(-1, keepdims=True)
  dense = np.einsum("bnts,bsnd->btnd", p, np.repeat(vf, 2, 2))
  np.testing.assert_allclose(out, dense, atol=2e-5, err_msg=str(seed))


def test_recall_only_skips_the_output_error(layer):
  _, q, k, v, _, ks = layer
  scores, _ = score_keysets(q, k, v, ks, output=False, row_blocks=3,
                           key_chunk=128)
  assert np.isnan(np.asarray(scores.output_error)).all()
  full, _ = score_keysets(q, k, v, ks, row_blocks=3, key_chunk=128)
  np.testing.assert_allclose(scores.recall, full.recall, rtol=1e-6)


def test_scores_without_v_are_the_recall_and_cover(layer):
  seed, q, k, v, _, ks = layer
  full, _ = score_keysets(q, k, v, ks, output=False, row_blocks=3,
                          key_chunk=128)
  bare, out = score_keysets(q, k, None, ks, output=False, row_blocks=3,
                            key_chunk=128)
  assert out is None
  np.testing.assert_allclose(bare.recall, full.recall, rtol=1e-6,
                             err_msg=str(seed))
  np.testing.assert_array_equal(bare.covered, full.covered, str(seed))
  with pytest.raises(ValueError, match="needs v"):
    score_keysets(q, k, None, ks)


def test_tile_share_counts_the_key_set_per_tile(layer):
  seed, _, _, _, _, ks = layer
  masks = keyset_masks(ks, T)  # [B, C, N, T, T]
  tb = -(-T // 64)
  pad = ((0, 0),) * 3 + ((0, tb * 64 - T),) * 2
  tiles = lambda x: np.pad(x, pad).reshape(*x.shape[:3], tb, 64, tb,
                                           64).sum((4, 6))
  causal = np.broadcast_to(np.tril(np.ones((T, T), bool)), masks.shape)
  want = tiles(masks) / np.maximum(tiles(causal), 1)
  np.testing.assert_allclose(tile_share(ks, T), want, atol=1e-6,
                             err_msg=str(seed))


def test_measured_patterns_match_the_layout_metrics(layer):
  """One compiled program for any mix gives the density and recall that
  the index builders' layouts and `minference_jax.metrics` give (the
  eval diagnostics' per-kind path); Dense heads count 1 and 1."""
  from experiments.eval.diagnostics import layer_stats

  seed, q, k, _, _, _ = layer
  mix = (VerticalSlash(30, 70), AShape(16, 100), BlockSparse(2), Dense())
  keysets, scores = measure_patterns(q, k, mix, row_blocks=2, key_chunk=128)
  density, recall = layer_stats(q, k, mix)
  area = T * (T + 1) / 2
  np.testing.assert_allclose(np.asarray(scores.covered)[:, 0].mean(0) / area,
                             density, rtol=1e-6, err_msg=str(seed))
  np.testing.assert_allclose(np.asarray(scores.recall)[:, 0].mean(0), recall,
                             atol=2e-5, err_msg=str(seed))
  assert np.asarray(keysets.tiles).shape == (q.shape[0], 1, N)
  with pytest.raises(ValueError, match="3 patterns for 4 query heads"):
    measure_patterns(q, k, mix[:3])
  with pytest.raises(ValueError, match="last_q=32"):
    measure_patterns(q, k, (VerticalSlash(30, 50, last_q=32),) * N)
