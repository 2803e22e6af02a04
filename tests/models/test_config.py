"""ModelConfig: config.json round trips, preset facts, memory estimates."""

import dataclasses
import json
from pathlib import Path

import pytest

from models.config import PRESETS, ModelConfig
from models.memory import (
    GIB,
    estimate_prefill_memory,
    memory_table,
    vs_estimate_workspace,
)
from paths import FIXTURES_DIR

FIXTURES = FIXTURES_DIR / "tiny_models"
ARCHS = ("llama", "qwen2", "phi3", "glm", "chatglm")


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_presets_round_trip_through_config_json(name):
  config = ModelConfig.preset(name)
  text = json.dumps(config.to_hf_config())  # JSON-serialisable
  again = ModelConfig.from_hf_config(json.loads(text))
  assert dataclasses.replace(again, name=name) == config
  assert ModelConfig.from_dict(json.loads(json.dumps(config.to_dict()))) \
      == config
  assert getattr(ModelConfig, name)() == config


@pytest.mark.parametrize("arch", ARCHS)
def test_tiny_configs_round_trip(arch):
  config = ModelConfig.tiny(arch)
  again = ModelConfig.from_hf_config(config.to_hf_config())
  assert again == config


def test_presets_state_published_geometry():
  l8 = ModelConfig.llama3_8b()
  # Llama-3-8B: 8.03B parameters; GQA 32/8 heads of 128 -> 128 KiB/token.
  assert abs(l8.num_params() - 8.03e9) < 0.01e9
  assert l8.kv_bytes_per_token() == 2 * 32 * 8 * 128 * 2 == 128 * 1024
  assert ModelConfig.llama3_8b_1048k().rope.theta == 3580165449.0
  assert ModelConfig.llama3_8b_262k().rope.theta == 283461213.0
  l31 = ModelConfig.llama31_8b()
  assert l31.rope.kind == "llama3" and l31.rope.factor == 8.0
  assert abs(ModelConfig.llama3_70b().num_params() - 70.55e9) < 0.1e9
  phi = ModelConfig.phi3_mini_128k()
  assert phi.rope.kind == "longrope" and phi.head_dim == 96
  assert len(phi.rope.long_factor) == 48
  assert abs(phi.num_params() - 3.82e9) < 0.02e9
  glm = ModelConfig.glm4_9b_1m()
  assert glm.arch == "chatglm" and glm.rope.rotary_dim == 64
  assert glm.rope.theta == 1e8 and glm.num_kv_heads == 4
  assert ModelConfig.qwen2_7b().attention_bias
  smol = ModelConfig.smollm2_135m()
  assert smol.tie_word_embeddings and smol.group_size == 3
  assert abs(smol.num_params() - 134.5e6) < 1e6


def test_chatglm_and_glm_naming_describe_the_same_network():
  if not FIXTURES.is_dir():
    pytest.skip("tests/fixtures/tiny_models is absent")
  glm = ModelConfig.from_hf_config(
      json.loads((FIXTURES / "glm" / "config.json").read_text()))
  chatglm = ModelConfig.from_hf_config(
      json.loads((FIXTURES / "chatglm" / "config.json").read_text()))
  same = ("num_layers", "num_heads", "num_kv_heads", "head_dim",
          "hidden_size", "intermediate_size", "attention_bias")
  assert all(getattr(glm, f) == getattr(chatglm, f) for f in same)
  assert glm.rope.theta == chatglm.rope.theta
  assert glm.rope.rotary_dim == chatglm.rope.rotary_dim
  assert glm.rope.interleaved and chatglm.rope.interleaved


def test_config_errors_name_the_problem():
  with pytest.raises(ValueError, match="lacks required key 'hidden_size'"):
    ModelConfig.from_hf_config({"model_type": "llama"})
  with pytest.raises(ValueError, match="num_heads=6 is not a multiple"):
    ModelConfig.tiny(num_heads=6, num_kv_heads=4)
  with pytest.raises(ValueError, match="hidden_act='gelu'"):
    ModelConfig.from_hf_config({**ModelConfig.tiny().to_hf_config(),
                                "hidden_act": "gelu"})
  with pytest.raises(ValueError, match="unknown preset"):
    ModelConfig.preset("llama9_400b")
  with pytest.raises(ValueError, match="unknown ModelConfig fields"):
    ModelConfig.from_dict({**ModelConfig.tiny().to_dict(), "extra": 1})
  with pytest.raises(ValueError, match="LayerNorm"):
    ModelConfig.from_hf_config({**PRESETS["glm4_9b_1m"], "rmsnorm": False})


def test_memory_estimates_for_llama3_8b():
  config = ModelConfig.llama3_8b()
  for t in (131072, 1048576):
    bare = estimate_prefill_memory(config, t)
    cached = estimate_prefill_memory(config, t, keep_kv_cache=True)
    assert bare.weights == 2 * config.num_params()
    assert cached.kv_cache == t * 128 * 1024 and bare.kv_cache == 0
    assert cached.total - bare.total == cached.kv_cache
    # The residual stream alone is T * H * 2 bytes; activations exceed it.
    assert bare.activations > t * config.hidden_size * 2
    assert bare.attention_workspace == vs_estimate_workspace(config, t)
  small = estimate_prefill_memory(config, 131072)
  big = estimate_prefill_memory(config, 1048576)
  assert big.activations > 7 * small.activations
  unchunked = estimate_prefill_memory(config, 131072, chunk_size=None,
                                      attention_workspace=0)
  chunked = estimate_prefill_memory(config, 131072, attention_workspace=0)
  assert unchunked.activations > chunked.activations
  table = memory_table(config, [131072, 1048576])
  assert table.count("\n") == 5 and "1,048,576" in table
  assert f"{cached.kv_cache / GIB:.1f}" in table
