"""A-shape Pallas kernel (interpret mode) vs the dense masked reference."""

import jax.numpy as jnp
import numpy as np
import pytest

import kernel_test_utils as ktu
from pallas_kernels.a_shape import Config, a_shape_attention
from pallas_kernels.layouts import AShapeLayout
from pallas_kernels.reference import a_shape_mask

SMALL = Config(block_q=32, block_k=16, num_warps=4, num_stages=2)

CASES = [
    (1, 200, 4, 2, 64, jnp.float32, SMALL),
    (2, 130, 4, 1, 96, jnp.float32, Config(block_q=64, block_k=32)),
    (1, 50, 2, 2, 128, jnp.bfloat16, None),
    (1, 300, 4, 4, 128, jnp.bfloat16, SMALL),
    (1, 96, 2, 1, 256, jnp.float32, None),
]


@pytest.mark.parametrize("b,t,n,kv,d,dtype,config", CASES)
def test_matches_reference(b, t, n, kv, d, dtype, config):
  rng, seed = ktu.fresh_rng()
  q, k, v = ktu.random_qkv(rng, b, t, n, kv, d, dtype)
  layout = ktu.random_a_shape_layout(rng, n, t, inactive=(1,))
  out = a_shape_attention(q, k, v, layout, config=config, interpret=True)
  assert out.shape == q.shape and out.dtype == q.dtype
  want = ktu.reference(q, k, v, a_shape_mask(layout, t, t))
  ktu.assert_close(out, want, dtype, seed, f"T={t} D={d} {layout}")
  assert not np.asarray(out[:, :, 1].astype(jnp.float32)).any()


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
