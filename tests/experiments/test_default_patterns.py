"""The demo and `generate` run SmolLM2's searched pattern config by default
(configs/patterns/smollm2-135m-instruct.json), and say what they run
otherwise."""

import pytest

from experiments import demo
from experiments import generate as gen
from experiments.config import ConfigError
from experiments.search_report import pattern_label
from minference_jax import PatternConfig, VerticalSlash
from minference_jax.patterns import AShape, BlockSparse, Dense
from models import ModelConfig

SMOL = ModelConfig.smollm2_135m()


def test_demo_default_is_the_searched_config():
  patterns = demo.sparse_patterns(demo.DemoConfig(), SMOL)
  assert (patterns.num_layers, patterns.num_heads) == (30, 9)
  kinds = {type(p) for row in patterns.layers for p in row}
  assert len(kinds) > 1  # a per-head mix, not one pattern everywhere
  assert patterns == PatternConfig.load_json(
      "configs/patterns/smollm2-135m-instruct.json")


def test_demo_vertical_slash_and_files(tmp_path, capsys):
  cfg = demo.DemoConfig(patterns="vertical_slash", n_vertical=7, n_slash=9)
  assert demo.sparse_patterns(cfg, SMOL) == PatternConfig.uniform(
      VerticalSlash(7, 9), 30, 9)
  other = tmp_path / "two_layers.json"
  PatternConfig.uniform(VerticalSlash(30, 60), 2, 9).save_json(other)
  with pytest.raises(ConfigError, match="has 2 layers; the model has 30"):
    demo.sparse_patterns(demo.DemoConfig(patterns=str(other)), SMOL)
  absent = str(tmp_path / "absent.json")
  with pytest.raises(ConfigError, match="absent.json does not exist"):
    demo.sparse_patterns(demo.DemoConfig(patterns=absent), SMOL)
  capsys.readouterr()
  demo.sparse_patterns(demo.DemoConfig(n_slash=500), SMOL)
  assert "n_slash=500 are ignored" in capsys.readouterr().err


def test_pattern_labels_name_kind_and_budget():
  assert [pattern_label(p) for p in (
      VerticalSlash(10, 20), AShape(4, 60), BlockSparse(3), Dense())] == [
          "vertical_slash 10/20", "a_shape 4+60", "block_sparse k3", "dense"]


def test_generate_default_is_the_searched_config_for_smollm2():
  cfg = gen.GenerateConfig(prompt="hi")
  assert cfg.patterns == "searched" and cfg.pattern_file is None
  assert gen.read_patterns(cfg, SMOL) == demo.sparse_patterns(
      demo.DemoConfig(), SMOL)
  # Another model has no committed config: every head dense.
  assert gen.read_patterns(gen.GenerateConfig(prompt="hi", model="x.gguf"),
                           ModelConfig.tiny()) is None
  assert gen.read_patterns(gen.GenerateConfig(prompt="hi",
                                              patterns="dense"), SMOL) is None
  # The bundled model's searched config on another geometry is refused.
  with pytest.raises(ConfigError, match="patterns=searched"):
    gen.read_patterns(cfg, ModelConfig.tiny())
