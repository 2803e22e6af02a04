"""Dense causal Pallas-Triton flash kernel (interpret mode): the op battery
with other tiles on some cases, and its input checks."""

import jax.numpy as jnp
import pytest

import kernel_test_utils as ktu
from attention_op_test_base import AttentionOpTestBase
from pallas_kernels.flash import Config
from pallas_kernels.flash.pallas_triton import (
    flash_attention_triton as flash_attention,
)

# Tile configs per battery case (others: the default config).
CONFIGS = {
    "b1-t200-n4-k2-d64-float32": Config(block_q=64, block_k=32),
    "b1-t300-n4-k4-d128-float16": Config(block_q=32, block_k=64),
}


class TestPallasTriton(AttentionOpTestBase):
  OP = "flash"
  IMPLEMENTATION = "pallas_triton"
  INTERPRET = True

  def config(self, case):
    return CONFIGS.get(case.id)


def test_bad_inputs_raise():
  rng, _ = ktu.fresh_rng()
  q, k, v = ktu.random_qkv(rng, 1, 64, 3, 2, 64, jnp.float32)
  with pytest.raises(ValueError, match="multiple of the KV heads"):
    flash_attention(q, k, v, interpret=True)
  q, k, v = ktu.random_qkv(rng, 1, 64, 2, 1, 64, jnp.float32)
  with pytest.raises(TypeError, match="share a dtype"):
    flash_attention(q, k, v.astype(jnp.float16), interpret=True)
  with pytest.raises(TypeError, match="not supported"):
    f8 = jnp.float8_e4m3fn
    flash_attention(q.astype(f8), k.astype(f8), v.astype(f8), interpret=True)
  with pytest.raises(ValueError, match="T == S"):
    flash_attention(q[:, :32], k, v, interpret=True)
