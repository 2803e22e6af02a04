"""The Block-Sparse estimate against a sequential NumPy reference."""

import jax.numpy as jnp
import numpy as np
import kernel_test_utils as ktu
import numpy_reference as ref
from hypothesis import given, settings
from hypothesis import strategies as st
from index_test_utils import HEADS, assert_same_top, structured_qk

from minference_jax import index_bs
from minference_jax.index import block_sparse_indices

SETTINGS = settings(max_examples=5, deadline=None)


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
  rng, seed = ktu.fresh_rng()
  with ktu.reports_seed(seed):
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
