"""What the commands refuse (one `error:` line, exit 2) or warn about (one
`warning:` line) before any slow work: prompts past the model's context,
pattern configs of another model, options that have no effect, files that
do not parse; and `generate dtype=float32` on a safetensors checkpoint.

A tiny llama (tests/tiny_checkpoint.py: context 64, 2 layers, 4 heads)
stands in for a real model; `load_model` is replaced by a stub that stops
the command where the weights would load, so each check is shown to run
before that.
"""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from tiny_checkpoint import write_tiny_checkpoint

from experiments import bench_prefill, cli
from experiments import generate as gen
from experiments.config import ConfigError, command, load_config
from experiments.model_slice import ModelSlice, save_slice
from experiments.prefill.settings import PrefillConfig
from minference_jax import PatternConfig, VerticalSlash
from models import ModelConfig


class _WeightsLoaded(Exception):
  """The command got as far as loading the weights."""


def _stop_at_weights(*args, **kwargs):
  raise _WeightsLoaded


def _run(capsys, argv) -> tuple[int | None, str]:
  """`minference-jax argv` -> (exit status or None if it reached the
  weights, stderr)."""
  try:
    cli.main(argv)
    code = 0
  except SystemExit as e:
    code = e.code
  except _WeightsLoaded:
    code = None
  return code, capsys.readouterr().err


def _one_error(capsys, argv) -> str:
  code, err = _run(capsys, argv)
  assert code == 2 and err.startswith("error: ") and err.count("\n") == 1, (
      code, err)
  return err


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
  path = tmp_path_factory.mktemp("ckpt")
  write_tiny_checkpoint(path)
  return path


# ------------------------------------------------------------- generate
def test_generate_float32_safetensors_loads_float32(ckpt, tmp_path,
                                                    monkeypatch, capsys):
  seen = {}
  real = gen.load_model

  def spy(path, dtype, mesh=None):
    seen["loaded"] = real(path, dtype, mesh)
    return seen["loaded"]

  monkeypatch.setattr(gen, "load_model", spy)
  code, _ = _run(capsys, ["generate", "prompt=where is the key ?",
                          f"model={ckpt}", "dtype=float32", "backend=dense",
                          "max_new_tokens=2", f"out_dir={tmp_path}"])
  assert code == 0
  dtypes = {x.dtype for x in jax.tree.leaves(seen["loaded"].params)}
  assert dtypes == {jnp.dtype(jnp.float32)}
  assert json.loads((tmp_path / "generate.json").read_text())[
      "prompt_tokens"] == 5


def test_generate_refuses_a_prompt_past_the_context(ckpt, tmp_path,
                                                    monkeypatch, capsys):
  monkeypatch.setattr(gen, "load_model", _stop_at_weights)
  prompt = tmp_path / "long.txt"
  prompt.write_text("where is the key ? " * 12)  # 60 tokens
  argv = ["generate", f"prompt_file={prompt}", f"model={ckpt}",
          f"out_dir={tmp_path}"]
  err = _one_error(capsys, argv)
  assert ("the prompt (60 tokens) plus max_new_tokens=32: 92 positions, but"
          " tiny_llama has a context of 64 tokens") in err
  assert "rope_scaling='{rope_type: dynamic, factor: 2}'" in err
  code, _ = _run(capsys, argv + ["rope_scaling={rope_type: dynamic,"
                                 " factor: 2}"])
  assert code is None  # extended: on to the weights


def test_generate_refuses_patterns_of_another_model(ckpt, tmp_path,
                                                    monkeypatch, capsys):
  monkeypatch.setattr(gen, "load_model", _stop_at_weights)
  base = ["generate", "prompt=where is the key", f"model={ckpt}",
          f"out_dir={tmp_path}"]
  ours = tmp_path / "three_layers.json"
  PatternConfig.uniform(VerticalSlash(30, 60), 3, 4).save_json(ours)
  err = _one_error(capsys, base + [f"patterns={ours}"])
  assert f"pattern config {ours} has 3 layers; the model has 2" in err
  minf = tmp_path / "minf.json"
  minf.write_text(json.dumps([{str(h): ["vertical_and_slash", 30, 60, None]
                               for h in range(5)}] * 2))
  err = _one_error(capsys, base + [f"patterns={minf}"])
  assert "is in MInference format; set minference_format=true" in err
  err = _one_error(capsys, base + [f"patterns={minf}",
                                   "minference_format=true"])
  assert "layer 0, head 4: head index out of range for num_heads=4" in err
  empty = tmp_path / "empty.json"
  empty.write_text("")
  err = _one_error(capsys, base + [f"patterns={empty}"])
  assert f"pattern config {empty} is empty" in err
  err = _one_error(capsys, base + ["minference_format=true"])
  assert "minference_format=true needs patterns=PATH" in err
  err = _one_error(capsys, base + ["chat=true"])
  assert f"chat=true but the tokenizer of {ckpt} has no chat template" in err


def test_generate_warns_that_prefill_chunks_run_dense(ckpt, tmp_path,
                                                      monkeypatch, capsys):
  monkeypatch.setattr(gen, "load_model", _stop_at_weights)
  fits = tmp_path / "fits.json"
  PatternConfig.uniform(VerticalSlash(30, 60), 2, 4).save_json(fits)
  code, err = _run(capsys, ["generate", "prompt=where is the key",
                            f"model={ckpt}", f"patterns={fits}",
                            "backend=xla", "prefill_chunk=2",
                            f"out_dir={tmp_path}"])
  assert code is None
  assert err.startswith("warning: prefill_chunk=2: only the first chunk")


# ---------------------------------------------------------------- demo
class _Words:
  """A whitespace tokenizer (one id per word) for the demo's prompt."""

  def apply_chat_template(self, messages, add_generation_prompt, tokenize):
    return [1] * len(messages[0]["content"].split())


def test_demo_checks_plots_and_prompt_before_the_weights(monkeypatch,
                                                         capsys, tmp_path):
  from experiments import demo

  monkeypatch.setattr(demo, "model_geometry",
                      lambda path: ModelConfig.smollm2_135m())
  monkeypatch.setattr(demo, "load_tokenizer", lambda path: _Words())
  monkeypatch.setattr(demo, "load_model", _stop_at_weights)
  err = _one_error(capsys, ["demo", "plot_layers=[2, 30]",
                            f"out_dir={tmp_path}"])
  assert "plot_layers: [30] out of range; the model has 30 layers" in err
  err = _one_error(capsys, ["demo", "heads_to_plot=[9]",
                            f"out_dir={tmp_path}"])
  assert "heads_to_plot: [9] out of range; the model has 9 query heads" in err
  err = _one_error(capsys, ["demo", "sentences=1000", f"out_dir={tmp_path}"])
  assert "the needle prompt of sentences=1000" in err
  assert "has a context of 8192 tokens" in err and "rope_scaling=" in err
  code, _ = _run(capsys, ["demo", f"out_dir={tmp_path}"])
  assert code is None


# ------------------------------------------------- slices and presets
def test_model_indices_past_the_context_needs_an_option(tmp_path, monkeypatch,
                                                        capsys):
  from experiments import model_indices

  config = ModelConfig.tiny("llama")
  path = save_slice(tmp_path / "slice.npz", ModelSlice(
      config, {}, np.zeros(300, np.uint16),
      np.arange(config.vocab_size, dtype=np.int32), {}))
  monkeypatch.setattr(model_indices, "load_slice", _stop_at_weights)
  argv = ["model-indices", f"slice={path}", "seq_lens=[256]",
          f"out_dir={tmp_path}"]
  err = _one_error(capsys, argv + ["beyond_context=false"])
  assert "seq_lens up to 256: 256 positions, but tiny_llama has a context" \
      in err
  assert "rope_scaling=" in err and "or set beyond_context=true" in err
  code, err = _run(capsys, argv)  # the default YAML: beyond_context: true
  assert code is None and err.startswith("warning: seq_lens up to 256")
  err = _one_error(capsys, argv + ["seq_lens=[301]"])
  assert "seq_lens: 301 is longer than the slice's text (300 tokens)" in err


def _prefill(*overrides) -> PrefillConfig:
  tiny = ("model.overrides={hidden_size: 64, intermediate_size: 128,"
          " num_layers: 2, num_heads: 4, num_kv_heads: 2, head_dim: 16,"
          " vocab_size: 96}")
  return load_config(PrefillConfig, None, ["model.preset=llama3_8b", tiny,
                                           "seq_lens=[16384]", *overrides])


def test_bench_prefill_checks_context_and_ignored_keys(capsys):
  with pytest.raises(ConfigError, match="seq_lens up to 16384: 16384"
                     " positions, but llama3_8b has a context of 8192 tokens"
                     ".*model.rope_scaling=.*or set"
                     " model.beyond_context=true"):
    bench_prefill.validate(_prefill())
  assert bench_prefill.validate(_prefill("model.beyond_context=true"))
  assert capsys.readouterr().err.startswith("warning: seq_lens up to 16384")
  scaled = _prefill("model.rope_scaling={rope_type: dynamic, factor: 2}")
  assert bench_prefill.validate(scaled).config.max_position_embeddings == (
      16384)
  assert capsys.readouterr().err == ""
  with pytest.raises(ConfigError, match="pattern_file is read by attention"
                     " 'pattern_file' only"):
    _prefill("cases=[{label: d, attention: dense, pattern_file: x.json}]")
  with pytest.raises(ConfigError, match="model.preset, model.overrides and"
                     " model.weight_std apply to source 'preset' only"):
    _prefill("model.source=slice")


# ------------------------------------------------ ignored or bad keys
@pytest.mark.parametrize("argv, message", [
    (["bench-kernels", "kernel_impls=[xla]", "vs_configs=[[4, 2]]"],
     "vs_configs has no effect: no vertical_slash pattern on kernel_impls"
     " 'triton'"),
    (["bench-kernels", "crossover_lens=[]", "crossover_kv_heads=4"],
     "crossover_kv_heads has no effect: crossover_lens is empty"),
    (["synthetic-demo", "heads=4", "kv_heads=2", "plot_heads=5"],
     "plot_heads must be in [0, heads=4], got 5"),
    (["eval", "attention=[{name: a, kind: a_shape, n_vertical: 10}]"],
     "attention 'a' (kind a_shape) sets ['n_vertical'], which this kind"
     " ignores"),
    (["eval", "nope=1"], "unknown config keys ['nope']"),
    (["bench-prefill", "nope=1"], "unknown config keys ['nope']"),
])
def test_ignored_and_unknown_keys_are_one_line_errors(argv, message, capsys):
  assert message in _one_error(capsys, argv)


def test_commands_print_warnings_and_empty_files_as_one_line(tmp_path,
                                                             capsys):
  import warnings

  empty = tmp_path / "empty.yaml"
  empty.write_text("# only a comment\n")

  @command
  def main(argv):
    load_config(PrefillConfig, empty)
    warnings.warn("an option has no effect", UserWarning)

  main([])
  assert capsys.readouterr().err == (
      f"warning: config file {empty} is empty: every key takes its default\n"
      "warning: an option has no effect\n")
