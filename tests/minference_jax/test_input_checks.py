"""Inputs the library refuses or warns about, with messages that name the
argument or file, what was expected and what was given."""

import json
import warnings

import jax.numpy as jnp
import numpy as np
import pytest

from minference_jax import (
    AShape,
    PatternConfig,
    VerticalSlash,
    make_attention,
)
from minference_jax.attention_inputs import IgnoredOptionWarning
from minference_jax.index import (
    VerticalSlashIndices,
    vertical_slash_chain_layout,
    vertical_slash_indices,
    vertical_slash_layout,
)
from minference_jax.pattern_config import load_pattern_config


def _vs_config(layers=2, heads=4):
  return PatternConfig.uniform(VerticalSlash(30, 60), layers, heads)


# ----------------------------------------------------------- layouts
def test_layout_refuses_a_seq_len_other_than_the_indices():
  q = jnp.ones((1, 128, 2, 16))
  k = jnp.ones((1, 128, 1, 16))
  indices = vertical_slash_indices(q, k, 30, 60)
  assert indices.seq_len == 128
  for build in (vertical_slash_layout, vertical_slash_chain_layout):
    with pytest.raises(ValueError, match="seq_len=192 does not match the"
                       " indices, which were selected for T=128"):
      build(indices, 192)
  # Hand-made indices carry no seq_len: their largest line bounds it.
  hand = VerticalSlashIndices(
      vertical=jnp.asarray([[[3, 90]]], jnp.int32),
      vertical_count=jnp.asarray([[2]], jnp.int32),
      slash=jnp.asarray([[[70, 0]]], jnp.int32),
      slash_count=jnp.asarray([[2]], jnp.int32))
  with pytest.raises(ValueError, match="seq_len=80 does not match the"
                     " indices: they select vertical line 90, which needs"
                     " T > 90"):
    vertical_slash_layout(hand, 80)
  assert vertical_slash_layout(hand, 91).block_count.shape == (1, 1, 2)


# ---------------------------------------------------- pattern files
def test_pattern_files_name_the_file(tmp_path):
  empty = tmp_path / "empty.json"
  empty.write_text("\n")
  with pytest.raises(ValueError, match=f"pattern config {empty} is empty"):
    PatternConfig.load_json(empty)
  text = tmp_path / "text.json"
  text.write_text("layers: 2")
  with pytest.raises(ValueError, match=f"pattern config {text} is not JSON"):
    PatternConfig.load_minference_json(text)
  wrong = tmp_path / "wrong.json"
  wrong.write_text(json.dumps({"format": "other"}))
  with pytest.raises(ValueError, match=f"pattern config {wrong}: format"
                     " must be"):
    load_pattern_config(wrong)


def test_stray_minference_head_key_is_named(tmp_path):
  layers = [{str(h): ["vertical_and_slash", 1000, 6096, 0.5]
             for h in range(4)} for _ in range(3)]
  layers[1]["4"] = ["stream_llm", 64, 512, 0.1]
  path = tmp_path / "minf.json"
  path.write_text(json.dumps(layers))
  # The head count inferred from the file: the key only one layer has.
  with pytest.raises(ValueError, match="layer 1, head '4': most layers have"
                     " heads 0..3 only"):
    load_pattern_config(path)
  # Read for a model of 4 heads: out of range, named.
  with pytest.raises(ValueError, match="layer 1, head 4: head index out of"
                     " range for num_heads=4"):
    load_pattern_config(path, num_heads=4)
  del layers[1]["4"]
  path.write_text(json.dumps(layers))
  with pytest.raises(ValueError, match=f"pattern config {path} has 3"
                     " layers; the model has 30"):
    load_pattern_config(path, num_layers=30, num_heads=4)
  assert load_pattern_config(path, num_layers=3, num_heads=4).num_heads == 4


def test_attention_refuses_a_config_of_another_model():
  attn = make_attention(_vs_config(layers=32, heads=4), "xla")
  with pytest.raises(ValueError, match="the pattern config has 32 layers x"
                     " 4 heads but the model has 30 layers x 4 query heads"):
    attn.check_model(num_layers=30, num_heads=4)
  attn.check_model(num_layers=32, num_heads=4)
  make_attention(VerticalSlash(), "xla").check_model(num_layers=7,
                                                     num_heads=3)


# ------------------------------------------------- ignored options
@pytest.mark.parametrize("kwargs, message", [
    (dict(pattern_config=_vs_config(), backend="dense"),
     "pattern_config is ignored: backend 'dense' runs every head dense"),
    (dict(backend="xla", implementation="xla"),
     "implementation for ['a_shape', 'vertical_slash', 'block_sparse'] is"
     " ignored: pattern_config is None"),
    (dict(pattern_config=_vs_config(), backend="xla", vs_layout="chain"),
     "vs_layout='chain' is ignored: the Vertical-Slash implementations"
     " include 'xla'"),
    (dict(pattern_config=AShape(), backend="pallas", vs_layout="chain",
          interpret=True),
     "vs_layout='chain' is ignored: the pattern config has no"
     " vertical_slash heads"),
    (dict(pattern_config=_vs_config(), backend="pallas",
          implementation={"block_sparse": "xla"}, interpret=True),
     "implementation['block_sparse'] is ignored: the pattern config has no"
     " block_sparse heads"),
    (dict(backend="dense", interpret=True),
     "interpret=True is ignored: no Pallas kernel runs"),
    (dict(pattern_config=_vs_config(), backend="xla",
          dense_threshold={"a_shape": 8}),
     "dense_threshold['a_shape'] is ignored"),
])
def test_ignored_options_warn(kwargs, message):
  with pytest.warns(IgnoredOptionWarning) as record:
    make_attention(**kwargs)
  assert any(message in str(w.message) for w in record), [
      str(w.message) for w in record]


def test_options_that_take_effect_do_not_warn():
  with warnings.catch_warnings():
    warnings.simplefilter("error", IgnoredOptionWarning)
    make_attention(_vs_config(), "pallas", vs_layout="chain", interpret=True)
    make_attention(_vs_config(), "xla", dense_threshold=64,
                   implementation={"vertical_slash": "xla", "dense": "xla"})
    make_attention(None, "dense")
    make_attention(_vs_config(), "auto", platform="cpu")


def test_builder_budget_errors_name_the_argument():
  q, k = jnp.ones((1, 64, 2, 16)), jnp.ones((1, 64, 1, 16))
  with pytest.raises(ValueError, match=r"n_slash has 3 per-head values;"
                     r" expected one per query head \(N=2\)"):
    vertical_slash_indices(q, k, 30, (50, 50, 50))
  with pytest.raises(ValueError, match="index building needs a full prefill"):
    vertical_slash_indices(q[:, :32], k, 30, 50)
  assert np.asarray(vertical_slash_indices(q, k, 30, 50).slash_count).all()
