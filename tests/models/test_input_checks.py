"""Models refuse what they cannot serve, before any work: an attention of
another geometry, token ids outside the vocabulary; the loaders load the
dtype asked for and name the files they cannot read."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from tiny_checkpoint import write_tiny_checkpoint

from minference_jax import PatternConfig, VerticalSlash, make_attention
from models import CausalLM, ModelConfig, forward, random_params
from models.loading import load_model, load_tokenizer, read_model_config
from models.safetensors_io import read_hf_config

CONFIG = ModelConfig.tiny("llama")  # 2 layers, 4 query heads


def test_attention_of_another_geometry_is_refused_up_front():
  params = random_params(CONFIG, jax.random.key(0), jnp.float32)
  wrong = make_attention(
      PatternConfig.uniform(VerticalSlash(30, 60), 3, 4), "xla")
  with pytest.raises(ValueError, match="the pattern config has 3 layers x 4"
                     " heads but the model has 2 layers x 4 query heads"):
    CausalLM(CONFIG, params, attention=wrong)
  with pytest.raises(ValueError, match="has 3 layers x 4 heads"):
    forward(params, jnp.zeros((1, 8), jnp.int32), config=CONFIG,
            attention=wrong)
  fits = make_attention(
      PatternConfig.uniform(VerticalSlash(30, 60), 2, 4), "xla")
  CausalLM(CONFIG, params, attention=fits)


def test_token_ids_outside_the_vocabulary_are_refused():
  model = CausalLM(CONFIG, random_params(CONFIG, jax.random.key(0),
                                         jnp.float32))
  with pytest.raises(ValueError, match=r"tokens must be ids in \[0, 96\)"
                     r" \(the vocabulary\), got ids in \[0, 96\]"):
    model(np.asarray([[0, 5, 96]]))
  with pytest.raises(ValueError, match=r"got ids in \[-1, 5\]"):
    model(np.asarray([[-1, 5]]))


def test_safetensors_checkpoint_loads_the_dtype_asked_for(tmp_path):
  """A bfloat16 checkpoint loads as float32 when asked (what `generate
  dtype=float32` asks), and its geometry and tokenizer read alone."""
  config = write_tiny_checkpoint(tmp_path / "ckpt")
  loaded = load_model(tmp_path / "ckpt", "float32")
  dtypes = {x.dtype for x in jax.tree.leaves(loaded.params)}
  assert dtypes == {jnp.dtype(jnp.float32)}
  assert {x.dtype for x in jax.tree.leaves(
      load_model(tmp_path / "ckpt", "bfloat16").params)} == {
          jnp.dtype(jnp.bfloat16)}
  assert read_model_config(tmp_path / "ckpt").num_layers == config.num_layers
  assert load_tokenizer(tmp_path / "ckpt").encode("where is the key") == [
      3, 4, 5, 6]


def test_loader_errors_name_the_file(tmp_path):
  write_tiny_checkpoint(tmp_path / "ckpt")
  (tmp_path / "ckpt" / "tokenizer.json").unlink()
  with pytest.raises(FileNotFoundError) as e:
    load_tokenizer(tmp_path / "ckpt")
  assert e.value.filename == str(tmp_path / "ckpt" / "tokenizer.json")
  (tmp_path / "ckpt" / "config.json").write_text("{not json")
  with pytest.raises(ValueError, match=f"{tmp_path / 'ckpt'}/config.json is"
                     " not valid JSON"):
    read_hf_config(tmp_path / "ckpt")
