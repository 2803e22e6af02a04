"""A model run through the MInference seam: a pattern that selects every causal
key gives the dense logits, and a real sparse pattern really changes them."""

import jax
import jax.numpy as jnp
import numpy as np

from minference_jax import AShape, PatternConfig, VerticalSlash
from minference_jax.attention import make_attention
from models import CausalLM, random_params
from models.config import ModelConfig


def _logits(config, params, attention, tokens):
  model = CausalLM(config, params, attention=attention)
  logits, _ = model(tokens, logits_for="all")
  return np.asarray(logits)


def test_select_everything_patterns_match_dense_model_logits():
  config = ModelConfig.tiny("llama")
  params = random_params(config, jax.random.key(1), jnp.float32, std=0.2)
  t = 150
  tokens = jax.random.randint(jax.random.key(2), (1, t), 0, config.vocab_size)
  dense = _logits(config, params, make_attention(None, backend="dense"),
                  tokens)
  # A-shape with a window longer than T and VS with budgets >= T (clamped to
  # T) select every causal key; a per-head mix exercises the dispatch.
  heads = config.num_heads
  layer = tuple(AShape(0, t) if h % 2 else VerticalSlash(t, t)
                for h in range(heads))
  everything = PatternConfig(layers=(layer,) * config.num_layers)
  sparse = _logits(config, params, make_attention(everything, backend="xla"),
                   tokens)
  np.testing.assert_allclose(sparse, dense, atol=2e-4, rtol=2e-4)

  narrow = PatternConfig.uniform(AShape(1, 8), config.num_layers, heads)
  changed = _logits(config, params, make_attention(narrow, backend="xla"),
                    tokens)
  assert np.abs(changed - dense).max() > 1e-3
