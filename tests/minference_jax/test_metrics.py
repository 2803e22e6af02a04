"""Density, attention recall and output error vs brute-force computations."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from minference_jax import metrics
from pallas_kernels import reference as ref_lib
from pallas_kernels.flash.xla import flash_logsumexp_xla
from pallas_kernels.layouts import AShapeLayout, BlockSparseLayout
from random_layouts import (
    fresh_rng,
    random_a_shape_layout,
    random_bs_layout,
    random_qkv,
    random_vs_layout,
)

MASKS = {
    "vs": jax.jit(ref_lib.vertical_slash_mask, static_argnums=(1, 2)),
    "bs": jax.jit(ref_lib.block_sparse_mask, static_argnums=(1, 2)),
    "a": jax.jit(ref_lib.a_shape_mask, static_argnums=(1, 2)),
}


def _layout(kind, rng, b, n, t, inactive):
  if kind == "vs":
    return random_vs_layout(rng, b, n, t, ns=3, nv=6, inactive=inactive)
  if kind == "bs":
    return random_bs_layout(rng, b, n, t, kb=2, inactive=inactive)
  return random_a_shape_layout(rng, n, t, inactive=inactive)


def _brute_probs(q, k):
  """Dense causal softmax in float64: [B, N, T, S]."""
  b, t, n, d = q.shape
  g = n // k.shape[2]
  kf = np.repeat(np.asarray(k, np.float64), g, axis=2)
  logits = np.einsum("btnd,bsnd->bnts", np.asarray(q, np.float64), kf)
  logits = logits / np.sqrt(d)
  causal = np.tril(np.ones((t, t), bool))
  logits = np.where(causal, logits, -np.inf)
  p = np.exp(logits - logits.max(-1, keepdims=True))
  return p / p.sum(-1, keepdims=True)


@pytest.mark.parametrize("kind", ["vs", "bs", "a"])
def test_density_from_layout_arithmetic_matches_the_mask(kind):
  rng, seed = fresh_rng()
  b, n, t = 2, 3, 150
  layout = _layout(kind, rng, b, n, t, inactive=(1,))
  mask = np.asarray(MASKS[kind](layout, t, t))  # [B or 1, N, T, S]
  causal = np.tril(np.ones((t, t), bool))
  # Per row block counts, exactly.
  counts = np.asarray(metrics.covered_counts(layout, t))
  rows = (mask & causal).sum(-1)  # [B, N, T]
  pad = -t % 64
  want = np.pad(rows, ((0, 0), (0, 0), (0, pad))).reshape(
      rows.shape[0], n, -1, 64).sum(-1)
  np.testing.assert_array_equal(counts, want, err_msg=f"seed={seed}")
  got = metrics.density_per_head(layout, t)
  from_mask = metrics.density_per_head(jnp.asarray(mask), t)
  brute = (mask & causal).sum((-2, -1)).mean(0) / causal.sum()
  np.testing.assert_allclose(got, brute, rtol=1e-12, err_msg=f"seed={seed}")
  np.testing.assert_allclose(from_mask, brute, rtol=1e-12)
  assert got[1] == 0.0  # inactive head
  assert metrics.density(layout, t) == pytest.approx(brute.mean(), rel=1e-12)


def test_density_of_a_full_layout_is_one_at_long_lengths():
  # T (T + 1) / 2 > 2**31 here: the per-row-block int32 counts must not
  # overflow when summed.
  t = 70_000
  tb = -(-t // 64)
  m = np.arange(tb)
  index = np.broadcast_to(np.arange(tb), (tb, tb)).astype(np.int32)
  full = BlockSparseLayout(
      jnp.asarray((m + 1)[None, None], jnp.int32),
      jnp.asarray(index[None, None]),
  )
  assert metrics.density(full, t) == 1.0
  a_full = AShapeLayout(jnp.array([0, 5]), jnp.array([t, t]))
  np.testing.assert_array_equal(metrics.density_per_head(a_full, t), [1, 1])
  sink_only = AShapeLayout(jnp.array([10]), jnp.array([1]))
  # Rows t >= 10 read 10 sinks plus the diagonal; rows t < 10 read t + 1.
  want = (sum(min(r + 1, 11) for r in range(t))) / (t * (t + 1) / 2)
  assert metrics.density(sink_only, t) == pytest.approx(want, rel=1e-12)


def test_density_mask_shape_is_checked():
  with pytest.raises(ValueError, match="seq_len"):
    metrics.density(jnp.ones((2, 10, 10), bool), 12)


@pytest.mark.parametrize("kind", ["vs", "bs", "a"])
def test_attention_recall_matches_brute_force(kind):
  rng, seed = fresh_rng()
  b, n, kv, t = 1, 4, 2, 140
  q, k, _ = random_qkv(rng, b, t, n, kv, 16)
  q = q * 2.0  # sharper rows: recall far from the density
  layout = _layout(kind, rng, b, n, t, inactive=(3,))
  mask = np.asarray(MASKS[kind](layout, t, t))
  probs = _brute_probs(q, k)  # [B, N, T, S]
  want = (probs * mask).sum(-1).mean((0, 2))  # [N]
  got = np.asarray(metrics.attention_recall_per_head(q, k, layout))
  np.testing.assert_allclose(got, want, atol=2e-6, err_msg=f"seed={seed}")
  got_mask = np.asarray(
      metrics.attention_recall_per_head(q, k, jnp.asarray(mask))
  )
  np.testing.assert_allclose(got_mask, want, atol=2e-6)
  assert got[3] == 0.0
  shared = metrics.attention_recall_per_head(
      q, k, layout, dense_lse=flash_logsumexp_xla(q, k)
  )
  np.testing.assert_allclose(np.asarray(shared), got, atol=1e-7)
  assert float(metrics.attention_recall(q, k, layout)) == pytest.approx(
      want.mean(), abs=2e-6
  )


def test_relative_output_error_matches_numpy():
  rng, _ = fresh_rng()
  out = jnp.asarray(rng.standard_normal((2, 9, 3, 4)), jnp.float32)
  ref = jnp.asarray(rng.standard_normal((2, 9, 3, 4)), jnp.float32)
  o, r = np.asarray(out, np.float64), np.asarray(ref, np.float64)
  assert float(metrics.relative_output_error(out, ref)) == pytest.approx(
      np.linalg.norm(o - r) / np.linalg.norm(r), rel=1e-5
  )
  per_head = np.asarray(metrics.relative_output_error_per_head(out, ref))
  want = [np.linalg.norm(o[:, :, h] - r[:, :, h]) / np.linalg.norm(r[:, :, h])
          for h in range(3)]
  np.testing.assert_allclose(per_head, want, rtol=1e-5)
  zero = jnp.zeros_like(ref)
  assert float(metrics.relative_output_error(zero, zero)) == 0.0
  assert float(metrics.relative_output_error(out, zero)) == np.inf
  bf = metrics.relative_output_error(ref.astype(jnp.bfloat16), ref)
  assert 0 < float(bf) < 1e-2
  with pytest.raises(TypeError):  # shape mismatch (jaxtyping)
    metrics.relative_output_error(out, ref[:, :5])
