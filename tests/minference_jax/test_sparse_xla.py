"""XLA sparse paths and chunked dense attention vs the masked reference."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from minference_jax import sparse_xla
from minference_jax.sparse_xla import (
    a_shape_attention_xla,
    block_sparse_attention_xla,
    compact_layout,
    dense_attention_xla,
    dense_logsumexp_xla,
    selected_logsumexp_xla,
    vertical_slash_attention_xla,
)
from pallas_kernels.layouts import (
    AShapeLayout,
    BlockSparseLayout,
    VerticalSlashLayout,
)
from pallas_kernels import reference as ref_lib
from random_layouts import (
    assert_close,
    fresh_rng,
    random_a_shape_layout,
    random_bs_layout,
    random_qkv,
    random_vs_layout,
    reference,
)

BS = 64
# Jitted references: one compile per shape instead of op-by-op dispatch.
vertical_slash_mask = jax.jit(
    ref_lib.vertical_slash_mask, static_argnums=(1, 2)
)
block_sparse_mask = jax.jit(ref_lib.block_sparse_mask, static_argnums=(1, 2))
a_shape_mask = jax.jit(ref_lib.a_shape_mask, static_argnums=(1, 2))
causal_mask = ref_lib.causal_mask
masked_attention_reference = jax.jit(ref_lib.masked_attention_reference)


# (B, T, N, K, dtype): T < 64, T a multiple of 64, T not; GQA groups 1, 2, 4.
CASES = [
    (1, 37, 2, 2, jnp.float32),
    (2, 130, 4, 2, jnp.float32),
    (1, 192, 4, 1, jnp.float32),
    (1, 150, 4, 2, jnp.bfloat16),
]


@pytest.mark.parametrize("b, t, n, kv, dtype", CASES)
def test_vertical_slash_matches_masked_reference(b, t, n, kv, dtype):
  rng, seed = fresh_rng()
  q, k, v = random_qkv(rng, b, t, n, kv, 16, dtype)
  layout = random_vs_layout(rng, b, n, t, ns=4, nv=9, inactive=(n - 1,))
  out = vertical_slash_attention_xla(q, k, v, layout)
  ref = reference(q, k, v, vertical_slash_mask(layout, t, t))
  assert_close(out, ref, dtype, seed, "vertical-slash")
  assert not np.asarray(out[:, :, n - 1].astype(jnp.float32)).any()


@pytest.mark.parametrize("b, t, n, kv, dtype", CASES)
def test_block_sparse_matches_masked_reference(b, t, n, kv, dtype):
  rng, seed = fresh_rng()
  q, k, v = random_qkv(rng, b, t, n, kv, 16, dtype)
  layout = random_bs_layout(rng, b, n, t, kb=2, inactive=(0,))
  out = block_sparse_attention_xla(q, k, v, layout)
  ref = reference(q, k, v, block_sparse_mask(layout, t, t))
  assert_close(out, ref, dtype, seed, "block-sparse")
  assert not np.asarray(out[:, :, 0].astype(jnp.float32)).any()


@pytest.mark.parametrize("b, t, n, kv, dtype", CASES)
def test_a_shape_matches_masked_reference(b, t, n, kv, dtype):
  rng, seed = fresh_rng()
  q, k, v = random_qkv(rng, b, t, n, kv, 16, dtype)
  layout = random_a_shape_layout(rng, n, t, inactive=(1,))
  out = a_shape_attention_xla(q, k, v, layout)
  ref = reference(q, k, v, a_shape_mask(layout, t, t))
  assert_close(out, ref, dtype, seed, f"a-shape {layout}")
  assert not np.asarray(out[:, :, 1].astype(jnp.float32)).any()


def test_a_shape_small_windows_and_sinks_inside_the_window():
  # Sinks that also lie in the local window must be counted once.
  rng, seed = fresh_rng()
  t = 140
  q, k, v = random_qkv(rng, 1, t, 4, 2, 8)
  layout = AShapeLayout(jnp.array([3, 10, 70, 1]), jnp.array([1, 5, 64, 65]))
  out = a_shape_attention_xla(q, k, v, layout)
  ref = reference(q, k, v, a_shape_mask(layout, t, t))
  assert_close(out, ref, jnp.float32, seed, "a-shape small")


@pytest.mark.parametrize(
    "t, s, q_offset, kv",
    [(150, 150, 0, 2), (1, 97, 96, 1), (40, 200, 160, 2), (30, 100, 20, 4)],
)
def test_dense_matches_causal_reference(t, s, q_offset, kv):
  rng, seed = fresh_rng()
  q, k, v = random_qkv(rng, 2, t, 4, kv, 16, s=s)
  out = dense_attention_xla(q, k, v, q_offset=q_offset, block_q=32, block_k=48)
  ref = reference(q, k, v, causal_mask(t, s, q_offset)[None, None])
  assert_close(out, ref, jnp.float32, seed, f"dense offset {q_offset}")


def test_dense_bf16_and_default_blocks():
  rng, seed = fresh_rng()
  t = 300
  q, k, v = random_qkv(rng, 1, t, 2, 1, 32, jnp.bfloat16)
  out = dense_attention_xla(q, k, v)
  ref = reference(q, k, v, causal_mask(t, t)[None, None])
  assert_close(out, ref, jnp.bfloat16, seed, "dense bf16")


def _brute_lse(q, k, mask):
  b, t, n, d = q.shape
  g = n // k.shape[2]
  qf = np.asarray(q, np.float64)
  kf = np.repeat(np.asarray(k, np.float64), g, axis=2)
  logits = np.einsum("btnd,bsnd->bnts", qf, kf) / np.sqrt(d)
  logits = np.where(np.asarray(mask), logits, -np.inf)
  with np.errstate(divide="ignore"):
    mx = np.max(logits, -1, keepdims=True)
    lse = mx[..., 0] + np.log(np.sum(np.exp(logits - np.where(
        np.isfinite(mx), mx, 0)), -1))
  return np.swapaxes(lse, 1, 2)  # [B, T, N]


def test_logsumexp_over_selected_and_dense_keys():
  rng, _ = fresh_rng()
  t = 130
  q, k, _ = random_qkv(rng, 1, t, 4, 2, 16)
  layout = random_vs_layout(rng, 1, 4, t, ns=3, nv=5, inactive=(2,))
  got = np.asarray(selected_logsumexp_xla(q, k, layout))
  want = _brute_lse(q, k, vertical_slash_mask(layout, t, t))
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
  assert np.all(np.isneginf(got[:, :, 2]))  # inactive head: no keys
  dense = np.asarray(dense_logsumexp_xla(q, k, block_q=48, block_k=40))
  want = _brute_lse(q, k, causal_mask(t, t)[None, None])
  np.testing.assert_allclose(dense, want, rtol=1e-5, atol=1e-5)


def test_chunking_and_jit_give_the_same_result(monkeypatch):
  # Force one row block per chunk (a shape used nowhere else, so it compiles
  # afresh with the patched budget) and trace the layout under an outer jit.
  rng, seed = fresh_rng()
  t = 200
  q, k, v = random_qkv(rng, 1, t, 2, 1, 24)
  layout = random_vs_layout(rng, 1, 2, t, ns=3, nv=7)
  monkeypatch.setattr(sparse_xla, "_CHUNK_ELEMENTS", 1)
  assert sparse_xla._rows_per_chunk(4, 2, 1000, 24, BS) == 1
  out = jax.jit(vertical_slash_attention_xla)(q, k, v, layout)
  ref = reference(q, k, v, vertical_slash_mask(layout, t, t))
  assert_close(out, ref, jnp.float32, seed, "one row block per chunk")


def test_compact_layout_is_equivalent():
  rng, seed = fresh_rng()
  t = 150
  q, k, v = random_qkv(rng, 1, t, 2, 2, 8)
  layout = random_vs_layout(rng, 1, 2, t, ns=6, nv=20)
  small = compact_layout(layout)
  assert small.block_offset.shape[-1] == max(1, int(layout.block_count.max()))
  assert small.column_index.shape[-1] == max(1, int(layout.column_count.max()))
  np.testing.assert_array_equal(
      np.asarray(vertical_slash_mask(small, t, t)),
      np.asarray(vertical_slash_mask(layout, t, t)),
  )
  ref = reference(q, k, v, vertical_slash_mask(layout, t, t))
  assert_close(vertical_slash_attention_xla(q, k, v, small), ref,
               jnp.float32, seed, "compact")
  bs = random_bs_layout(rng, 1, 2, t, kb=3)
  small_bs = compact_layout(bs)
  assert small_bs.block_index.shape[-1] == max(1, int(bs.block_count.max()))
  np.testing.assert_array_equal(
      np.asarray(block_sparse_mask(small_bs, t, t)),
      np.asarray(block_sparse_mask(bs, t, t)),
  )


def test_bad_inputs_raise_clear_errors():
  rng, _ = fresh_rng()
  q, k, v = random_qkv(rng, 1, 70, 4, 2, 8)
  layout = random_vs_layout(rng, 1, 4, 70, ns=2, nv=2)
  with pytest.raises(TypeError, match="T=64"):  # jaxtyping: T != S
    vertical_slash_attention_xla(q[:, :64], k, v, layout)
  with pytest.raises(ValueError, match="Tb"):
    bad = random_vs_layout(rng, 1, 4, 130, 2, 2)  # Tb for T = 130
    vertical_slash_attention_xla(q, k, v, bad)
  q3 = jnp.zeros((1, 70, 3, 8))
  with pytest.raises(ValueError, match="divisible"):
    dense_attention_xla(q3, k, v)
  with pytest.raises(ValueError, match="q_offset"):
    dense_attention_xla(q, k, v, q_offset=-1)
  a_layout = AShapeLayout(jnp.array([1, 2, 3, 4]), jnp.array([5, 6, 7, 8]))
  with pytest.raises(ValueError, match="max_init"):
    jax.jit(a_shape_attention_xla)(q, k, v, a_layout)
  # With static bounds it traces fine.
  fn = jax.jit(lambda q, k, v, lay: a_shape_attention_xla(
      q, k, v, lay, max_init=4, max_local=8))
  ref = reference(q, k, v, a_shape_mask(a_layout, 70, 70))
  np.testing.assert_allclose(np.asarray(fn(q, k, v, a_layout)), ref,
                             atol=1e-5)
