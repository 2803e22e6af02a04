"""Fused Vertical-Slash estimate scores (interpret mode) vs the XLA scores.

`index_vs_estimate.line_scores_xla` is the plain-JAX reference (itself
checked against the NumPy estimate in test_index_vs_estimate.py); the kernel
must give the same column and diagonal sums up to f32 summation order, and
the same selected lines.
"""

import dataclasses

import jax.numpy as jnp
import numpy as np
import pytest

import kernel_test_utils as ktu
from minference_jax import index_vs_estimate as estimate
from pallas_kernels.vs_estimate import Config, vs_line_scores

# b, t, n, kv, d, last_q, dtype, config: chunks of several tiles and of one,
# T not a multiple of the tile, last_q not a power of two (padded rows),
# G = 1, 2, 3 and 4 with 1, 2 and 4 heads per program, D = 96 (padded).
CASES = [
    (1, 300, 4, 2, 64, 64, jnp.float32, Config(programs=4,
                                                heads_per_program=2)),
    (2, 517, 6, 2, 96, 50, jnp.float32, Config(programs=3)),
    (1, 700, 4, 1, 128, 64, jnp.bfloat16, Config(block_k=128, num_warps=8,
                                                 heads_per_program=4)),
    (1, 90, 2, 2, 32, 10, jnp.float32, Config(block_k=16, programs=64)),
    (1, 333, 2, 1, 64, 16, jnp.bfloat16,  # row stats on 32-key tiles
     Config(block_k=64, programs=5, stats_block_k=32, stats_num_stages=2)),
    (1, 64, 2, 1, 64, 64, jnp.float16, Config()),
]


@pytest.mark.parametrize("b,t,n,kv,d,last_q,dtype,config", CASES)
@pytest.mark.parametrize("scratch,exp2", [
    ("skewed_store", False), ("probs", False), ("logits", False),
    ("skewed_store", True), ("logits", True)])
def test_scores_match_xla(b, t, n, kv, d, last_q, dtype, config, scratch,
                          exp2):
  """Every scratch form and exponential; tiles before and after the last
  queries' positions (the unmasked and the masked tile loop)."""
  config = dataclasses.replace(config, scratch=scratch, exp2=exp2)
  rng, seed = ktu.fresh_rng()
  q, k, _ = ktu.random_qkv(rng, b, t, n, kv, d, dtype)
  k = k * 2  # sharper softmax: lines with very different mass
  vertical, slash = vs_line_scores(q, k, last_q, config=config,
                                   interpret=True)
  want_v, want_s = estimate.line_scores_xla(q, k, last_q)
  assert vertical.shape == slash.shape == (b, n, t)
  assert vertical.dtype == slash.dtype == jnp.float32
  for name, got, want in (("vertical", vertical, want_v),
                          ("slash", slash, want_s)):
    np.testing.assert_allclose(
        np.asarray(got), np.asarray(want), rtol=2e-5, atol=1e-6,
        err_msg=f"{name} seed={seed} T={t} L={last_q}")
  # Every row's probabilities sum to 1, so each score vector sums to L.
  np.testing.assert_allclose(np.asarray(vertical.sum(-1)), last_q, rtol=1e-4)
  np.testing.assert_allclose(np.asarray(slash.sum(-1)), last_q, rtol=1e-4)


def _kth_largest(x: np.ndarray, k: int) -> np.ndarray:
  return np.sort(x, axis=-1)[..., -k][..., None]


def test_selected_lines_are_a_top_k_of_the_xla_scores():
  """scores="pallas" picks lines whose XLA scores are all within rounding of
  the top-k (exact set equality could differ only on near-ties)."""
  rng, seed = ktu.fresh_rng()
  b, t, n, kv, d = 1, 650, 4, 2, 64
  q, k, _ = ktu.random_qkv(rng, b, t, n, kv, d, jnp.bfloat16)
  nv, ns = (40, 60, 35, 80), (70, 50, 90, 60)
  got = estimate.vertical_slash_indices(q, k, nv, ns, 64, scores="pallas",
                                        interpret=True)
  want = estimate.vertical_slash_indices(q, k, nv, ns, 64)
  ref_v, ref_s = map(np.asarray, estimate.line_scores_xla(q, k, 64))
  cols = np.arange(t)
  ref_v = np.where(cols < estimate.VS_MIN_VERTICAL, np.inf, ref_v)
  ref_s = np.where(cols < estimate.VS_FORCED_SLASH_OFFSETS, np.inf, ref_s)
  np.testing.assert_array_equal(got.vertical_count, want.vertical_count)
  np.testing.assert_array_equal(got.slash_count, want.slash_count)
  for h in range(n):
    for field, ref, budget in (("vertical", ref_v, nv), ("slash", ref_s, ns)):
      picked = np.asarray(getattr(got, field))[0, h, : budget[h]]
      assert len(set(picked.tolist())) == budget[h], (field, h, seed)
      floor = _kth_largest(ref[0, h], budget[h])[0]
      assert (ref[0, h, picked] >= floor * (1 - 1e-5)).all(), (field, h, seed)
  same = np.mean(np.asarray(got.slash) == np.asarray(want.slash))
  assert same > 0.95, f"seed={seed}: only {same:.3f} of slashes agree"


def test_rejects_bad_arguments():
  q = jnp.zeros((1, 100, 2, 64))
  k = jnp.zeros((1, 100, 1, 64))
  with pytest.raises(ValueError, match="last_q"):
    vs_line_scores(q, k, 0, interpret=True)
  with pytest.raises(ValueError, match="last_q"):
    vs_line_scores(q, k, 101, interpret=True)
  with pytest.raises(TypeError, match="last_q"):
    vs_line_scores(q, k, 2.0, interpret=True)
  with pytest.raises(ValueError, match="block_k"):
    vs_line_scores(q, k, 64, config=Config(block_k=32), interpret=True)
  with pytest.raises(ValueError, match="stats_block_k"):
    vs_line_scores(q, k, 64, config=Config(stats_block_k=32),
                   interpret=True)
  with pytest.raises(ValueError, match="power of two"):
    Config(stats_block_k=48)
  with pytest.raises(ValueError, match="T == S"):
    vs_line_scores(q, k[:, :50], 10, interpret=True)
  with pytest.raises(ValueError, match="power of two"):
    Config(block_k=48)
  with pytest.raises(ValueError, match="programs"):
    Config(programs=0)
  with pytest.raises(ValueError, match="power of two"):
    Config(heads_per_program=3)
  with pytest.raises(ValueError, match="scratch"):
    Config(scratch="smem")
  with pytest.raises(TypeError, match="exp2"):
    Config(exp2=1)
  with pytest.raises(ValueError, match="divide"):
    vs_line_scores(q, k, 16, config=Config(heads_per_program=4),
                   interpret=True)
  with pytest.raises(ValueError, match="scores"):
    estimate.vertical_slash_indices(q, k, 30, 50, scores="cuda")
