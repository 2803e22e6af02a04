"""Block-Sparse XLA implementation: the op battery and its input checks."""

import jax.numpy as jnp
import pytest

import random_layouts as rl
from attention_op_test_base import AttentionOpTestBase, JitMatchesEager
from pallas_kernels.block_sparse.xla import block_sparse_attention_xla
from pallas_kernels.layouts import BlockSparseLayout


class TestXla(AttentionOpTestBase, JitMatchesEager):
  OP = "block_sparse"
  IMPLEMENTATION = "xla"
  F32_ATOL = 1e-5


def test_bad_layout_raises():
  rng, _ = rl.fresh_rng()
  q, k, v = rl.random_qkv(rng, 1, 130, 2, 1, 16, jnp.float32)
  layout = rl.random_bs_layout(rng, 1, 2, 130, 2)
  with pytest.raises(ValueError, match="block_index"):
    block_sparse_attention_xla(q, k, v, BlockSparseLayout(
        layout.block_count, layout.block_index[:, :, :2]))
