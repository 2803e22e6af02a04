"""The `minference-jax` commands' argument handling: every command reads its
YAML file plus key=value overrides, a user's mistake (unknown key, wrong
type, bad value, missing file) is one line on stderr with exit status 2
before any slow work, and the resolved config is saved with the results.

The model and kernel paths are tested elsewhere; here a tiny random llama
stands in where a command needs a model.
"""

import dataclasses
import importlib
import inspect
import json
import logging

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from experiments import cli
from experiments.config import CONFIGS_DIR, load_config
from minference_jax.attention import make_attention
from models import CausalLM, LoadedModel, generate_greedy, random_params
from models.config import ModelConfig

# command -> (module, its config class, overrides that make the default
# YAML complete)
OURS = {
    "demo": ("experiments.demo", "DemoConfig", []),
    "generate": ("experiments.generate", "GenerateConfig", ["prompt=hi"]),
    "synthetic-demo": ("experiments.synthetic_demo", "SyntheticDemoConfig",
                       []),
    "bench-kernels": ("experiments.bench_kernels", "BenchConfig", []),
    "check-kernels": ("experiments.check_kernels", "CheckKernelsConfig", []),
    "model-indices": ("experiments.model_indices", "ModelIndicesConfig", []),
}


def _error_line(capsys, argv) -> str:
  """Runs `minference-jax argv`; asserts exit 2 and one stderr line."""
  with pytest.raises(SystemExit) as e:
    cli.main(argv)
  assert e.value.code == 2, argv
  err = capsys.readouterr().err
  assert err.startswith("error: ") and err.count("\n") == 1, err
  return err


def test_usage_lists_every_command(capsys):
  with pytest.raises(SystemExit) as e:
    cli.main(["--help"])
  assert e.value.code == 0
  out = capsys.readouterr().out
  assert all(name in out for name in OURS)
  with pytest.raises(SystemExit) as e:
    cli.main(["nope"])
  assert e.value.code == 2
  assert capsys.readouterr().err.startswith("error: unknown command 'nope'\n")


@pytest.mark.parametrize("name", sorted(cli.COMMANDS))
def test_every_command_documents_its_options(name, capsys):
  """`minference-jax NAME --help` prints the options with their meaning
  and defaults, and exits 0 without doing any work."""
  with pytest.raises(SystemExit) as e:
    cli.main([name, "--help"])
  assert e.value.code == 0
  out = capsys.readouterr().out
  assert out.startswith("usage: [--config FILE.yaml] [key=value ...]"), out
  assert "Attributes:" in out or "Args:" in out, out
  assert "built-in defaults" in out


@pytest.mark.parametrize("name", sorted(OURS))
def test_default_yaml_holds_every_key(name):
  """Each command's default YAML exists, loads into its config class and
  sets every key (so the file documents all of them)."""
  module, cls_name, extra = OURS[name]
  mod = importlib.import_module(module)
  cls = getattr(mod, cls_name)
  assert mod.DEFAULT_CONFIG.parent == CONFIGS_DIR / "experiments"
  cfg = load_config(cls, mod.DEFAULT_CONFIG, extra)
  raw = mod.DEFAULT_CONFIG.read_text()
  for field in dataclasses.fields(cls):
    assert f"\n{field.name}:" in "\n" + raw, f"{name}: {field.name}"
  assert isinstance(cfg, cls)


@pytest.mark.parametrize("name", sorted(OURS))
def test_unknown_key_and_option_are_one_line_errors(name, capsys):
  err = _error_line(capsys, [name, "nope=1"])
  assert "unknown config keys ['nope']" in err
  err = _error_line(capsys, [name, "--bogus"])
  assert "unknown option '--bogus'" in err
  err = _error_line(capsys, [name, "--config", "absent.yaml"])
  assert "absent.yaml does not exist" in err


@pytest.mark.parametrize("argv,match", [
    (["demo", "depth=deep"], "'depth' must be a number, got 'deep'"),
    (["demo", "depth=1.5"], "depth must be in [0, 1], got 1.5"),
    (["demo", "plot_layers=[1, x]"], "'plot_layers[1]' must be an int"),
    (["generate"], "give exactly one of prompt=TEXT or prompt_file=PATH"),
    (["generate", "prompt=hi", "prompt_file=a.txt"], "exactly one of"),
    (["generate", "prompt=hi", "backend=gpu"],
     "'backend' must be one of ['auto', 'xla', 'pallas', 'dense']"),
    (["generate", "prompt=hi", "max_new_tokens=0"], "max_new_tokens must be"),
    (["synthetic-demo", "seq_len=1.5"], "'seq_len' must be an int"),
    (["synthetic-demo", "heads=6", "kv_heads=4"], "multiple of kv_heads"),
    (["bench-kernels", "seq_lens=[a]"], "'seq_lens[0]' must be an int"),
    (["bench-kernels", "kernel_impls=[cuda]"], "kernel_impls: unknown"),
    (["bench-kernels", "patterns=[dense]"], "patterns: unknown 'dense'"),
    (["bench-kernels", "patterns=[a_shape:model]"], "takes no index source"),
    (["bench-kernels", "kv_heads=[5]"], "do not divide num_heads"),
    (["bench-kernels", "vs_budget=[1]"], "'vs_budget' must have 2 items"),
    (["check-kernels", "tests={a: 1}"], "'tests[0]' must be a string"),
    (["check-kernels", "tests=[]"], "at least one test file"),
    (["model-indices", "bs_heads=x"], "'bs_heads' must be an int"),
    (["model-indices", "dtype=float16"], "'dtype' must be one of"),
])
def test_bad_values_name_the_key(argv, match, capsys):
  assert match in _error_line(capsys, argv)


def test_missing_files_are_named(tmp_path, capsys):
  absent = tmp_path / "absent"
  err = _error_line(capsys, ["generate", f"prompt_file={absent}.txt"])
  assert f"prompt_file: {absent}.txt does not exist" in err
  err = _error_line(capsys, ["generate", "prompt=hi", f"model={absent}.gguf"])
  assert f"model: {absent}.gguf does not exist" in err
  err = _error_line(capsys, ["generate", "prompt=hi",
                             f"patterns={absent}.json"])
  assert f"patterns: {absent}.json does not exist" in err
  err = _error_line(capsys, ["model-indices", f"slice={absent}.npz"])
  assert f"slice: {absent}.npz does not exist" in err
  err = _error_line(capsys, ["check-kernels", "tests=[tests/absent]"])
  assert "tests: tests/absent does not exist" in err
  err = _error_line(capsys, ["bench-kernels", "patterns=[block_sparse:model]",
                             "seq_lens=[4096]", f"model_indices_dir={absent}",
                             f"out_dir={tmp_path}"])
  assert f"needs {absent}/model_bs_indices_T4096.npz" in err
  assert not (tmp_path / "bench_kernels.config.yaml").exists()  # no work


def test_text_overrides_keep_what_was_typed():
  from experiments.generate import GenerateConfig

  cfg = load_config(GenerateConfig, None, ["prompt=yes: no", "patterns=dense"])
  assert cfg.prompt == "yes: no" and cfg.patterns == "dense"
  assert load_config(GenerateConfig, None, ["prompt=42"]).prompt == "42"


def test_check_kernels_without_gpu_is_one_line(capsys):
  err = _error_line(capsys, ["check-kernels"])
  assert "check-kernels needs a CUDA GPU and JAX sees none" in err


# ------------------------------------------------ runs that save configs
class _Tokenizer:
  """Characters as ids (3..95); what the commands call of a tokenizer."""

  def encode(self, text):
    return [3 + ord(c) % 90 for c in text]

  def apply_chat_template(self, messages, add_generation_prompt, tokenize):
    assert add_generation_prompt and tokenize
    return [1] + self.encode(messages[0]["content"]) + [2]

  def decode(self, ids, skip_special_tokens):
    return "".join(chr(ord("a") + i % 26) for i in ids
                   if not (skip_special_tokens and i < 3))


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
  config = ModelConfig.tiny("llama")
  params = random_params(config, jax.random.key(3), jnp.float32, std=0.2)
  path = tmp_path_factory.mktemp("model") / "tiny.gguf"
  return LoadedModel(config, params, _Tokenizer(), path)


def test_generate_saves_its_config_and_answer(tiny_model, tmp_path,
                                              monkeypatch, capsys):
  from experiments import generate

  monkeypatch.setattr(generate, "load_model",
                      lambda path, dtype, mesh=None: tiny_model)
  monkeypatch.setattr(generate, "model_geometry",
                      lambda path: tiny_model.config)
  monkeypatch.setattr(generate, "load_tokenizer", lambda path: _Tokenizer())
  prompt = tmp_path / "prompt.txt"
  prompt.write_text("where is the key?")
  cli.main(["generate", f"prompt_file={prompt}", "chat=true", "backend=dense",
            "max_new_tokens=3", f"out_dir={tmp_path}"])
  saved = load_config(generate.GenerateConfig,
                      tmp_path / "generate.config.yaml")
  assert saved.prompt_file == str(prompt) and saved.max_new_tokens == 3
  assert saved.prefill_chunk is None and saved.backend == "dense"
  record = json.loads((tmp_path / "generate.json").read_text())
  tok = _Tokenizer()
  ids = tok.apply_chat_template([{"content": prompt.read_text()}], True, True)
  model = CausalLM(tiny_model.config, tiny_model.params,
                   make_attention(None, backend="dense"))
  want = generate_greedy(model, np.asarray([ids], np.int32),
                         max_new_tokens=3)
  text = tok.decode(want.tokens[0, : want.lengths[0]].tolist(), True).strip()
  assert record["answer"] == text and record["prompt_tokens"] == len(ids)
  assert text in capsys.readouterr().out


def test_demo_prefill_timing_runs_a_compiled_call(tiny_model, caplog):
  """The demo's "prefill s" is a run of the prefill compiled before it, and
  generation reuses that executable: `forward` compiles exactly once."""
  from experiments.demo import answer_with_timings

  model = CausalLM(tiny_model.config, tiny_model.params,
                   make_attention(None, backend="dense"))
  ids = list(range(3, 40))
  with jax.log_compiles(True), caplog.at_level(logging.WARNING):
    got = answer_with_timings(model, ids, _Tokenizer(), 4)
  compiles = [r for r in caplog.records
              if "XLA compilation of jit(forward)" in r.getMessage()]
  assert len(compiles) == 1, [r.getMessage() for r in compiles]
  want = generate_greedy(model, np.asarray([ids], np.int32), max_new_tokens=4)
  assert got["answer"] == _Tokenizer().decode(
      want.tokens[0, : want.lengths[0]].tolist(), True).strip()
  assert 0 < got["prefill_s"] and 0 < got["prefill_compile_s"]
  assert got["generate_s"] > 0


class _Stop(Exception):
  """Stops a command right after it saved its config."""


class _Words:
  """One id per word of a chat prompt (the demo's length check)."""

  def apply_chat_template(self, messages, add_generation_prompt, tokenize):
    return [1] * len(messages[0]["content"].split())


@pytest.mark.parametrize("name,module,stop_at", [
    ("demo", "experiments.demo", "load_model"),
    ("synthetic-demo", "experiments.synthetic_demo", "synthetic_qkv"),
])
def test_demos_save_the_resolved_config_first(name, module, stop_at,
                                              tmp_path, monkeypatch):
  mod = importlib.import_module(module)

  def stop(*args, **kwargs):
    raise _Stop

  monkeypatch.setattr(mod, stop_at, stop)
  if name == "demo":  # the checks before the weights: SmolLM2's geometry
    monkeypatch.setattr(mod, "model_geometry",
                        lambda path: ModelConfig.smollm2_135m())
    monkeypatch.setattr(mod, "load_tokenizer", lambda path: _Words())
  with pytest.raises(_Stop):
    cli.main([name, "seed=7", f"out_dir={tmp_path}"])
  stem = name.replace("-", "_")
  cls = getattr(mod, OURS[name][1])
  saved = load_config(cls, tmp_path / f"{stem}.config.yaml")
  assert saved == load_config(cls, mod.DEFAULT_CONFIG,
                              ["seed=7", f"out_dir={tmp_path}"])


def test_bench_kernels_writes_results_and_config(tmp_path):
  """A tiny CPU run through the A-shape entry point's XLA implementation:
  JSON, markdown and the resolved config are written."""
  from experiments import bench_kernels
  from pallas_kernels import a_shape

  argv = ["seq_lens=[128]", "kv_heads=[1]", "num_heads=2", "head_dim=16",
          "dtype=float32", "patterns=[a_shape]", "a_shape_sizes=[16,32]",
          "kernel_impls=[xla]", "dense=false", "flash_max_len=0",
          "crossover_lens=[]", "min_repeats=1", "max_repeats=1",
          "budget_s=0.1", f"out_dir={tmp_path}", "name=tiny"]
  bench_kernels.main(argv)
  saved = load_config(bench_kernels.BenchConfig, tmp_path / "tiny.config.yaml")
  assert saved == load_config(bench_kernels.BenchConfig,
                              bench_kernels.DEFAULT_CONFIG, argv)
  result = json.loads((tmp_path / "tiny.json").read_text())
  assert result["meta"]["config"]["kernel_impls"] == ["xla"]
  (row,) = result["rows"]
  assert (row["T"], row["kernel"], row["impl"]) == (128, "a_shape", "xla")
  assert "| 128 | 1 | a_shape | xla |" in (tmp_path / "tiny.md").read_text()
  if "implementation" not in inspect.signature(
      a_shape.a_shape_attention).parameters:
    pytest.skip("the per-op entry points (implementation=) have not landed;"
                " the kernel row records their TypeError")
  assert "error" not in row, row["error"]
  # Density counts whole 64 x 64 tiles over the causal area: above 1 at
  # T = 128, where the diagonal tiles' upper halves dominate.
  assert row["density"] > 0 and row["kernel_ms"] > 0


def test_check_kernels_runs_pytest_and_refuses_an_empty_run(tmp_path,
                                                            monkeypatch,
                                                            capsys):
  """With a GPU (stubbed here) the command runs `pytest -m gpu` in a child
  process, saves its config and the JUnit report, and a run in which no
  test ran is an error, not a pass."""
  from experiments import check_kernels

  monkeypatch.setattr(check_kernels, "require_gpu", lambda: "stub GPU")
  with pytest.raises(SystemExit) as e:
    cli.main(["check-kernels", "tests=[tests/experiments/test_config.py]",
              f"out_dir={tmp_path}"])
  assert e.value.code == 5  # pytest: no test selected
  assert "no GPU test ran (0 selected, 0 skipped)" in capsys.readouterr().err
  saved = load_config(check_kernels.CheckKernelsConfig,
                      tmp_path / "check_kernels.config.yaml")
  assert saved.tests == ("tests/experiments/test_config.py",)
  assert check_kernels.junit_counts(tmp_path / "check_kernels.xml") == dict(
      tests=0, skipped=0, failures=0, errors=0)


def test_junit_counts_sum_the_suites(tmp_path):
  from experiments.check_kernels import junit_counts

  path = tmp_path / "r.xml"
  path.write_text(
      '<testsuites><testsuite tests="4" skipped="1" failures="1" errors="0"/>'
      '<testsuite tests="2" skipped="2" failures="0" errors="1"/>'
      "</testsuites>")
  assert junit_counts(path) == dict(tests=6, skipped=3, failures=1, errors=1)
