"""RoPE variants against scalar re-derivations of the published formulas."""

import cmath
import math

import jax.numpy as jnp
import numpy as np
import pytest

from models.rope import RopeConfig, apply_rope, rope_cos_sin


def _base_freqs(theta: float, dim: int) -> list[float]:
  # RoFormer: theta_i = base^(-2i/d), i < d/2.
  return [theta ** (-(2 * i) / dim) for i in range(dim // 2)]


def _check(cfg: RopeConfig, expected: list[float], seq_len=None):
  got = cfg.inv_freq(seq_len)
  assert got.dtype == np.float32 and got.shape == (cfg.rotary_dim // 2,)
  np.testing.assert_allclose(got, np.array(expected), rtol=2e-6)


@pytest.mark.parametrize("theta,dim", [(10000.0, 64), (500000.0, 128),
                                       (3580165449.0, 16)])
def test_default_frequencies(theta, dim):
  _check(RopeConfig(theta=theta, rotary_dim=dim), _base_freqs(theta, dim))


def test_linear_divides_every_frequency():
  cfg = RopeConfig(kind="linear", theta=10000.0, rotary_dim=32, factor=4.0)
  _check(cfg, [f / 4.0 for f in _base_freqs(10000.0, 32)])


def test_dynamic_ntk_grows_base_only_past_max_positions():
  cfg = RopeConfig(kind="dynamic", theta=10000.0, rotary_dim=32, factor=2.0,
                   max_position_embeddings=128)
  _check(cfg, _base_freqs(10000.0, 32), seq_len=100)
  _check(cfg, _base_freqs(10000.0, 32), seq_len=None)
  length = 512
  # NTK-aware base: b * ((s * L / Lmax) - (s - 1)) ** (d / (d - 2)).
  new_base = 10000.0 * ((2.0 * length / 128) - 1.0) ** (32 / 30)
  _check(cfg, _base_freqs(new_base, 32), seq_len=length)


def _llama3_reference(theta, dim, factor, low, high, old_len):
  out = []
  for f in _base_freqs(theta, dim):
    wavelen = 2 * math.pi / f
    if wavelen < old_len / high:  # high frequency: untouched
      out.append(f)
    elif wavelen > old_len / low:  # low frequency: interpolated
      out.append(f / factor)
    else:
      smooth = (old_len / wavelen - low) / (high - low)
      out.append((1 - smooth) * f / factor + smooth * f)
  return out


def test_llama3_band_scaling_matches_llama31_recipe():
  cfg = RopeConfig(kind="llama3", theta=500000.0, rotary_dim=128, factor=8.0,
                   low_freq_factor=1.0, high_freq_factor=4.0,
                   original_max_position_embeddings=8192,
                   max_position_embeddings=131072)
  ref = _llama3_reference(500000.0, 128, 8.0, 1.0, 4.0, 8192)
  _check(cfg, ref)
  got = cfg.inv_freq()
  base = np.array(_base_freqs(500000.0, 128), np.float32)
  # All three bands occur at this geometry.
  assert np.sum(got == base) > 0 and np.sum(np.isclose(got, base / 8)) > 0
  assert np.sum((got < base) & (got > base / 8 * 1.0001)) > 0


def _yarn_reference(theta, dim, factor, original, beta_fast, beta_slow,
                    truncate):
  # The dim index at which a pair makes `rotations` turns over `original`.
  def index_for(rotations):
    return dim * math.log(original / (rotations * 2 * math.pi)) / (
        2 * math.log(theta))
  lo, hi = index_for(beta_fast), index_for(beta_slow)
  if truncate:
    lo, hi = math.floor(lo), math.ceil(hi)
  lo, hi = max(lo, 0), min(hi, dim - 1)
  if lo == hi:
    hi += 0.001
  out = []
  for i, f in enumerate(_base_freqs(theta, dim)):
    ramp = min(max((i - lo) / (hi - lo), 0.0), 1.0)
    keep = 1.0 - ramp  # share of the original (extrapolated) frequency
    out.append(f * keep + (f / factor) * (1 - keep))
  return out


@pytest.mark.parametrize("truncate", [True, False])
def test_yarn_ramp_and_attention_factor(truncate):
  cfg = RopeConfig(kind="yarn", theta=10000.0, rotary_dim=64, factor=4.0,
                   original_max_position_embeddings=2048,
                   max_position_embeddings=8192, truncate=truncate)
  _check(cfg, _yarn_reference(10000.0, 64, 4.0, 2048, 32.0, 1.0, truncate))
  got = cfg.inv_freq()
  base = np.array(_base_freqs(10000.0, 64), np.float32)
  assert got[0] == pytest.approx(base[0])  # fastest pair extrapolates
  assert got[-1] == pytest.approx(base[-1] / 4.0)  # slowest interpolates
  # YaRN §3.4: sqrt(1/t) = 0.1 ln(s) + 1.
  assert cfg.attention_scaling() == pytest.approx(0.1 * math.log(4.0) + 1)
  explicit = RopeConfig(kind="yarn", rotary_dim=64, factor=4.0,
                        attention_factor=1.5)
  assert explicit.attention_scaling() == 1.5


def test_longrope_switches_factor_sets_at_original_length():
  rng = np.random.default_rng(0)
  short = tuple(float(x) for x in 1 + rng.random(8))
  long = tuple(float(x) for x in 1 + 10 * rng.random(8))
  cfg = RopeConfig(kind="longrope", theta=10000.0, rotary_dim=16,
                   max_position_embeddings=4096,
                   original_max_position_embeddings=256,
                   short_factor=short, long_factor=long)
  base = _base_freqs(10000.0, 16)
  _check(cfg, [f / s for f, s in zip(base, short)], seq_len=256)
  _check(cfg, [f / s for f, s in zip(base, short)], seq_len=None)
  _check(cfg, [f / s for f, s in zip(base, long)], seq_len=257)
  # Phi-3: scale = max / original = 16 -> sqrt(1 + ln 16 / ln 256).
  assert cfg.attention_scaling() == pytest.approx(
      math.sqrt(1 + math.log(16) / math.log(256)))


def test_glm_partial_rotary_uses_half_the_head_and_rope_ratio():
  from models.glm import chatglm_fields
  fields = chatglm_fields({
      "hidden_size": 64, "num_attention_heads": 4, "kv_channels": 16,
      "ffn_hidden_size": 128, "num_layers": 2, "padded_vocab_size": 32,
      "rope_ratio": 5.0, "multi_query_attention": True,
      "multi_query_group_num": 2})
  rope = fields["rope"]
  assert rope.rotary_dim == 8 and rope.interleaved
  _check(rope, _base_freqs(10000.0 * 5.0, 8))


def _complex_rope(x, positions, freqs, scale, interleaved):
  """Rotation as complex multiplication, pair by pair (B, T, H, D numpy)."""
  out = np.array(x, np.float64)
  half = len(freqs)
  for b in range(x.shape[0]):
    for t in range(x.shape[1]):
      for h in range(x.shape[2]):
        for i, f in enumerate(freqs):
          a, c = (2 * i, 2 * i + 1) if interleaved else (i, i + half)
          z = complex(x[b, t, h, a], x[b, t, h, c])
          z *= scale * cmath.exp(1j * positions[b, t] * f)
          out[b, t, h, a], out[b, t, h, c] = z.real, z.imag
  return out


@pytest.mark.parametrize("interleaved,rotary_dim", [(False, 8), (True, 8),
                                                    (False, 4), (True, 4)])
def test_apply_rope_is_a_complex_rotation(interleaved, rotary_dim):
  rng = np.random.default_rng(1)
  x = rng.standard_normal((2, 5, 3, 8)).astype(np.float32)
  positions = rng.integers(0, 1000, (2, 5)).astype(np.int32)
  cfg = RopeConfig(theta=500.0, rotary_dim=rotary_dim, interleaved=interleaved)
  inv = cfg.inv_freq()
  cos, sin = rope_cos_sin(jnp.asarray(positions), inv, 1.25)
  got = apply_rope(jnp.asarray(x), cos, sin, interleaved=interleaved)
  ref = _complex_rope(x, positions, inv.astype(np.float64), 1.25, interleaved)
  np.testing.assert_allclose(np.asarray(got), ref, rtol=1e-4, atol=1e-4)
  np.testing.assert_array_equal(np.asarray(got)[..., rotary_dim:],
                                x[..., rotary_dim:])


@pytest.mark.parametrize("interleaved", [False, True])
def test_rotated_scores_depend_only_on_relative_position(interleaved):
  rng = np.random.default_rng(2)
  q = jnp.asarray(rng.standard_normal((1, 1, 1, 16)), jnp.float32)
  k = jnp.asarray(rng.standard_normal((1, 1, 1, 16)), jnp.float32)
  inv = RopeConfig(rotary_dim=16, interleaved=interleaved).inv_freq()

  def score(pq, pk):
    cq, sq = rope_cos_sin(jnp.array([[pq]]), inv)
    ck, sk = rope_cos_sin(jnp.array([[pk]]), inv)
    rq = apply_rope(q, cq, sq, interleaved=interleaved)
    rk = apply_rope(k, ck, sk, interleaved=interleaved)
    return float(jnp.sum(rq * rk))

  assert score(7, 3) == pytest.approx(score(107, 103), rel=1e-4, abs=1e-4)
  assert score(7, 3) != pytest.approx(score(7, 5), rel=1e-3)


def test_from_hf_parses_scaling_spellings():
  llama31 = RopeConfig.from_hf(
      {"rope_theta": 500000.0, "max_position_embeddings": 131072,
       "rope_scaling": {"rope_type": "llama3", "factor": 8.0,
                        "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                        "original_max_position_embeddings": 8192}},
      head_dim=128)
  assert llama31.kind == "llama3" and llama31.factor == 8.0
  v5 = RopeConfig.from_hf(
      {"max_position_embeddings": 131072,
       "rope_parameters": {"rope_type": "llama3", "rope_theta": 500000.0,
                           "factor": 8.0, "low_freq_factor": 1.0,
                           "high_freq_factor": 4.0,
                           "original_max_position_embeddings": 8192}},
      head_dim=128)
  assert v5 == llama31
  phi = RopeConfig.from_hf(
      {"rope_theta": 10000.0, "max_position_embeddings": 64,
       "original_max_position_embeddings": 16, "partial_rotary_factor": 0.5,
       "rope_scaling": {"type": "su", "short_factor": [1.0] * 4,
                        "long_factor": [2.0] * 4}}, head_dim=16)
  assert phi.kind == "longrope" and phi.rotary_dim == 8
  assert phi.original_max_position_embeddings == 16 and phi.factor is None
  for rope in (llama31, phi):
    again = RopeConfig.from_hf(
        {**rope.to_hf(), "max_position_embeddings":
         rope.max_position_embeddings,
         "partial_rotary_factor": rope.rotary_dim / 128
         if rope is llama31 else 0.5},
        head_dim=128 if rope is llama31 else 16)
    assert again == rope


def test_bad_rope_configs_raise():
  with pytest.raises(ValueError, match="rope_scaling type 'weird'"):
    RopeConfig.from_hf({"rope_scaling": {"type": "weird"}}, head_dim=8)
  with pytest.raises(ValueError, match="short_factor needs 4"):
    RopeConfig(kind="longrope", rotary_dim=8, short_factor=(1.0,),
               long_factor=(1.0,) * 4)
  with pytest.raises(ValueError, match="rotary_dim"):
    RopeConfig(rotary_dim=7)
  with pytest.raises(ValueError, match="original_max_position_embeddings"):
    RopeConfig(kind="llama3", rotary_dim=8, factor=8.0)
