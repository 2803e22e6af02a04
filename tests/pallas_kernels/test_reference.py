"""The dense masked reference and mask builders against brute force NumPy."""

import jax.numpy as jnp
import numpy as np
import pytest

import kernel_test_utils as ktu
from pallas_kernels import reference
from pallas_kernels.layouts import (
    AShapeLayout,
    BlockSparseLayout,
    VerticalSlashLayout,
)


def _numpy_attention(q, k, v, mask):
  b, t, n, d = q.shape
  g = n // k.shape[2]
  out = np.zeros((b, t, n, d))
  for bi in range(b):
    for h in range(n):
      logits = (q[bi, :, h].astype(np.float64)
                @ k[bi, :, h // g].T.astype(np.float64) / np.sqrt(d))
      m = mask[min(bi, mask.shape[0] - 1), h]
      logits = np.where(m, logits, -np.inf)
      with np.errstate(invalid="ignore"):
        p = np.exp(logits - logits.max(-1, keepdims=True))
        p = np.where(m, p, 0.0)
        p = p / np.maximum(p.sum(-1, keepdims=True), 1e-300)
      out[bi, :, h] = p @ v[bi, :, h // g]
  return out


@pytest.mark.parametrize("t, n, kv", [(37, 4, 2), (70, 2, 1), (16, 8, 8)])
def test_masked_reference_matches_numpy(t, n, kv):
  rng, seed = ktu.fresh_rng()
  with ktu.reports_seed(seed):
    q = rng.standard_normal((2, t, n, 16)).astype(np.float32)
    k = rng.standard_normal((2, t, kv, 16)).astype(np.float32)
    v = rng.standard_normal((2, t, kv, 16)).astype(np.float32)
    mask = rng.random((2, n, t, t)) < 0.5
    mask &= np.tril(np.ones((t, t), bool))
    got = reference.masked_attention_reference(q, k, v, jnp.asarray(mask))
    want = _numpy_attention(q, k, v, mask)
    np.testing.assert_allclose(np.asarray(got), want, atol=2e-5, rtol=2e-5)
    empty_rows = ~mask.any(-1)  # [B, N, T] -> zero output
    assert np.all(np.asarray(got).transpose(0, 2, 1, 3)[empty_rows] == 0)


def test_a_shape_mask_brute_force():
  t = 50
  layout = AShapeLayout(jnp.array([3, 0, 0]), jnp.array([5, 0, 60]))
  got = np.asarray(reference.a_shape_mask(layout, t, t))[0]
  for h, (ni, nl) in enumerate([(3, 5), (0, 0), (0, 60)]):
    for i in range(t):
      for j in range(t):
        want = j <= i and (j < ni or i - j < nl)
        assert got[h, i, j] == want


def test_vertical_slash_and_block_sparse_masks_brute_force():
  t, bs = 130, 64
  tb = 3
  # One head, hand-made layout: row block 1 has window at 10 and column 3.
  block_count = jnp.zeros((1, 1, tb), jnp.int32).at[0, 0, 1].set(1)
  block_offset = jnp.zeros((1, 1, tb, 2), jnp.int32).at[0, 0, 1, 0].set(10)
  column_count = jnp.zeros((1, 1, tb), jnp.int32).at[0, 0, 1].set(1)
  column_index = jnp.zeros((1, 1, tb, 2), jnp.int32).at[0, 0, 1, 0].set(3)
  vs = VerticalSlashLayout(block_count, block_offset, column_count,
                           column_index)
  got = np.asarray(reference.vertical_slash_mask(vs, t, t))[0, 0]
  want = np.zeros((t, t), bool)
  for i in range(64, 128):
    for j in range(t):
      want[i, j] = j <= i and (10 <= j < 74 or j == 3)
  np.testing.assert_array_equal(got, want)

  bcount = jnp.array([[[1, 1, 2]]], jnp.int32)
  bindex = jnp.array([[[[0, 0], [0, 0], [0, 2]]]], jnp.int32)
  got = np.asarray(
      reference.block_sparse_mask(BlockSparseLayout(bcount, bindex), t, t)
  )[0, 0]
  want = np.zeros((t, t), bool)
  for i in range(t):
    for j in range(t):
      rb, cb = i // bs, j // bs
      chosen = {0: {0}, 1: {0}, 2: {0, 2}}[rb]
      want[i, j] = j <= i and cb in chosen
  np.testing.assert_array_equal(got, want)


def test_vertical_slash_mask_overlapping_windows_and_past_the_end():
  """Windows are a cover: overlapping ones and one past S still give each
  key once; a window before 0 (invalid) covers its part in [0, S)."""
  t = 130
  offsets = jnp.array([[[[100, 120, 125, 0]] * 3]], jnp.int32)  # [1,1,3,4]
  counts = jnp.array([[[0, 0, 3]]], jnp.int32)
  vs = VerticalSlashLayout(counts, offsets, jnp.zeros((1, 1, 3), jnp.int32),
                           jnp.zeros((1, 1, 3, 1), jnp.int32))
  got = np.asarray(reference.vertical_slash_mask(vs, t, t))[0, 0]
  want = np.zeros((t, t), bool)
  for i in range(128, t):
    want[i, 100:t] = True
  want &= np.tril(np.ones((t, t), bool))
  np.testing.assert_array_equal(got, want)
  before = VerticalSlashLayout(jnp.ones((1, 1, 3), jnp.int32),
                               jnp.full((1, 1, 3, 1), -10, jnp.int32),
                               jnp.zeros((1, 1, 3), jnp.int32),
                               jnp.zeros((1, 1, 3, 1), jnp.int32))
  got = np.asarray(reference.vertical_slash_mask(before, t, t))[0, 0]
  np.testing.assert_array_equal(got, np.tril(np.ones((t, t), bool))
                                & (np.arange(t) < 54)[None, :])


def test_row_sampled_masks_are_rows_of_the_full_masks():
  """`rows=` gives the full masks' rows (any order, repeats, partial last
  row block), for every layout kind and the causal mask."""
  import random_layouts as rl

  rng, seed = rl.fresh_rng()
  t, n = 200, 3
  rows = np.array([199, 0, 64, 65, 63, 130, 130, 7])
  layouts = {
      reference.vertical_slash_mask: rl.random_vs_layout(rng, 2, n, t, 3, 7),
      reference.block_sparse_mask: rl.random_bs_layout(rng, 2, n, t, 2),
      reference.a_shape_mask: rl.random_a_shape_layout(rng, n, t),
  }
  for mask_fn, layout in layouts.items():
    full = np.asarray(mask_fn(layout, t, t))
    got = np.asarray(mask_fn(layout, t, t, rows=rows))
    np.testing.assert_array_equal(got, full[:, :, rows],
                                  err_msg=f"{mask_fn.__name__} seed={seed}")
  full = np.asarray(reference.causal_mask(t, t + 5, 5))
  np.testing.assert_array_equal(
      np.asarray(reference.causal_mask(t, t + 5, 5, rows=rows)), full[rows])
