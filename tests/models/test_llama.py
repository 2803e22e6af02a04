"""The decoder forward pass: KV-cache decoding, chunking, the attention seam."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from models.config import ModelConfig
from models.layers import DenseAttention, seq_chunked
from models.llama import CausalLM
from models.weights import random_params

ARCHS = ("llama", "qwen2", "phi3", "glm", "chatglm")


def _model(arch: str, seed: int = 0, **kw) -> CausalLM:
  config = ModelConfig.tiny(arch)
  # Large enough weights that every block visibly changes the logits.
  params = random_params(config, jax.random.key(seed), jnp.float32, std=0.2)
  return CausalLM(config, params, **kw)


def _tokens(b: int, t: int, seed: int = 0) -> jnp.ndarray:
  rng = np.random.default_rng(seed)
  return jnp.asarray(rng.integers(0, 96, (b, t)), jnp.int32)


B, T = 2, 12  # one shape everywhere, so jit compilations are shared


@pytest.mark.parametrize("arch", ARCHS)
def test_prefill_logits_and_cache_equal_step_by_step_decoding(arch):
  model = _model(arch)
  tokens = _tokens(B, T, seed=1)  # T > phi3's original length 8 below
  if arch == "phi3":
    rope = dataclasses.replace(model.config.rope,
                               original_max_position_embeddings=8)
    model = dataclasses.replace(
        model, config=dataclasses.replace(model.config, rope=rope))
  # Prefill through the attention callable, writing the cache.
  full, pre_cache = model(tokens, cache=model.init_cache(B, T),
                          logits_for="all")
  assert full.shape == (B, T, 96) and int(pre_cache.length) == T
  # Decode from an empty cache, one token at a time (dense cached path).
  cache = model.init_cache(B, T)
  for i in range(T):
    step, cache = model(tokens[:, i:i + 1], cache=cache, q_offset=None,
                        rope_seq_len=T)
    np.testing.assert_allclose(step, full[:, i], rtol=1e-4, atol=1e-4)
  assert int(cache.length) == T
  for a, b in zip(pre_cache.k + pre_cache.v, cache.k + cache.v):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)
  if arch == "llama":  # without a cache the prefill gives the same logits
    no_cache, none = model(tokens, logits_for="all")
    assert none is None
    np.testing.assert_allclose(no_cache, full, rtol=1e-6, atol=1e-6)


def test_chunked_prefill_with_static_offset_matches_one_shot():
  model = _model("llama")
  tokens = _tokens(B, T, seed=1)
  full, _ = model(tokens, logits_for="all")
  cache = model.init_cache(B, T)
  first, cache = model(tokens[:, :7], cache=cache, logits_for="all",
                       rope_seq_len=T)
  second, cache = model(tokens[:, 7:], cache=cache, logits_for="all",
                        q_offset=7, rope_seq_len=T)
  np.testing.assert_allclose(jnp.concatenate([first, second], axis=1), full,
                             rtol=1e-5, atol=1e-5)


def test_chunked_norms_and_mlp_equal_unchunked():
  tokens = _tokens(B, T, seed=3)
  plain, _ = _model("llama")(tokens, logits_for="all")
  chunked, _ = _model("llama", chunk_size=5)(tokens, logits_for="all")
  np.testing.assert_allclose(chunked, plain, rtol=1e-5, atol=1e-5)


def test_seq_chunked_pads_and_restores_any_length():
  x = jnp.arange(2 * 7 * 3, dtype=jnp.float32).reshape(2, 7, 3)
  y = jnp.ones((2, 7, 1))
  fn = lambda a, b: jnp.tanh(a) * b + a**2
  np.testing.assert_allclose(seq_chunked(fn, 3, x, y), fn(x, y), rtol=1e-6)
  np.testing.assert_allclose(seq_chunked(fn, None, x, y), fn(x, y))


def test_seq_chunked_in_place_writes_over_its_first_input():
  rng = np.random.default_rng(11)
  x = jnp.asarray(rng.standard_normal((2, 23, 3)), jnp.float32)
  o = jnp.asarray(rng.standard_normal((2, 23, 5)), jnp.float32)
  w = jnp.asarray(rng.standard_normal((5, 3)), jnp.float32)
  fn = lambda a, b: a + jnp.tanh(b) @ w  # noqa: E731
  for chunk in (4, 23, None):  # a rest of 3 tokens; one chunk; unchunked
    got = seq_chunked(fn, chunk, x, o, in_place=True)
    np.testing.assert_allclose(got, fn(x, o), rtol=1e-6, atol=1e-6,
                               err_msg=f"chunk {chunk}, seed 11")
  with pytest.raises(ValueError, match="shaped like its first input"):
    seq_chunked(lambda a, b: b, 4, x, o, in_place=True)


def test_chunked_residual_update_adds_no_full_size_buffer():
  # XLA's buffer assignment (CPU): chunking neither copies nor stacks the
  # inputs and outputs; in place, the result reuses the donated x.
  t, h, chunk = 16384, 64, 512
  x = jax.ShapeDtypeStruct((1, t, h), jnp.float32)
  o = jax.ShapeDtypeStruct((1, t, 2 * h), jnp.float32)
  w = jnp.ones((2 * h, h), jnp.float32)
  fn = lambda a, b: a + jax.nn.silu(b) @ w  # noqa: E731
  full = t * h * 4
  for in_place in (True, False):
    step = jax.jit(lambda a, b: seq_chunked(fn, chunk, a, b,
                                            in_place=in_place),
                   donate_argnums=0 if in_place else ())
    m = step.lower(x, o).compile().memory_analysis()
    assert m.temp_size_in_bytes < full // 4, (in_place, m)
    if in_place:
      assert m.alias_size_in_bytes == full, m


class RecordingAttention:
  """Records every call (at trace time under jit), then runs dense."""

  def __init__(self):
    self.calls = []

  def __call__(self, q, k, v, *, layer_idx, q_offset=0):
    self.calls.append((layer_idx, q.shape, k.shape, v.shape, q_offset))
    return DenseAttention()(q, k, v, layer_idx=layer_idx, q_offset=q_offset)


def test_attention_callable_sees_every_layer_with_unrepeated_kv():
  rec = RecordingAttention()
  model = _model("llama", attention=rec)
  logits, _ = model(_tokens(B, T), logits_for="all")
  config = model.config
  assert [c[0] for c in rec.calls] == list(range(config.num_layers))
  for _, qs, ks, vs, off in rec.calls:
    assert qs == (B, T, config.num_heads, config.head_dim)
    assert ks == vs == (B, T, config.num_kv_heads, config.head_dim)
    assert off == 0
  dense, _ = _model("llama")(_tokens(B, T), logits_for="all")
  np.testing.assert_allclose(logits, dense, rtol=1e-5, atol=1e-5)


@dataclasses.dataclass(frozen=True)
class ZeroAttention:
  def __call__(self, q, k, v, *, layer_idx, q_offset=0):
    return jnp.zeros_like(q)


def test_attention_output_really_feeds_the_model():
  tokens = _tokens(B, T, seed=4)
  model = _model("llama")
  zero_attn = dataclasses.replace(model, attention=ZeroAttention())
  # Zero attention output == a model whose output projection is zero.
  params = jax.tree.map(lambda x: x, model.params)
  for layer in params["layers"]:
    layer["wo"] = jnp.zeros_like(layer["wo"])
  no_wo = dataclasses.replace(model, params=params)
  a, _ = zero_attn(tokens, logits_for="all")
  b, _ = no_wo(tokens, logits_for="all")
  c, _ = model(tokens, logits_for="all")
  np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)
  assert float(jnp.max(jnp.abs(a - c))) > 1e-2


def test_logits_for_selects_positions():
  model = _model("llama")
  tokens = _tokens(B, T, seed=5)
  every, _ = model(tokens, logits_for="all")
  last, _ = model(tokens)
  some, _ = model(tokens, logits_for=[0, 4, 11])
  assert last.shape == (B, 96) and some.shape == (B, 3, 96)
  assert last.dtype == jnp.float32
  np.testing.assert_allclose(last, every[:, -1], rtol=1e-6, atol=1e-6)
  np.testing.assert_allclose(some, every[:, [0, 4, 11]], rtol=1e-6,
                             atol=1e-6)


def test_shifting_all_positions_leaves_logits_unchanged():
  # RoPE scores depend on position differences only.
  model = _model("llama")
  tokens = _tokens(B, T, seed=6)
  base, _ = model(tokens, logits_for="all")
  same, _ = model(tokens, positions=jnp.arange(T), logits_for="all")
  shifted, _ = model(tokens, positions=jnp.arange(T) + 11, logits_for="all")
  np.testing.assert_allclose(same, base, rtol=1e-6, atol=1e-6)
  np.testing.assert_allclose(shifted, base, rtol=1e-4, atol=1e-4)


def test_bfloat16_params_give_close_logits():
  model = _model("llama")
  bf16 = dataclasses.replace(
      model, params=jax.tree.map(lambda x: x.astype(jnp.bfloat16),
                                 model.params))
  tokens = _tokens(B, T, seed=7)
  a, _ = model(tokens)
  b, _ = bf16(tokens)
  assert b.dtype == jnp.float32
  np.testing.assert_allclose(b, a, rtol=0.1, atol=0.15)


def test_bad_inputs_raise():
  model = _model("llama")
  with pytest.raises(ValueError, match=r"tokens must be \[B, T\]"):
    model(jnp.zeros((4,), jnp.int32))
  with pytest.raises(ValueError, match="needs a KV cache"):
    model(_tokens(1, 2), q_offset=None)
  with pytest.raises(ValueError, match="without a cache"):
    model(_tokens(1, 2), q_offset=3)
  with pytest.raises(ValueError, match="exceeds the cache"):
    model(_tokens(1, 4), cache=model.init_cache(1, 3))
  with pytest.raises(ValueError, match="positions shape"):
    model(_tokens(1, 4), positions=jnp.zeros((1, 3), jnp.int32))
  with pytest.raises(ValueError, match="logits_for"):
    model(_tokens(1, 4), logits_for="first")
