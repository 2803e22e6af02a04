"""Safetensors loading and errors, orbax round trip, greedy generation."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from safetensors.numpy import save_file

from models.checkpoint import restore_params, save_params
from models.config import ModelConfig
from models.generate import generate_greedy
from models.llama import CausalLM
from models.safetensors_io import load_safetensors, open_state_dict
from models.weights import params_to_state_dict, random_params


def _write_checkpoint(folder, arch="phi3", shards=1, dtype=jnp.bfloat16):
  """Random params -> HF-named tensors -> safetensors file(s) + config.json."""
  config = ModelConfig.tiny(arch)
  params = random_params(config, jax.random.key(0), dtype)
  sd = params_to_state_dict(config, params)
  folder.mkdir(parents=True, exist_ok=True)
  (folder / "config.json").write_text(json.dumps(config.to_hf_config()))
  names = sorted(sd)
  if shards == 1:
    save_file(sd, str(folder / "model.safetensors"))
  else:
    weight_map = {}
    for s in range(shards):
      shard = f"model-{s + 1:05d}-of-{shards:05d}.safetensors"
      part = names[s::shards]
      save_file({n: sd[n] for n in part}, str(folder / shard))
      weight_map.update({n: shard for n in part})
    (folder / "model.safetensors.index.json").write_text(
        json.dumps({"metadata": {}, "weight_map": weight_map}))
  return config, params


def _assert_same(a, b):
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
    assert x.dtype == y.dtype
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def test_single_file_bfloat16_checkpoint_loads(tmp_path):
  config, params = _write_checkpoint(tmp_path / "ckpt")
  loaded_config, loaded = load_safetensors(tmp_path / "ckpt")
  assert dataclasses_equal(loaded_config, config)
  _assert_same(loaded, params)
  # A file path works too (config.json beside it).
  _, again = load_safetensors(tmp_path / "ckpt" / "model.safetensors")
  _assert_same(again, params)


def dataclasses_equal(a: ModelConfig, b: ModelConfig) -> bool:
  import dataclasses
  return dataclasses.replace(a, name="") == dataclasses.replace(b, name="")


def test_sharded_checkpoint_loads_through_the_index(tmp_path):
  config, params = _write_checkpoint(tmp_path / "ckpt", arch="chatglm",
                                     shards=3, dtype=jnp.float32)
  loaded_config, loaded = load_safetensors(tmp_path / "ckpt", jnp.float32)
  assert dataclasses_equal(loaded_config, config)
  _assert_same(loaded, params)
  with open_state_dict(tmp_path / "ckpt") as sd:
    assert len({sd.file_of(n).name for n in sd}) == 3


def test_missing_shard_is_named(tmp_path):
  _write_checkpoint(tmp_path / "ckpt", shards=2)
  (tmp_path / "ckpt" / "model-00002-of-00002.safetensors").unlink()
  with pytest.raises(FileNotFoundError, match="model-00002-of-00002"):
    load_safetensors(tmp_path / "ckpt")


def test_index_pointing_at_the_wrong_shard_is_an_error(tmp_path):
  _write_checkpoint(tmp_path / "ckpt", shards=2)
  index = tmp_path / "ckpt" / "model.safetensors.index.json"
  data = json.loads(index.read_text())
  name = sorted(data["weight_map"])[0]
  other = {v for v in data["weight_map"].values()
           if v != data["weight_map"][name]}.pop()
  data["weight_map"][name] = other
  index.write_text(json.dumps(data))
  with pytest.raises(ValueError, match="does not contain it"):
    load_safetensors(tmp_path / "ckpt")


def test_truncated_and_corrupt_files_are_reported(tmp_path):
  _write_checkpoint(tmp_path / "ckpt")
  path = tmp_path / "ckpt" / "model.safetensors"
  data = path.read_bytes()
  path.write_bytes(data[:-100])
  with pytest.raises(ValueError, match="model.safetensors: corrupt or "
                     "truncated"):
    load_safetensors(tmp_path / "ckpt")
  path.write_bytes(b"not a safetensors file at all")
  with pytest.raises(ValueError, match="corrupt or truncated"):
    load_safetensors(tmp_path / "ckpt")


def test_missing_checkpoint_or_config(tmp_path):
  with pytest.raises(FileNotFoundError, match="checkpoint not found"):
    open_state_dict(tmp_path / "nothing")
  (tmp_path / "empty").mkdir()
  with pytest.raises(FileNotFoundError, match="no config.json"):
    load_safetensors(tmp_path / "empty")
  (tmp_path / "empty" / "config.json").write_text(
      json.dumps(ModelConfig.tiny().to_hf_config()))
  with pytest.raises(FileNotFoundError, match=r"no \*\.safetensors"):
    load_safetensors(tmp_path / "empty")


def test_orbax_round_trip(tmp_path):
  config = ModelConfig.tiny("qwen2")
  params = random_params(config, jax.random.key(1), jnp.bfloat16)
  save_params(tmp_path / "orbax", config, params)
  with pytest.raises(FileExistsError):
    save_params(tmp_path / "orbax", config, params)
  got_config, got = restore_params(tmp_path / "orbax")
  assert got_config == config
  _assert_same(got, params)
  with pytest.raises(ValueError, match="do not match"):
    save_params(tmp_path / "other", ModelConfig.tiny("llama"), params)


def test_greedy_generation_is_argmax_of_its_own_prefix_and_stops_on_eos():
  config = ModelConfig.tiny("llama")
  params = random_params(config, jax.random.key(2), jnp.float32, std=0.2)
  model = CausalLM(config, params)
  prompt = np.random.default_rng(0).integers(3, 96, (2, 5)).astype(np.int32)
  events = []
  result = generate_greedy(model, prompt, max_new_tokens=4, eos_ids=(),
                           prefill_chunk=3,
                           progress=lambda *e: events.append(e))
  assert result.tokens.shape == (2, 4)
  assert list(result.lengths) == [4, 4] and not result.stopped_on_eos.any()
  # Greedy: each new token is the argmax of the full-prefill logits of the
  # sequence before it.
  seq = np.concatenate([prompt, result.tokens[:, :3]], axis=1)  # [2, 8]
  logits, _ = model(jnp.asarray(seq), logits_for="all")
  np.testing.assert_array_equal(
      np.asarray(jnp.argmax(logits[:, 4:], axis=-1)), result.tokens)
  assert events[:2] == [("prefill", 3, 5), ("prefill", 5, 5)]
  assert events[-1] == ("decode", 4, 4)
  # Make row 0's second token an EOS: row 0 stops and is padded with it.
  eos = int(result.tokens[0, 1])
  stopped = generate_greedy(model, prompt, max_new_tokens=4, eos_ids=(eos,),
                            prefill_chunk=3)
  assert stopped.stopped_on_eos[0] and stopped.lengths[0] == 2
  n = stopped.tokens.shape[1]
  np.testing.assert_array_equal(stopped.tokens[0],
                                [result.tokens[0, 0], eos, eos, eos][:n])
  row1_eos = np.flatnonzero(result.tokens[1] == eos)
  want1 = 4 if row1_eos.size == 0 else row1_eos[0] + 1
  assert stopped.lengths[1] == want1
  np.testing.assert_array_equal(stopped.tokens[1, :want1],
                                result.tokens[1, :want1])
  with pytest.raises(ValueError, match="max_new_tokens"):
    generate_greedy(model, prompt, max_new_tokens=0)
  with pytest.raises(ValueError, match="prompt must be"):
    generate_greedy(model, prompt[0], max_new_tokens=2)


def test_load_model_places_the_weights_on_the_given_mesh(tmp_path):
  from tokenizers import Tokenizer as Backend
  from tokenizers.models import WordLevel

  from models import MeshConfig, load_model, param_shardings

  folder = tmp_path / "ckpt"
  config, params = _write_checkpoint(folder, arch="qwen2")
  Backend(WordLevel({"a": 0, "[UNK]": 1}, unk_token="[UNK]")).save(
      str(folder / "tokenizer.json"))
  plain = load_model(folder, "bfloat16")
  assert plain.partitioning is None
  placed = load_model(folder, "bfloat16", MeshConfig())  # one device
  assert placed.partitioning is not None
  want = param_shardings(config, placed.partitioning)
  for got, sharding in zip(jax.tree.leaves(placed.params),
                           jax.tree.leaves(want), strict=True):
    assert got.sharding.is_equivalent_to(sharding, got.ndim)
  _assert_same(placed.params, params)
  with pytest.raises(ValueError, match="num_heads=4 is not divisible"):
    load_model(folder, "bfloat16", MeshConfig(sequence=8))
