"""Online index builders against sequential NumPy references and properties."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import numpy_reference as ref
from minference_jax import index_bs
from minference_jax.index import (
    VerticalSlashIndices,
    a_shape_layout,
    block_sparse_indices,
    vertical_slash_chain_layout,
    vertical_slash_indices,
    vertical_slash_layout,
)
from pallas_kernels.reference import (
    vertical_slash_chain_mask,
    vertical_slash_mask,
)

# (N, K): GQA group sizes 1, 2, 4 and 8.
HEADS = [(2, 2), (4, 2), (4, 1), (8, 1)]
SETTINGS = settings(max_examples=5, deadline=None)


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


# ------------------------------------------------------- vertical-slash
@SETTINGS
@given(
    b=st.sampled_from([1, 2]),
    heads=st.sampled_from(HEADS),
    t=st.sampled_from([17, 64, 100, 200]),
    last_q=st.sampled_from([64, 16, 100]),
    per_head=st.booleans(),
    seed=st.integers(0, 2**31 - 1),
)
def test_vs_indices_match_reference(b, heads, t, last_q, per_head, seed):
  n, kv = heads
  rng = np.random.default_rng(seed)
  q, k = structured_qk(rng, b, t, n, kv)
  if per_head:  # different budgets per head, some above T, some inactive
    n_vertical = tuple(int(x) for x in rng.integers(0, 250, n))
    n_slash = tuple(int(x) for x in rng.integers(0, 250, n))
    active = tuple(bool(x) for x in rng.random(n) < 0.75)
  else:
    n_vertical, n_slash = int(rng.integers(0, 250)), int(rng.integers(0, 250))
    active = None
  got = vertical_slash_indices(
      jnp.asarray(q), jnp.asarray(k), n_vertical, n_slash, last_q,
      active=active,
  )
  want = ref.vs_indices_reference(q, k, n_vertical, n_slash, last_q, active)
  vertical, slash = np.asarray(got.vertical), np.asarray(got.slash)
  v_count, s_count = np.asarray(got.vertical_count), np.asarray(got.slash_count)
  assert vertical.dtype == slash.dtype == np.int32
  assert vertical.shape[-1] == max(
      [len(w["vertical"]) for w in want.values()] + [1]
  )
  assert slash.shape[-1] == max([len(w["slash"]) for w in want.values()] + [1])
  for (bi, h), w in want.items():
    nv, ns = v_count[bi, h], s_count[bi, h]
    assert nv == len(w["vertical"]) and ns == len(w["slash"])
    v, s = vertical[bi, h], slash[bi, h]
    assert np.all(np.diff(v[:nv]) > 0) and np.all(np.diff(s[:ns]) < 0)
    assert np.all(v[nv:] == t - 1) and np.all(s[ns:] == 0)
    if nv:
      assert_same_top(v[:nv], w["vertical"], w["vertical_score"], "vertical")
      assert_same_top(s[:ns], w["slash"], w["slash_score"], "slash")
      assert s[ns - 1] == 0  # offset 0 is always kept


def test_vs_forced_lines_kept_against_the_scores():
  # Attention sits on a band of far keys, so the sink columns 0..29 and the
  # local offsets 0..99 score low: only the forcing can keep them.
  t, d = 400, 16
  rng = np.random.default_rng()
  q, k = structured_qk(rng, 1, t, 2, 1, d)
  u = np.zeros(d, np.float32)
  u[0] = 1.0
  q[:, :, :, :] += 8.0 * u
  k[:, 150:170, :, :] += 8.0 * u
  got = vertical_slash_indices(
      jnp.asarray(q), jnp.asarray(k), (40, 30), (130, 60)
  )
  want = ref.vs_indices_reference(q, k, (40, 30), (130, 60))
  for h, (nv, ns) in enumerate([(40, 130), (30, 60)]):
    v = np.asarray(got.vertical[0, h, :nv])
    s = np.asarray(got.slash[0, h, :ns])
    assert set(range(30)) <= set(v.tolist())
    assert set(range(min(ns, 100))) <= set(s.tolist())
    w = want[0, h]
    assert_same_top(v, w["vertical"], w["vertical_score"], "vertical")
    assert_same_top(s, w["slash"], w["slash_score"], "slash")
  # Without forcing, part of 0..29 and 0..99 would lose to the far band.
  vs, ss = ref.vs_scores(q[0, :, 0], k[0, :, 0], 64, force=False)
  assert not set(range(30)) <= set(np.argsort(-vs)[:40].tolist())
  assert not set(range(100)) <= set(np.argsort(-ss)[:130].tolist())


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


@SETTINGS
@given(
    b=st.sampled_from([1, 2]),
    n=st.sampled_from([1, 3]),
    t=st.sampled_from([10, 64, 150, 300]),
    bs=st.sampled_from([64, 16]),
    force_zero=st.booleans(),
    seed=st.integers(0, 2**31 - 1),
)
def test_vs_layout_matches_sequential_merge(b, n, t, bs, force_zero, seed):
  rng = np.random.default_rng(seed)
  indices = random_indices(rng, b, n, t, force_zero)
  layout = vertical_slash_layout(indices, t, bs)
  assert layout.block_size == bs
  count, offset, c_count, c_index = layout_arrays(layout)
  assert count.dtype == offset.dtype == c_index.dtype == np.int32
  want = ref.vs_layout_reference(
      *(np.asarray(x) for x in (
          indices.vertical, indices.vertical_count,
          indices.slash, indices.slash_count,
      )),
      t, bs,
  )
  assert count.shape == (b, n, -(-t // bs))
  for (bi, h, m), (blocks, cols) in want.items():
    assert count[bi, h, m] == len(blocks), (bi, h, m)
    assert offset[bi, h, m, : len(blocks)].tolist() == blocks, (bi, h, m)
    assert c_count[bi, h, m] == len(cols), (bi, h, m)
    assert c_index[bi, h, m, : len(cols)].tolist() == cols, (bi, h, m)


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


# Random index sets for the layout builders (both layout forms).
LAYOUT_CASES = given(
    b=st.sampled_from([1, 2]),
    n=st.sampled_from([1, 3]),
    t=st.sampled_from([10, 64, 150, 300]),
    bs=st.sampled_from([64, 16]),
    seed=st.integers(0, 2**31 - 1),
)


@SETTINGS
@LAYOUT_CASES
def test_vs_layout_covers_exact_mask(b, n, t, bs, seed):
  rng = np.random.default_rng(seed)
  indices = random_indices(rng, b, n, t, force_zero=True)
  layout = vertical_slash_layout(indices, t, bs)
  check_layout_properties(layout, indices, t)


@SETTINGS
@LAYOUT_CASES
def test_vs_chain_layout_has_the_expanded_key_set(b, n, t, bs, seed):
  """The O(T) chain layout reads back to exactly the expanded key set."""
  rng = np.random.default_rng(seed)
  indices = random_indices(rng, b, n, t, force_zero=True)
  chain = vertical_slash_chain_layout(indices, t, bs)
  size = t + bs + 1
  assert chain.window_next.shape == (b, n, size)
  assert chain.vertical_prefix.shape == (b, n, size)
  nxt = np.asarray(chain.window_next)
  assert (nxt[..., 0] == 0).all() and (nxt[..., 1:] < np.arange(1, size)).all()
  prefix = np.asarray(chain.vertical_prefix)
  assert (np.diff(prefix, axis=-1) >= 0).all() and (prefix[..., 0] == 0).all()
  np.testing.assert_array_equal(prefix[..., -1], indices.vertical_count)
  # Runs: window j continues its run iff its successor is the adjacent
  # window j - bs; run_next is the successor of the run's last window.
  j = np.arange(1, size)
  length = np.asarray(chain.run_length)[..., 1:]
  adjacent = (nxt[..., 1:] == j - bs) & (j - bs > 0)
  below = np.asarray(chain.run_length)[..., np.maximum(j - bs, 0)]
  np.testing.assert_array_equal(length, 1 + np.where(adjacent, below, 0))
  last = j - (length - 1) * bs
  np.testing.assert_array_equal(
      np.asarray(chain.run_next)[..., 1:],
      np.take_along_axis(nxt, last, axis=-1), err_msg=f"seed={seed}")
  want = vertical_slash_mask(vertical_slash_layout(indices, t, bs), t, t)
  got = vertical_slash_chain_mask(chain, t, t)
  np.testing.assert_array_equal(np.asarray(got), np.asarray(want),
                                err_msg=f"seed={seed}")


@pytest.mark.parametrize("t, heads", [(200, (8, 2)), (45, (4, 4))])
def test_vs_end_to_end_cover_under_jit(t, heads):
  n, kv = heads
  rng = np.random.default_rng()
  q, k = structured_qk(rng, 2, t, n, kv)
  budgets = tuple(int(x) for x in rng.integers(0, 120, n))
  active = (False,) + (True,) * (n - 1)

  @jax.jit
  def build(q, k):
    indices = vertical_slash_indices(q, k, budgets, 60, 64, active=active)
    return indices, vertical_slash_layout(indices, t)

  indices, layout = build(jnp.asarray(q), jnp.asarray(k))
  eager = vertical_slash_layout(
      vertical_slash_indices(
          jnp.asarray(q), jnp.asarray(k), budgets, 60, 64, active=active
      ),
      t,
  )
  for x, y in zip(layout_arrays(layout), layout_arrays(eager)):
    np.testing.assert_array_equal(x, y)
  count, _, c_count, _ = layout_arrays(layout)
  assert np.all(count[:, 0] == 0) and np.all(c_count[:, 0] == 0)  # inactive
  assert np.all(count[:, 1:] >= 1)
  check_layout_properties(layout, indices, t)


def test_radix_select_forms_agree_with_a_sort():
  """Both counting forms of the radix k-th largest (the CUDA and the default
  one) equal the k-th largest from a sort, with heavy ties and extremes."""
  from minference_jax import index_vs

  rng = np.random.default_rng()
  keys = rng.integers(0, 2**32, (3, 5, 257), dtype=np.uint64)
  keys[0] = rng.integers(0, 4, (5, 257))  # mostly ties
  keys[1, :, :9] = 2**32 - 1  # forced (+inf-like) entries
  keys = jnp.asarray(keys.astype(np.uint32))
  counts = jnp.asarray(rng.integers(1, 258, (3, 5)), jnp.int32)
  want = -np.sort(-np.asarray(keys).astype(np.int64), axis=-1)
  want = np.take_along_axis(want, np.asarray(counts)[..., None] - 1, -1)[..., 0]
  for count_ge in (index_vs._count_ge_broadcast, index_vs._count_ge_siblings):
    got = index_vs._kth_largest_with(keys, counts, count_ge)
    np.testing.assert_array_equal(np.asarray(got).astype(np.int64), want,
                                  err_msg=count_ge.__name__)


def test_radix_select_chunked_counts_agree_with_a_sort():
  """The sibling counts split long rows into chunks (padded with 0 keys):
  the same k-th largest as a sort, also when a row is not a multiple of the
  chunk."""
  from minference_jax import index_vs

  rng = np.random.default_rng()
  s = 2 * index_vs._COUNT_CHUNK + 333
  keys = rng.integers(0, 2**32, (2, s), dtype=np.uint64).astype(np.uint32)
  keys[1] = rng.integers(0, 3, s)  # ties and zero keys
  counts = rng.integers(1, s + 1, 2).astype(np.int32)
  got = index_vs._kth_largest_with(jnp.asarray(keys), jnp.asarray(counts),
                                   index_vs._count_ge_siblings)
  want = -np.sort(-keys.astype(np.int64), axis=-1)
  want = np.take_along_axis(want, counts[:, None] - 1, -1)[:, 0]
  np.testing.assert_array_equal(np.asarray(got).astype(np.int64), want)


def _top_k_reference(scores, counts, k_max, descending):
  """lax.top_k's set (ties to the lower position) per row, sorted, padded
  as `top_sorted_positions` pads (0 descending, S - 1 ascending)."""
  s = scores.shape[-1]
  _, idx = jax.lax.top_k(jnp.asarray(scores), k_max)  # [..., k_max]
  idx, counts = np.asarray(idx), np.broadcast_to(counts, scores.shape[:-1])
  out = np.full(idx.shape, 0 if descending else s - 1)
  for r in np.ndindex(counts.shape):
    kept = np.sort(idx[r][: counts[r]])
    out[r][: counts[r]] = kept[::-1] if descending else kept
  return out


@pytest.mark.parametrize("s, k_max", [
    (20000, 100),  # blocks of 16 keys (S >= 64 k_max)
    (4096, 40),  # blocks of 8, block maxima selected directly
    (700, 90),  # direct selection, one packed cumulative sum
    (70000, 33000),  # direct, counts too wide to pack: two sums
])
@pytest.mark.parametrize("kind", ["continuous", "ties", "sparse"])
def test_top_sorted_positions_is_lax_top_k(s, k_max, kind):
  """Exactly lax.top_k's set with ties to the lower position, on both
  paths (through block maxima and direct), per-row counts including 0 and
  k_max, heavy ties and forced +inf entries."""
  from minference_jax import index_vs

  rng = np.random.default_rng()
  x = rng.standard_normal((2, 3, s)).astype(np.float32)
  if kind == "ties":
    x = np.round(x * 2) / 2  # few distinct values
  elif kind == "sparse":
    x = np.where(rng.random(x.shape) < 0.01, x, 0.0).astype(np.float32)
  x[..., rng.integers(0, s, 7)] = np.inf
  counts = rng.integers(0, k_max + 1, 3).astype(np.int32)
  counts[:2] = (0, k_max)
  for descending in (False, True):
    got = index_vs.top_sorted_positions(jnp.asarray(x), jnp.asarray(counts),
                                        k_max, descending)
    want = _top_k_reference(x, counts, k_max, descending)
    np.testing.assert_array_equal(
        np.asarray(got), want,
        err_msg=f"{kind} desc={descending} counts={counts}")


# ---------------------------------------------------------- block-sparse
@SETTINGS
@given(
    b=st.sampled_from([1, 2]),
    heads=st.sampled_from(HEADS),
    t=st.sampled_from([30, 64, 130, 257]),
    block=st.sampled_from([64, 16]),
    per_head=st.booleans(),
    radix=st.booleans(),
    seed=st.integers(0, 2**31 - 1),
)
def test_block_sparse_matches_reference(b, heads, t, block, per_head, radix,
                                        seed):
  """Both selections (lax.top_k for short inputs, radix for long ones)."""
  n, kv = heads
  rng = np.random.default_rng(seed)
  q, k = structured_qk(rng, b, t, n, kv)
  nb = -(-t // block)
  if per_head:  # includes budgets above Sb and inactive heads
    top_k = tuple(int(x) for x in rng.integers(1, nb + 3, n))
    active = tuple(bool(x) for x in rng.random(n) < 0.75)
  else:
    top_k, active = int(rng.integers(1, nb + 3)), None
  saved = index_bs.RADIX_MIN_BLOCKS
  index_bs.RADIX_MIN_BLOCKS = 1 if radix else 1 << 40
  try:
    layout = block_sparse_indices(
        jnp.asarray(q), jnp.asarray(k), top_k, block, active=active
    )
  finally:
    index_bs.RADIX_MIN_BLOCKS = saved
  count, index = np.asarray(layout.block_count), np.asarray(layout.block_index)
  assert layout.block_size == block and index.dtype == np.int32
  assert count.shape == (b, n, nb)
  want = ref.bs_reference(q, k, top_k, block, active)
  assert index.shape[-1] == max(
      [len(rows[-1]) for rows, _ in want.values()] + [1]
  )
  for (bi, h), (rows, scores) in want.items():
    for m, want_m in enumerate(rows):
      c = count[bi, h, m]
      assert c == len(want_m), (bi, h, m)
      got_m = index[bi, h, m]
      assert np.all(np.diff(got_m[:c]) > 0) and np.all(got_m[:c] <= m)
      assert np.all(got_m[c:] == m)  # padding: the row's own block
      if c:
        assert_same_top(got_m[:c], want_m, scores[m], (bi, h, m))


def test_block_sparse_partial_block_mean_counts_padding():
  # Key block 1 (64 tokens of u) pools to u; the 4-token last block of 8u
  # pools to 0.5u because its mean divides by 64 (zero padding), so with
  # top_k=1 the last row picks block 1, not its own block.
  t, d = 4 * 64 + 4, 8
  rng = np.random.default_rng()
  q = 0.01 * rng.standard_normal((1, t, 1, d)).astype(np.float32)
  k = 0.01 * rng.standard_normal((1, t, 1, d)).astype(np.float32)
  q[..., 0] += 1.0
  k[0, 64:128, 0, 0] += 1.0
  k[0, 256:, 0, 0] += 8.0
  layout = block_sparse_indices(jnp.asarray(q), jnp.asarray(k), 1)
  assert int(layout.block_count[0, 0, 4]) == 1
  assert int(layout.block_index[0, 0, 4, 0]) == 1
  rows, _ = ref.bs_reference(q, k, 1)[0, 0]
  assert rows[4].tolist() == [1]


# --------------------------------------------------------------- A-shape
def test_a_shape_layout():
  layout = a_shape_layout((128, 0, 7), (3968, 0, 1))
  assert layout.n_init.dtype == layout.n_local.dtype == jnp.int32
  assert layout.n_init.tolist() == [128, 0, 7]
  assert layout.n_local.tolist() == [3968, 0, 1]


@pytest.mark.parametrize(
    "args, error",
    [
        (((1, 2), (3,)), ValueError),
        (((1, -2), (3, 4)), ValueError),
        (((1, 2.5), (3, 4)), TypeError),
        (((True,), (3,)), TypeError),
        (((), ()), ValueError),
    ],
)
def test_a_shape_layout_errors(args, error):
  with pytest.raises(error):
    a_shape_layout(*args)


# ------------------------------------------------------------ bad input
def _qk(b=1, t=32, n=4, kv=2, d=8, s=None, dk=None, bk=None):
  q = jnp.zeros((b, t, n, d))
  k = jnp.zeros((bk or b, s or t, kv, dk or d))
  return q, k


BAD_VS = [
    (lambda: vertical_slash_indices(jnp.zeros((32, 4, 8)), _qk()[1], 1, 1),
     "q"),
    (lambda: vertical_slash_indices(_qk()[0], jnp.zeros((32, 2, 8)), 1, 1),
     "k"),
    (lambda: vertical_slash_indices(*_qk(kv=3, n=4), 1, 1), "multiple"),
    (lambda: vertical_slash_indices(*_qk(dk=16), 1, 1), "dim"),
    (lambda: vertical_slash_indices(*_qk(bk=2), 1, 1), "batch"),
    (lambda: vertical_slash_indices(*_qk(s=64), 1, 1), "T == S"),
    (lambda: vertical_slash_indices(*_qk(), -1, 1), "n_vertical"),
    (lambda: vertical_slash_indices(*_qk(), 1, (1, 2, -3, 4)), "n_slash"),
    (lambda: vertical_slash_indices(*_qk(), (1, 2), 1), "per-head"),
    (lambda: vertical_slash_indices(*_qk(), 1, 1, 0), "last_q"),
    (lambda: vertical_slash_indices(*_qk(), 1, 1, active=(True,)), "active"),
    (lambda: block_sparse_indices(*_qk(kv=3, n=4), 2), "multiple"),
    (lambda: block_sparse_indices(*_qk(), -2), "top_k"),
    (lambda: block_sparse_indices(*_qk(), (1, 2)), "per-head"),
    (lambda: block_sparse_indices(*_qk(), 2, 0), "block"),
    (lambda: block_sparse_indices(*_qk(s=16), 2), "T == S"),
    (lambda: vertical_slash_layout(
        VerticalSlashIndices(
            jnp.zeros((1, 2, 3), jnp.int32), jnp.zeros((1, 3), jnp.int32),
            jnp.zeros((1, 2, 3), jnp.int32), jnp.zeros((1, 2), jnp.int32),
        ), 16), "vertical_count"),
    (lambda: vertical_slash_layout(
        VerticalSlashIndices(
            jnp.zeros((1, 2, 3), jnp.int32), jnp.zeros((1, 2), jnp.int32),
            jnp.zeros((1, 2, 3), jnp.int32), jnp.zeros((1, 2), jnp.int32),
        ), 0), "seq_len"),
    (lambda: vertical_slash_layout(
        VerticalSlashIndices(
            jnp.zeros((1, 2, 3), jnp.int32), jnp.zeros((1, 2), jnp.int32),
            jnp.zeros((1, 2, 0), jnp.int32), jnp.zeros((1, 2), jnp.int32),
        ), 16), "NS >= 1"),
]


@pytest.mark.parametrize("make, words", BAD_VS)
def test_bad_input_errors(make, words):
  # Wrong ranks and batch/head-dim mismatches may be caught first by the
  # jaxtyping annotations (a TypeError); the rest raise our ValueError.
  with pytest.raises((ValueError, TypeError)) as info:
    make()
  message = str(info.value)
  assert words in message or (
      info.type is not ValueError and "Type-check error" in message
  ), message


@pytest.mark.parametrize(
    "make",
    [
        lambda: vertical_slash_indices(*_qk(), 1.5, 1),
        lambda: vertical_slash_indices(*_qk(), True, 1),
        lambda: vertical_slash_indices(*_qk(), 1, 1, active=(1, 1, 1, 1)),
        lambda: block_sparse_indices(*_qk(), (1, 2, 3, 4.0)),
        lambda: vertical_slash_indices(
            jnp.zeros((1, 32, 4, 8), jnp.int32), _qk()[1], 1, 1
        ),
    ],
)
def test_bad_types(make):
  with pytest.raises(TypeError):
    make()
