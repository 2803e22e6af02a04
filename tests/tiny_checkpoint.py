"""A tiny bfloat16 safetensors checkpoint with a word-level tokenizer: what
the loaders and the commands read, small enough for any test."""

import json
from pathlib import Path

import jax
import jax.numpy as jnp
import tokenizers
from safetensors.numpy import save_file
from tokenizers.models import WordLevel
from tokenizers.pre_tokenizers import Whitespace

from models.config import ModelConfig
from models.weights import params_to_state_dict, random_params

WORDS = ("where", "is", "the", "key", "?", "it", "under", "mat", "a", "of")


def write_tiny_checkpoint(folder: Path, **overrides) -> ModelConfig:
  """config.json, model.safetensors (bfloat16) and tokenizer.json of
  `ModelConfig.tiny("llama", **overrides)` in `folder`; returns the
  config. The tokenizer knows WORDS (ids 3..) and "<unk>" (0); the
  vocabulary is those 13 ids unless overridden."""
  overrides.setdefault("vocab_size", 3 + len(WORDS))
  config = ModelConfig.tiny("llama", **overrides)
  params = random_params(config, jax.random.key(0), jnp.bfloat16, std=0.2)
  folder.mkdir(parents=True, exist_ok=True)
  (folder / "config.json").write_text(json.dumps(config.to_hf_config()))
  save_file(params_to_state_dict(config, params),
            str(folder / "model.safetensors"))
  vocab = {"<unk>": 0, "<s>": 1, "</s>": 2}
  vocab.update({w: i + 3 for i, w in enumerate(WORDS)})
  tok = tokenizers.Tokenizer(WordLevel(vocab, unk_token="<unk>"))
  tok.pre_tokenizer = Whitespace()
  tok.save(str(folder / "tokenizer.json"))
  return config
