"""The layer-by-layer prefill (models/layerwise.py) against `forward`, its
step sharing, CausalLM's choice between the two, and the donated cache."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from minference_jax import AShape, PatternConfig, make_attention
from minference_jax.parallel import UlyssesAttention
from models import (
    CausalLM,
    LayerAttentions,
    LayerwisePrefill,
    MeshConfig,
    ModelConfig,
    attention_layer_key,
    forward_jit,
    random_params,
)
from models.layers import DenseAttention

SEED = 0
B, T = 2, 12


def _model(arch: str = "llama", layers: int = 2, **kw) -> CausalLM:
  config = ModelConfig.tiny(arch, num_layers=layers)
  params = random_params(config, jax.random.key(SEED), jnp.float32, std=0.2)
  return CausalLM(config, params, **kw)


def _tokens(b: int = B, t: int = T, seed: int = SEED) -> jax.Array:
  rng = np.random.default_rng(seed)
  return jnp.asarray(rng.integers(0, 96, (b, t)), jnp.int32)


def test_layerwise_prefill_equals_forward_with_and_without_cache():
  # qwen2: q/k/v biases and tied embeddings; 12 tokens in chunks of 5: two
  # chunks and a shorter rest.
  model = _model("qwen2", chunk_size=5)
  tokens = _tokens()
  want, want_cache = forward_jit(
      model.params, tokens, None, model.init_cache(B, 16), None,
      config=model.config, attention=model.attention, logits_for="all",
      chunk_size=5)
  got, cache = model.prefill(tokens, cache=model.init_cache(B, 16),
                             logits_for="all")
  np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6,
                             err_msg=f"seed {SEED}")
  assert int(cache.length) == T
  for a, b in zip(cache.k + cache.v, want_cache.k + want_cache.v):
    np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-6)
  last, none = model.prefill(tokens)
  assert none is None
  np.testing.assert_allclose(last, want[:, -1], rtol=1e-6, atol=1e-6)
  some, _ = model.prefill(tokens, logits_for=[0, 7])
  np.testing.assert_allclose(some, want[:, [0, 7]], rtol=1e-6, atol=1e-6)


def test_chunked_prefill_steps_layer_by_layer_equal_one_forward():
  model = _model()
  tokens = _tokens(seed=1)
  full, _ = model(tokens, logits_for="all")
  cache = model.init_cache(B, T)
  first, cache = model.prefill(tokens[:, :7], cache=cache, logits_for="all",
                               rope_seq_len=T)
  second, cache = model.prefill(tokens[:, 7:], cache=cache, q_offset=7,
                                logits_for="all", rope_seq_len=T)
  np.testing.assert_allclose(jnp.concatenate([first, second], axis=1), full,
                             rtol=1e-5, atol=1e-5, err_msg=f"seed {SEED}")
  with pytest.raises(ValueError, match="static int q_offset"):
    model.prefill(tokens[:, :1], cache=cache, q_offset=None)


def test_causal_lm_runs_long_prompts_layer_by_layer(monkeypatch):
  calls = []
  real = LayerwisePrefill.__call__

  def spy(self, *args, **kwargs):
    calls.append(args[1].shape)
    return real(self, *args, **kwargs)

  monkeypatch.setattr(LayerwisePrefill, "__call__", spy)
  model = _model(layerwise_from=8)
  tokens = _tokens()
  long_, _ = model(tokens, logits_for="all")  # 12 >= 8: layer by layer
  short, _ = model(tokens[:, :6], logits_for="all")  # forward
  assert calls == [(B, T)]
  whole, _ = dataclasses.replace(model, layerwise_from=None)(
      tokens, logits_for="all")
  assert calls == [(B, T)]
  np.testing.assert_allclose(long_, whole, rtol=1e-6, atol=1e-6)
  np.testing.assert_allclose(short, whole[:, :6], rtol=1e-5, atol=1e-5)
  with pytest.raises(ValueError, match="layerwise_from"):
    _model(layerwise_from=-1)


def test_a_given_cache_is_donated():
  model = _model()
  cache = model.init_cache(B, T)
  _, new = model(_tokens(), cache=cache)  # forward_jit
  assert cache.k[0].is_deleted() and not new.k[0].is_deleted()
  again = model.init_cache(B, T)
  _, new = model.prefill(_tokens(), cache=again)
  assert again.v[1].is_deleted() and not new.v[1].is_deleted()


def _ashape_config(*layers) -> PatternConfig:
  return PatternConfig(layers=tuple((p,) * 4 for p in layers))


def test_layers_share_a_step_when_their_attention_calls_are_equal():
  config = ModelConfig.tiny("llama", num_layers=3)
  narrow, wide = AShape(1, 4), AShape(2, 8)
  minf = make_attention(_ashape_config(narrow, wide, narrow), backend="xla")
  mesh = MeshConfig().make_mesh(jax.devices()[:1])
  cases = {
      DenseAttention(): (0, 0, 0),
      make_attention(None, backend="dense"): (0, 0, 0),
      minf: (0, 1, 0),
      UlyssesAttention(minf, mesh): (0, 1, 0),
      lambda q, k, v, *, layer_idx, q_offset=0: q: (0, 1, 2),  # unknown
  }
  for attention, want in cases.items():
    got = LayerwisePrefill(config, attention).step_layers()
    assert got == want, (attention, got)
  assert attention_layer_key(minf, 1, 4) == ("patterns", (wide,) * 4)

  @dataclasses.dataclass(frozen=True)
  class Keyed(DenseAttention):
    def layer_key(self, layer_idx):
      return layer_idx % 2

  assert LayerwisePrefill(config, Keyed()).step_layers() == (0, 1, 0)
  assert LayerwisePrefill(config, minf).num_steps() == 2
  # Layers that fall back to dense at a call's length share one step.
  late = dataclasses.replace(minf, dense_threshold=100)
  run = LayerwisePrefill(config, late)
  assert run.step_layers(128) == (0, 1, 0)
  assert run.step_layers(64) == (0, 0, 0)  # below the threshold
  assert run.step_layers(128, q_offset=5) == (0, 0, 0)  # a chunked step


def test_a_pattern_config_runs_layer_by_layer_as_forward():
  # Layers 0 and 2 share a step that calls the attention with layer 0;
  # their patterns are equal, so the logits are forward's.
  model = _model(layers=3, attention=make_attention(
      _ashape_config(AShape(1, 4), AShape(2, 8), AShape(1, 4)),
      backend="xla"))
  tokens = _tokens(t=64)
  want, _ = model(tokens, logits_for="all")
  got, _ = model.prefill(tokens, logits_for="all")
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5,
                             err_msg=f"seed {SEED}")
  dense, _ = dataclasses.replace(model, attention=DenseAttention())(
      tokens, logits_for="all")
  assert np.abs(np.asarray(dense) - np.asarray(want)).max() > 1e-3


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class ScaledAttention:
  """Dense attention times a per-layer array (a pytree attention)."""

  scale: jax.Array

  def layer_key(self, layer_idx):
    del layer_idx
    return ()

  def __call__(self, q, k, v, *, layer_idx, q_offset=0):
    o = DenseAttention()(q, k, v, layer_idx=layer_idx, q_offset=q_offset)
    return o * self.scale


def test_per_layer_arrays_are_traced_step_arguments_of_one_step():
  scales = (0.5, 2.0)
  attention = LayerAttentions(tuple(
      ScaledAttention(jnp.asarray(s, jnp.float32)) for s in scales))
  model = _model(attention=attention)
  prefill = model.layerwise
  assert prefill.step_layers() == (0, 0)  # one program, two arrays
  tokens = _tokens()
  compiled = prefill.compile(model.params, tokens, logits_for="all")
  assert compiled.executables == 3  # embed, the layer step, logits
  assert set(compiled.memory) == {"embed", "layer_0", "logits"}
  got, _ = compiled(model.params, tokens)
  want, _ = forward_jit(model.params, tokens, config=model.config,
                        attention=attention, logits_for="all")
  np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6)
  same, _ = model.prefill(tokens, logits_for="all")
  np.testing.assert_allclose(same, got, rtol=1e-6, atol=1e-6)
