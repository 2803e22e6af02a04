"""A-shape Pallas-Triton kernel (interpret mode): the op battery with
smaller tiles on some cases, and the kernel's phases."""

import jax.numpy as jnp
import pytest

import kernel_test_utils as ktu
from attention_op_test_base import AttentionOpTestBase
from pallas_kernels.a_shape import Config
from pallas_kernels.a_shape.pallas_triton import (
    a_shape_attention_triton as a_shape_attention,
)
from pallas_kernels.layouts import AShapeLayout
from pallas_kernels.reference import a_shape_mask

SMALL = Config(block_q=32, block_k=16, num_warps=4, num_stages=2)
# Tile configs per battery case (others: the default config).
CONFIGS = {
    "b1-t200-n4-k2-d64-float32": SMALL,
    "b2-t130-n4-k1-d96-float32": Config(block_q=64, block_k=32),
    "b1-t300-n4-k4-d128-bfloat16": SMALL,
}


class TestPallasTriton(AttentionOpTestBase):
  OP = "a_shape"
  IMPLEMENTATION = "pallas_triton"
  INTERPRET = True

  def config(self, case):
    return CONFIGS.get(case.id)


def test_minference_like_sizes_use_unmasked_window_tiles():
  """Small sink + a window much wider than the query block (the MInference
  default 128 + 3968 scaled down): the unmasked middle tiles run; also a
  window of 1 (diagonal only) and a sink overlapping the window."""
  rng, seed = ktu.fresh_rng()
  t, n = 384, 4
  q, k, v = ktu.random_qkv(rng, 1, t, n, 2, 64, jnp.float32)
  layout = AShapeLayout(
      n_init=jnp.array([8, 0, 200, 5], jnp.int32),
      n_local=jnp.array([120, 1, 150, 0], jnp.int32),
  )
  out = a_shape_attention(q, k, v, layout, config=SMALL, interpret=True)
  want = ktu.reference(q, k, v, a_shape_mask(layout, t, t))
  ktu.assert_close(out, want, jnp.float32, seed, "fixed sizes")


def test_window_covering_everything_is_causal_attention():
  rng, seed = ktu.fresh_rng()
  t, n = 150, 2
  q, k, v = ktu.random_qkv(rng, 1, t, n, 1, 64, jnp.float32)
  layout = AShapeLayout(n_init=jnp.zeros((n,), jnp.int32),
                        n_local=jnp.full((n,), t, jnp.int32))
  out = a_shape_attention(q, k, v, layout, interpret=True)
  causal = jnp.tril(jnp.ones((t, t), bool))[None, None]
  ktu.assert_close(out, ktu.reference(q, k, v, causal), jnp.float32, seed,
                   "window == T")


def test_bad_layout_raises():
  rng, _ = ktu.fresh_rng()
  q, k, v = ktu.random_qkv(rng, 1, 64, 2, 1, 64, jnp.float32)
  with pytest.raises(ValueError, match="n_init"):
    a_shape_attention(
        q, k, v, AShapeLayout(jnp.zeros((3,), jnp.int32),
                              jnp.zeros((3,), jnp.int32)), interpret=True)
  with pytest.raises(TypeError, match="int32"):
    a_shape_attention(
        q, k, v, AShapeLayout(jnp.zeros((2,), jnp.float32),
                              jnp.zeros((2,), jnp.int32)), interpret=True)
