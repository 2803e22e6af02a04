"""Dense XLA implementation: the op battery, decode and chunked-prefill
steps (q_offset), its log-sum-exp and input checks."""

import jax.numpy as jnp
import numpy as np
import pytest

import random_layouts as rl
from attention_op_test_base import AttentionOpTestBase, JitMatchesEager
from pallas_kernels.flash import flash_attention
from pallas_kernels.flash.xla import flash_attention_xla, flash_logsumexp_xla
from pallas_kernels.reference import causal_mask


class TestXla(AttentionOpTestBase, JitMatchesEager):
  OP = "flash"
  IMPLEMENTATION = "xla"
  F32_ATOL = 1e-5


@pytest.mark.parametrize(
    "t, s, q_offset, kv",
    [(150, 150, 0, 2), (1, 97, 96, 1), (40, 200, 160, 2), (30, 100, 20, 4)],
)
def test_steps_at_an_offset_match_the_causal_reference(t, s, q_offset, kv):
  """Prefill, decode (T = 1) and chunked prefill (T < S) with small chunks,
  through the entry point (which runs XLA for them by default on CPU)."""
  rng, seed = rl.fresh_rng()
  q, k, v = rl.random_qkv(rng, 2, t, 4, kv, 16, s=s)
  out = flash_attention_xla(q, k, v, q_offset=q_offset, block_q=32,
                            block_k=48)
  want = rl.reference(q, k, v, causal_mask(t, s, q_offset)[None, None])
  rl.assert_close(out, want, jnp.float32, seed, f"offset {q_offset}")
  rl.assert_close(flash_attention(q, k, v, q_offset=q_offset), want,
                  jnp.float32, seed, f"entry point, offset {q_offset}")


def test_bf16_and_default_blocks():
  rng, seed = rl.fresh_rng()
  t = 300
  q, k, v = rl.random_qkv(rng, 1, t, 2, 1, 32, jnp.bfloat16)
  out = flash_attention_xla(q, k, v)
  want = rl.reference(q, k, v, causal_mask(t, t)[None, None])
  rl.assert_close(out, want, jnp.bfloat16, seed, "dense bf16")


def test_logsumexp_of_the_causal_logits():
  rng, seed = rl.fresh_rng()
  t = 130
  q, k, _ = rl.random_qkv(rng, 1, t, 4, 2, 16)
  got = np.asarray(flash_logsumexp_xla(q, k, block_q=48, block_k=40))
  qf = np.asarray(q, np.float64)
  kf = np.repeat(np.asarray(k, np.float64), 2, axis=2)
  logits = np.einsum("btnd,bsnd->bnts", qf, kf) / 4.0
  logits = np.where(np.tril(np.ones((t, t), bool)), logits, -np.inf)
  mx = logits.max(-1, keepdims=True)
  want = np.swapaxes(mx[..., 0] + np.log(np.exp(logits - mx).sum(-1)), 1, 2)
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5,
                             err_msg=f"seed={seed}")


def test_bad_inputs_raise():
  rng, _ = rl.fresh_rng()
  q, k, v = rl.random_qkv(rng, 1, 70, 4, 2, 8)
  with pytest.raises(ValueError, match="divisible"):
    flash_attention_xla(jnp.zeros((1, 70, 3, 8)), k, v)
  with pytest.raises(ValueError, match="q_offset"):
    flash_attention_xla(q, k, v, q_offset=-1)
