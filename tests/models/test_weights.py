"""HF name-mapping tables: fused splits, round trips, error messages."""

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
import pytest

from models.config import ModelConfig
from models.weights import (
    expected_tensors,
    param_shapes,
    params_from_state_dict,
    params_to_state_dict,
)

ARCHS = ("llama", "qwen2", "phi3", "glm", "chatglm")


def _random_state_dict(config: ModelConfig, seed: int = 0):
  rng = np.random.default_rng(seed)
  return {name: rng.standard_normal(shape).astype(np.float32)
          for name, shape in expected_tensors(config).items()}


@pytest.mark.parametrize("arch", ARCHS)
def test_state_dict_round_trip_and_shapes(arch):
  config = ModelConfig.tiny(arch)
  sd = _random_state_dict(config)
  params = params_from_state_dict(config, sd, jnp.float32)
  got = jax.tree.map(lambda x: (x.shape, x.dtype), params)
  want = jax.tree.map(lambda s: (s.shape, s.dtype),
                      param_shapes(config, jnp.float32))
  assert got == want
  back = params_to_state_dict(config, params)
  assert set(back) == set(sd)
  for name, value in sd.items():
    np.testing.assert_array_equal(back[name], value, err_msg=name)


def test_llama_tensors_are_transposed_into_in_out_layout():
  config = ModelConfig.tiny("llama")
  sd = _random_state_dict(config, seed=1)
  params = params_from_state_dict(config, sd, jnp.float32)
  layer = params["layers"][1]
  np.testing.assert_array_equal(
      layer["wq"], sd["model.layers.1.self_attn.q_proj.weight"].T)
  np.testing.assert_array_equal(
      layer["w_down"], sd["model.layers.1.mlp.down_proj.weight"].T)
  np.testing.assert_array_equal(params["lm_head"], sd["lm_head.weight"].T)
  assert "bq" not in layer  # LLaMA has no attention bias by default


def test_phi3_fused_qkv_and_gate_up_split_by_rows():
  config = ModelConfig.tiny("phi3")
  sd = _random_state_dict(config, seed=2)
  params = params_from_state_dict(config, sd, jnp.float32)
  qkv = sd["model.layers.0.self_attn.qkv_proj.weight"]
  qd, kd = config.q_dim, config.kv_dim
  layer = params["layers"][0]
  np.testing.assert_array_equal(layer["wq"], qkv[:qd].T)
  np.testing.assert_array_equal(layer["wk"], qkv[qd:qd + kd].T)
  np.testing.assert_array_equal(layer["wv"], qkv[qd + kd:].T)
  gate_up = sd["model.layers.0.mlp.gate_up_proj.weight"]
  m = config.intermediate_size
  np.testing.assert_array_equal(layer["w_gate"], gate_up[:m].T)
  np.testing.assert_array_equal(layer["w_up"], gate_up[m:].T)


def test_chatglm_original_names_split_query_key_value_and_swiglu():
  config = ModelConfig.tiny("chatglm")
  sd = _random_state_dict(config, seed=3)
  params = params_from_state_dict(config, sd, jnp.float32)
  prefix = "transformer.encoder.layers.1"
  qkv_b = sd[f"{prefix}.self_attention.query_key_value.bias"]
  qd = config.q_dim
  layer = params["layers"][1]
  np.testing.assert_array_equal(layer["bq"], qkv_b[:qd])
  np.testing.assert_array_equal(layer["bv"], qkv_b[qd + config.kv_dim:])
  h_to_4h = sd[f"{prefix}.mlp.dense_h_to_4h.weight"]
  m = config.intermediate_size
  np.testing.assert_array_equal(layer["w_gate"], h_to_4h[:m].T)
  np.testing.assert_array_equal(layer["w_up"], h_to_4h[m:].T)
  np.testing.assert_array_equal(
      params["embed"], sd["transformer.embedding.word_embeddings.weight"])
  np.testing.assert_array_equal(
      params["lm_head"], sd["transformer.output_layer.weight"].T)


def test_tied_embeddings_have_no_lm_head_and_ignore_a_stored_one():
  config = ModelConfig.tiny("qwen2")
  assert config.tie_word_embeddings
  sd = _random_state_dict(config, seed=4)
  assert "lm_head.weight" not in sd
  sd["lm_head.weight"] = sd["model.embed_tokens.weight"].copy()
  sd["model.rotary_emb.inv_freq"] = np.ones(4, np.float32)
  params = params_from_state_dict(config, sd, jnp.float32)
  assert "lm_head" not in params


def test_conversion_casts_each_tensor_to_bfloat16():
  config = ModelConfig.tiny("glm")
  sd = _random_state_dict(config, seed=5)
  sd = {k: v.astype(ml_dtypes.bfloat16) for k, v in sd.items()}
  params = params_from_state_dict(config, sd)  # default dtype bfloat16
  assert {x.dtype for x in jax.tree.leaves(params)} == {jnp.dtype("bfloat16")}
  np.testing.assert_array_equal(
      np.asarray(params["layers"][0]["wk"]),
      sd["model.layers.0.self_attn.k_proj.weight"].T)


def test_missing_tensor_is_named():
  config = ModelConfig.tiny("llama")
  sd = _random_state_dict(config)
  del sd["model.layers.1.mlp.up_proj.weight"]
  with pytest.raises(ValueError, match=r"lacks 1 tensor.*"
                     r"'model\.layers\.1\.mlp\.up_proj\.weight'"):
    params_from_state_dict(config, sd)


def test_wrong_shape_is_named_with_both_shapes():
  config = ModelConfig.tiny("phi3")
  sd = _random_state_dict(config)
  name = "model.layers.0.self_attn.qkv_proj.weight"
  sd[name] = np.zeros((10, 64), np.float32)
  with pytest.raises(ValueError, match=r"qkv_proj\.weight' has shape "
                     r"\(10, 64\), expected \(128, 64\)"):
    params_from_state_dict(config, sd)


def test_unexpected_tensor_rejected_unless_not_strict():
  config = ModelConfig.tiny("llama")
  sd = _random_state_dict(config)
  sd["model.layers.0.self_attn.q_norm.weight"] = np.ones(16, np.float32)
  with pytest.raises(ValueError, match="does not use.*q_norm"):
    params_from_state_dict(config, sd)
  params = params_from_state_dict(config, sd, strict=False)
  assert "q_norm" not in params["layers"][0]


def test_unknown_architecture_is_rejected():
  with pytest.raises(ValueError, match="unknown architecture.*mistral"):
    ModelConfig.from_hf_config({"model_type": "mistral",
                                "architectures": ["MistralForCausalLM"]})
  with pytest.raises(ValueError, match="arch 'gpt2' is not one of"):
    ModelConfig.tiny("gpt2")


def test_random_params_on_the_device_draw_each_parameter_in_its_dtype():
  # Drawn on the device straight into their shards (a one-device mesh
  # here; on_device=True is the same draw without a placement).
  from models import MeshConfig, param_shardings, random_params

  config = ModelConfig.tiny("llama", num_layers=1)
  seed, std = 3, 0.05
  partitioning = MeshConfig().bind(jax.devices()[:1])
  params = random_params(config, seed, jnp.bfloat16, std,
                         partitioning=partitioning)
  leaves = jax.tree_util.tree_flatten_with_path(params)[0]
  shardings = jax.tree.leaves(param_shardings(config, partitioning))
  keys = jax.random.split(jax.random.key(seed), len(leaves))
  draw = jax.jit(lambda key, shape: jax.random.normal(key, shape),
                 static_argnums=1)
  checked = set()
  for key, (path, got), sharding in zip(keys, leaves, shardings,
                                        strict=True):
    name = jax.tree_util.keystr(path)
    assert got.dtype == jnp.bfloat16, name
    assert got.sharding.is_equivalent_to(sharding, got.ndim), name
    if not any(part in name for part in ("embed", "attn_norm", "wq")):
      continue
    checked.add(name)
    offset = 1.0 if "norm" in name else 0.0
    want = (std * np.asarray(draw(key, got.shape)) + offset).astype(
        ml_dtypes.bfloat16)
    np.testing.assert_allclose(np.asarray(got, np.float32),
                               want.astype(np.float32), rtol=1e-2, atol=0,
                               err_msg=f"{name}, seed {seed}")
  assert len(checked) == 3, checked
