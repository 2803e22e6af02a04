"""Block-Sparse Pallas-Triton kernel (interpret mode): the op battery,
a dense layout with other launch knobs, the index builder's layouts."""

import jax.numpy as jnp
import pytest

import kernel_test_utils as ktu
from attention_op_test_base import AttentionOpTestBase
from pallas_kernels.block_sparse import Config
from pallas_kernels.block_sparse.pallas_triton import (
    block_sparse_attention_triton as block_sparse_attention,
)
from pallas_kernels.layouts import BlockSparseLayout
from pallas_kernels.reference import block_sparse_mask


class TestPallasTriton(AttentionOpTestBase):
  OP = "block_sparse"
  IMPLEMENTATION = "pallas_triton"
  INTERPRET = True


def test_dense_block_layout_equals_causal_and_other_launch_knobs():
  """All blocks selected == dense causal; also 8 warps / 3 stages."""
  rng, seed = ktu.fresh_rng()
  b, t, n, kv, d = 1, 190, 2, 1, 64
  tb = -(-t // 64)
  q, k, v = ktu.random_qkv(rng, b, t, n, kv, d, jnp.float32)
  count = jnp.broadcast_to(jnp.arange(1, tb + 1, dtype=jnp.int32), (b, n, tb))
  index = jnp.broadcast_to(jnp.arange(tb, dtype=jnp.int32), (b, n, tb, tb))
  layout = BlockSparseLayout(count, index)
  out = block_sparse_attention(
      q, k, v, layout, config=Config(num_warps=8, num_stages=3),
      interpret=True,
  )
  causal = jnp.tril(jnp.ones((t, t), bool))[None, None]
  ktu.assert_close(out, ktu.reference(q, k, v, causal), jnp.float32, seed,
                   "dense blocks")


def test_with_index_builder():
  """Layouts from the real index builder (minference_jax.index), if present."""
  index = pytest.importorskip(
      "minference_jax.index", reason="minference_jax.index not written yet"
  )
  rng, seed = ktu.fresh_rng()
  b, t, n, kv, d = 1, 300, 4, 2, 64
  q, k, v = ktu.random_qkv(rng, b, t, n, kv, d, jnp.float32)
  layout = index.block_sparse_indices(q, k, 3)
  out = block_sparse_attention(q, k, v, layout, interpret=True)
  want = ktu.reference(q, k, v, block_sparse_mask(layout, t, t))
  ktu.assert_close(out, want, jnp.float32, seed, "index builder")


def test_bad_inputs_raise():
  rng, _ = ktu.fresh_rng()
  t, n = 130, 2
  q, k, v = ktu.random_qkv(rng, 1, t, n, 1, 64, jnp.float32)
  layout = ktu.random_bs_layout(rng, 1, n, t, 2)
  with pytest.raises(ValueError, match="block_index"):
    block_sparse_attention(
        q, k, v, BlockSparseLayout(layout.block_count,
                                   layout.block_index[0]),
        interpret=True,
    )
  with pytest.raises(TypeError, match="dtype"):
    block_sparse_attention(q, k.astype(jnp.bfloat16), v, layout,
                           interpret=True)
  with pytest.raises(ValueError, match="T == S"):
    block_sparse_attention(q, k[:, :64], v[:, :64], layout, interpret=True)
  with pytest.raises(ValueError, match="multiple"):
    q3 = jnp.concatenate([q, q[:, :, :1]], axis=2)
    lay3 = ktu.random_bs_layout(rng, 1, 3, t, 2)
    block_sparse_attention(q3, jnp.concatenate([k, k], 2),
                           jnp.concatenate([v, v], 2), lay3, interpret=True)
