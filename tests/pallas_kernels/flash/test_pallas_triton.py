"""Dense causal flash kernel (interpret mode) vs the dense masked reference."""

import jax.numpy as jnp
import pytest

import kernel_test_utils as ktu
from pallas_kernels.flash import Config, flash_attention

CASES = [
    (1, 200, 4, 2, 64, jnp.float32, Config(block_q=64, block_k=32)),
    (2, 130, 4, 1, 96, jnp.float32, None),
    (1, 50, 2, 2, 128, jnp.bfloat16, None),
    (1, 300, 4, 4, 128, jnp.float16, Config(block_q=32, block_k=64)),
    (1, 96, 2, 1, 256, jnp.float32, None),
]


@pytest.mark.parametrize("b,t,n,kv,d,dtype,config", CASES)
def test_matches_reference(b, t, n, kv, d, dtype, config):
  rng, seed = ktu.fresh_rng()
  q, k, v = ktu.random_qkv(rng, b, t, n, kv, d, dtype)
  out = flash_attention(q, k, v, config=config, interpret=True)
  assert out.shape == q.shape and out.dtype == q.dtype
  causal = jnp.tril(jnp.ones((t, t), bool))[None, None]
  ktu.assert_close(out, ktu.reference(q, k, v, causal), dtype, seed,
                   f"T={t} D={d}")


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
