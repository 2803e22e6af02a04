"""Vertical-Slash XLA implementation: the op battery, its log-sum-exp and
its input checks."""

import jax.numpy as jnp
import numpy as np
import pytest

import random_layouts as rl
from attention_op_test_base import AttentionOpTestBase, JitMatchesEager
from pallas_kernels.reference import vertical_slash_mask
from pallas_kernels.vertical_slash import vertical_slash_attention
from pallas_kernels.vertical_slash.xla import (
    vertical_slash_attention_xla,
    vertical_slash_logsumexp_xla,
)


class TestXla(AttentionOpTestBase, JitMatchesEager):
  OP = "vertical_slash"
  IMPLEMENTATION = "xla"
  F32_ATOL = 1e-5


def brute_lse(q, k, mask):
  """float64 log-sum-exp of the masked scaled logits: [B, T, N]."""
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


def test_logsumexp_over_the_selected_keys():
  rng, seed = rl.fresh_rng()
  t = 130
  q, k, _ = rl.random_qkv(rng, 1, t, 4, 2, 16)
  layout = rl.random_vs_layout(rng, 1, 4, t, ns=3, nv=5, inactive=(2,))
  got = np.asarray(vertical_slash_logsumexp_xla(q, k, layout))
  want = brute_lse(q, k, vertical_slash_mask(layout, t, t))
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5,
                             err_msg=f"seed={seed}")
  assert np.all(np.isneginf(got[:, :, 2]))  # inactive head: no keys


def test_bad_inputs_raise_clear_errors():
  rng, _ = rl.fresh_rng()
  q, k, v = rl.random_qkv(rng, 1, 70, 4, 2, 8)
  layout = rl.random_vs_layout(rng, 1, 4, 70, ns=2, nv=2)
  with pytest.raises(TypeError, match="T=64"):  # jaxtyping: T != S
    vertical_slash_attention_xla(q[:, :64], k, v, layout)
  with pytest.raises(ValueError, match="Tb"):
    bad = rl.random_vs_layout(rng, 1, 4, 130, 2, 2)  # Tb for T = 130
    vertical_slash_attention_xla(q, k, v, bad)
  with pytest.raises(TypeError, match="takes no config"):
    vertical_slash_attention(q, k, v, layout, implementation="xla",
                             config=object())
  assert vertical_slash_attention(q, k, v, layout).dtype == jnp.float32
