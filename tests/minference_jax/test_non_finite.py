"""Non-finite inputs and the online estimates: the index builders leave the
heads (Vertical-Slash) or row blocks (Block-Sparse) whose estimate read a
NaN or inf without keys, never with lines ranked by NaN scores, and the
attention seam makes their rows NaN on every backend; everything the NaN
does not reach is unchanged."""

import jax.numpy as jnp
import kernel_test_utils as ktu
import numpy as np
import pytest

from minference_jax import (
    BlockSparse,
    Dense,
    PatternConfig,
    VerticalSlash,
    make_attention,
)
from minference_jax.index import (
    block_sparse_indices,
    vertical_slash_indices,
    vertical_slash_layout,
)

B, T, N, KV, D = 1, 200, 4, 2, 16  # 4 row blocks, the last one partial
G = N // KV


def _qkv():
  rng, seed = ktu.fresh_rng()
  return rng, seed, ktu.random_qkv(rng, B, T, N, KV, D)


def _vs(q, k):
  return vertical_slash_indices(q, k, 30, 60)


def test_vs_head_with_a_nan_in_its_estimate_rows_gets_no_lines():
  rng, seed, (q, k, _) = _qkv()
  clean = _vs(q, k)
  head, row = int(rng.integers(0, N)), int(rng.integers(T - 64, T))
  got = _vs(q.at[0, row, head, 3].set(jnp.nan), k)
  counts = np.asarray(got.vertical_count), np.asarray(got.slash_count)
  assert counts[0][0, head] == 0 and counts[1][0, head] == 0, seed
  others = np.arange(N) != head
  for field in ("vertical", "vertical_count", "slash", "slash_count"):
    np.testing.assert_array_equal(
        np.asarray(getattr(got, field))[:, others],
        np.asarray(getattr(clean, field))[:, others], err_msg=f"seed={seed}")
  layout = vertical_slash_layout(got, T)
  assert not np.asarray(layout.block_count)[0, head].any(), seed
  assert not np.asarray(layout.column_count)[0, head].any(), seed
  # A NaN query row outside the last 64 is not read by the estimate.
  early = _vs(q.at[0, int(rng.integers(0, T - 64)), head, 0].set(jnp.nan), k)
  np.testing.assert_array_equal(np.asarray(early.slash),
                                np.asarray(clean.slash), err_msg=str(seed))


def test_vs_inf_key_marks_every_head_of_its_group():
  rng, seed, (q, k, _) = _qkv()
  group = int(rng.integers(0, KV))
  got = _vs(q, k.at[0, int(rng.integers(0, T)), group, 1].set(jnp.inf))
  marked = np.asarray(got.slash_count)[0] == 0
  np.testing.assert_array_equal(marked, np.arange(N) // G == group,
                                err_msg=f"seed={seed}")


def test_bs_row_blocks_reached_by_a_nan_get_no_blocks():
  rng, seed, (q, k, _) = _qkv()
  clean = np.asarray(block_sparse_indices(q, k, 2).block_count)
  head, q_row = int(rng.integers(0, N)), int(rng.integers(0, T))
  key_row, group = int(rng.integers(0, T)), int(rng.integers(0, KV))
  got = block_sparse_indices(q.at[0, q_row, head, 0].set(jnp.nan),
                             k.at[0, key_row, group, 0].set(-jnp.inf), 2)
  want = clean.copy()
  want[0, head, q_row // 64] = 0  # its own query block
  want[0, np.arange(N) // G == group, key_row // 64:] = 0  # blocks >= key's
  np.testing.assert_array_equal(np.asarray(got.block_count), want,
                                err_msg=f"seed={seed}")


@pytest.mark.parametrize("backend", ["xla", "dense"])
def test_seam_rows_follow_the_rule_and_the_estimates(backend):
  """A layer with a Vertical-Slash, a Block-Sparse and a dense head pair:
  the NaN rows are the dense rule's plus those whose estimate read it."""
  rng, seed, (q, k, v) = _qkv()
  layer = (VerticalSlash(30, 60), BlockSparse(2), Dense(), Dense())
  attn = make_attention(
      PatternConfig(layers=(layer,)) if backend != "dense" else None,
      backend)
  vs_row = int(rng.integers(T - 64, T - 40))  # head 0's estimate rows
  bs_row = int(rng.integers(0, 64))  # head 1's first query block
  q = q.at[0, vs_row, 0, 0].set(jnp.nan).at[0, bs_row, 1, 0].set(jnp.nan)
  out = np.asarray(attn(q, k, v, layer_idx=0))
  nan = np.isnan(out).all(-1)[0]  # [T, N]
  want = np.zeros((T, N), bool)
  want[vs_row, 0] = want[bs_row, 1] = True  # the dense rule
  if backend == "xla":
    want[:, 0] = True  # head 0's lines came from its NaN row
    want[:64, 1] = True  # head 1's first row block's blocks likewise
  np.testing.assert_array_equal(nan, want, err_msg=f"seed={seed}")
  assert np.isfinite(out[0][~want]).all(), seed


def test_seam_pallas_interpret_marks_the_same_rows():
  """backend "pallas" (fused Pallas estimate scores and the Pallas-Triton
  kernel, interpret mode; a small case)."""
  rng, seed = ktu.fresh_rng()
  t, n = 128, 2
  q, k, v = ktu.random_qkv(rng, 1, t, n, 1, D)
  attn = make_attention(VerticalSlash(30, 60), "pallas", interpret=True)
  row, head = int(rng.integers(t - 64, t)), int(rng.integers(0, n))
  out = np.asarray(attn(q.at[0, row, head, 0].set(jnp.inf), k, v,
                        layer_idx=0))
  nan = np.isnan(out).all(-1)[0]
  want = np.zeros((t, n), bool)
  want[:, head] = True
  np.testing.assert_array_equal(nan, want, err_msg=f"seed={seed}")
