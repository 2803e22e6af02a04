"""Our f32 logits vs transformers' on tiny random checkpoints (fixtures)."""

# Tolerance: |ours - transformers| <= 1e-4 + 1e-5 * |transformers| per logit
# (np.testing.assert_allclose atol/rtol), all positions, batch of 2.

import json
from pathlib import Path

import jax.numpy as jnp
import numpy as np
import pytest
import safetensors.numpy

from attention_reference import reference_attention
from models.config import ModelConfig
from models.llama import CausalLM
from models.safetensors_io import load_safetensors
from models.weights import params_from_state_dict
from paths import FIXTURES_DIR

TINY = FIXTURES_DIR / "tiny_models"
ATOL, RTOL = 1e-4, 1e-5
# checkpoint -> expected-logits file (chatglm = glm's weights renamed/fused)
CASES = {
  "llama": "llama",
  "qwen2": "qwen2",
  "phi3": "phi3",
  "glm": "glm",
  "chatglm": "glm",
}


def _expected(name: str) -> dict[str, np.ndarray]:
  path = TINY / f"{CASES[name]}.expected.safetensors"
  return safetensors.numpy.load_file(str(path))


def _runs(expected: dict[str, np.ndarray]) -> list[str]:
  return sorted(k[len("tokens") :] for k in expected if k.startswith("tokens"))


@pytest.mark.parametrize("name", sorted(CASES))
def test_logits_match_transformers(name):
  ckpt = TINY / name
  config, params = load_safetensors(ckpt, dtype=jnp.float32)
  assert config == ModelConfig.from_hf_config(
    json.loads((ckpt / "config.json").read_text())
  )
  model = CausalLM(config, params, attention=reference_attention)
  expected = _expected(name)
  for run in _runs(expected):  # phi3: "_short" (T=32) and "_long" (T=40)
    tokens = expected["tokens" + run]
    want = expected["logits" + run]
    got, cache = model(jnp.asarray(tokens), logits_for="all")
    assert cache is None
    got = np.asarray(got, np.float32)
    assert got.shape == want.shape, (name, run)
    np.testing.assert_allclose(
      got, want, atol=ATOL, rtol=RTOL, err_msg=f"{name}{run}"
    )


def test_phi3_fixture_uses_both_longrope_factor_sets():
  cfg = json.loads((TINY / "phi3" / "config.json").read_text())
  original = cfg["original_max_position_embeddings"]
  expected = _expected("phi3")
  assert expected["tokens_short"].shape[1] <= original
  assert expected["tokens_long"].shape[1] > original
  assert (
    cfg["rope_scaling"]["short_factor"] != cfg["rope_scaling"]["long_factor"]
  )


def test_llama_fixture_is_sharded():
  index = json.loads(
    (TINY / "llama" / "model.safetensors.index.json").read_text()
  )
  assert len(set(index["weight_map"].values())) > 1


@pytest.mark.parametrize("name", ["llama", "qwen2", "phi3", "glm"])
def test_transformers5_config_form_parses_the_same(name):
  # transformers >= 5 writes rope_parameters instead of rope_theta and
  # rope_scaling; both forms describe the same model.
  ckpt = TINY / name
  classic = json.loads((ckpt / "config.json").read_text())
  v5 = json.loads((ckpt / "config.transformers5.json").read_text())
  assert ModelConfig.from_hf_config(v5) == ModelConfig.from_hf_config(classic)


def test_params_from_numpy_state_dict_glm_f32():
  # The same path by hand: our own reading of the file + the mapping table.
  ckpt = TINY / "glm"
  config = ModelConfig.from_hf_config(
    json.loads((ckpt / "config.json").read_text())
  )
  state = safetensors.numpy.load_file(str(ckpt / "model.safetensors"))
  params = params_from_state_dict(config, state, dtype=jnp.float32)
  model = CausalLM(config, params, attention=reference_attention)
  expected = _expected("glm")
  got, _ = model(jnp.asarray(expected["tokens"]), logits_for="all")
  np.testing.assert_allclose(
    np.asarray(got), expected["logits"], atol=ATOL, rtol=RTOL
  )
