"""The dense masked reference and mask builders against brute force NumPy."""

import numpy as np
import jax
import jax.numpy as jnp
import pytest

from pallas_kernels.layouts import AShapeLayout, BlockSparseLayout, VerticalSlashLayout
from pallas_kernels import reference


def _numpy_attention(q, k, v, mask):
  b, t, n, d = q.shape
  g = n // k.shape[2]
  out = np.zeros((b, t, n, d))
  for bi in range(b):
    for h in range(n):
      logits = q[bi, :, h].astype(np.float64) @ k[bi, :, h // g].T.astype(np.float64) / np.sqrt(d)
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
  rng = np.random.default_rng()
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
  vs = VerticalSlashLayout(block_count, block_offset, column_count, column_index)
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
