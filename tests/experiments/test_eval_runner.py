"""The eval runner's bookkeeping and its errors: a run killed mid-way
resumes without redoing or losing finished cases (a torn last line is
ignored), and a user's mistake (unknown task, a length past the model's
limit without RoPE scaling, a missing pattern file) is one clear line
before any model work."""

import json

import jax.numpy as jnp
import numpy as np
import pytest
from eval_helpers import tiny_model
from paths import FIXTURES_DIR

from experiments.config import ConfigError, load_config
from experiments.eval import (
    attention_configs,
    command,
    model_calls,
    records,
    runner,
)
from experiments.eval.config import EvalConfig
from minference_jax import AShape, PatternConfig, VerticalSlash, make_attention
from models import LAYERWISE_FROM, CausalLM, LayerAttentions


def _config(tmp_path, *overrides):
  return load_config(EvalConfig, None, [
      f"output_dir={tmp_path}", "tasks=[niah/needle,infinitebench/passkey]",
      "lengths=[512]", "depths=[0.0,1.0]", "samples=2", "batch_size=2",
      "density_samples=0", "generation_reserve=32",
      "attention=[{name: dense}, {name: vs, kind: vertical_slash,"
      " n_vertical: 30, n_slash: 64}]", *overrides])


class _Killed(Exception):
  pass


def test_resume_after_a_kill_skips_finished_cases(tmp_path, monkeypatch):
  loaded = tiny_model(max_len=1024)
  tok = loaded.tokenizer
  calls = []

  def fake_answers(model, prompts, max_new_tokens, eos_ids, total_length):
    calls.append(prompts.shape)
    return [tok.encode(" 12345", add_bos=False)] * prompts.shape[0]

  monkeypatch.setattr(model_calls, "greedy_answers", fake_answers)
  cfg = _config(tmp_path)
  # needle: 2 depths x 2 samples, passkey: 2 samples; per attention config
  planned = 2 * (4 + 2)
  append = records.ResultsFile.append
  written = []

  def dying_append(self, record):
    if len(written) == 5:  # killed while writing the sixth case
      with self.path.open("a") as f:
        f.write(json.dumps(record)[:40])  # a torn line
      raise _Killed()
    append(self, record)
    written.append(record["case_key"])

  monkeypatch.setattr(records.ResultsFile, "append", dying_append)
  with pytest.raises(_Killed):
    runner.run_eval(cfg, loaded, platform="cpu", log=lambda _: None)
  monkeypatch.setattr(records.ResultsFile, "append", append)
  done_before = {r["case_key"] for r in records.iter_records(
      tmp_path / "results.jsonl")}
  assert done_before == set(written) and len(written) == 5
  calls.clear()
  runner.run_eval(cfg, loaded, platform="cpu", log=lambda _: None)
  final = list(records.iter_records(tmp_path / "results.jsonl"))
  keys = [r["case_key"] for r in final]
  assert len(keys) == len(set(keys)) == planned
  # batches of 2: the killed batch's second case and the rest were redone
  assert sum(shape[0] for shape in calls) >= planned - 5
  assert {r["attn_config"] for r in final} == {"dense", "vs"}
  assert all(r["scores"] for r in final)
  calls.clear()
  runner.run_eval(cfg, loaded, platform="cpu", log=lambda _: None)
  assert not calls  # everything was done
  assert len(list(records.iter_records(tmp_path / "results.jsonl"))) == (
      planned)
  # A later call with an empty output folder resumes from the earlier file.
  elsewhere = _config(tmp_path / "next",
                      f"resume_from=[{tmp_path / 'results.jsonl'}]")
  runner.run_eval(elsewhere, loaded, platform="cpu", log=lambda _: None)
  assert not calls
  moved = list(records.iter_records(tmp_path / "next" / "results.jsonl"))
  assert sorted(r["case_key"] for r in moved) == sorted(keys)


def test_keys_separate_attention_configs_and_backends(tmp_path):
  loaded = tiny_model(max_len=1024)
  cfg = _config(tmp_path)
  resolved = runner.prepare(cfg, loaded.config, "cpu")
  r = runner.Runner(cfg, loaded, "cpu")
  fps = {r.fingerprint(ra) for ra in resolved.values()}
  assert len(fps) == 2
  pallas = runner.prepare(_config(tmp_path, "backend=pallas"),
                          loaded.config, "cpu")
  assert r.fingerprint(pallas[("vs", 512)]) not in fps


def _cli_error(capsys, argv) -> str:
  with pytest.raises(SystemExit) as info:
    command.main(argv)
  assert info.value.code == 2
  err = capsys.readouterr().err.strip()
  assert err.count("\n") == 0 and err.startswith("error: ")
  return err


def test_unknown_task_is_one_line(capsys, tmp_path):
  err = _cli_error(capsys, [f"output_dir={tmp_path}",
                            "tasks=[ruler/niah_single_9]"])
  assert "unknown task 'ruler/niah_single_9'" in err and "ruler/vt" in err


def test_missing_pattern_file_is_one_line(capsys, tmp_path):
  missing = tmp_path / "nope.json"
  err = _cli_error(capsys, [
      f"output_dir={tmp_path}",
      f"attention=[{{name: dense}}, {{name: searched, kind: pattern_file,"
      f" path: {missing}}}]"])
  assert "searched" in err and str(missing) in err and "does not exist" in err
  assert not (tmp_path / "results.jsonl").exists()


def test_length_above_the_limit_needs_rope_scaling(capsys, tmp_path):
  checkpoint = FIXTURES_DIR / "tiny_models" / "llama"
  limit = json.loads((checkpoint / "config.json").read_text())[
      "max_position_embeddings"]
  err = _cli_error(capsys, [f"output_dir={tmp_path}", "lengths=[1024]",
                            f"model.path={checkpoint}"])
  assert "1024 positions" in err and f"context of {limit} tokens" in err
  assert "model.rope_scaling='{rope_type: dynamic, factor: 2}'" in err
  loaded = tiny_model(max_len=1024)
  with pytest.raises(ConfigError, match="2048 positions, but .* context of"
                     " 1024 tokens"):
    runner.prepare(_config(tmp_path, "lengths=[2048]"), loaded.config, "cpu")
  scaled = _config(tmp_path, "lengths=[2048]",
                   "model.rope_scaling={rope_type: dynamic, factor: 2}")
  assert runner.prepare(scaled, loaded.config, "cpu")
  rope = runner.with_rope_scaling(loaded.config, scaled.model.rope_scaling)
  assert rope.rope.kind == "dynamic" and rope.rope.factor == 2


def test_bad_values_are_config_errors(tmp_path):
  with pytest.raises(ConfigError, match="generation_reserve"):
    _config(tmp_path, "tasks=[ruler/niah_single_1]", "generation_reserve=16")
  with pytest.raises(ConfigError, match="depths"):
    _config(tmp_path, "depths=[1.5]")
  with pytest.raises(ConfigError, match="distinct names"):
    _config(tmp_path, "attention=[{name: a}, {name: a}]")
  with pytest.raises(ConfigError, match="layerwise_from"):
    _config(tmp_path, "layerwise_from=-1")


def test_layerwise_from_picks_the_executor_not_the_results(tmp_path,
                                                          monkeypatch):
  loaded = tiny_model(max_len=1024)
  seen = []

  def fake_answers(model, prompts, max_new_tokens, eos_ids, total_length):
    seen.append(model.layerwise_from)
    return [[]] * prompts.shape[0]

  monkeypatch.setattr(model_calls, "greedy_answers", fake_answers)
  default = _config(tmp_path / "a", "tasks=[infinitebench/passkey]")
  always = _config(tmp_path / "b", "tasks=[infinitebench/passkey]",
                   "layerwise_from=0")
  for cfg in (default, always):
    runner.run_eval(cfg, loaded, platform="cpu", log=lambda _: None)
  assert set(seen[:2]) == {LAYERWISE_FROM} and set(seen[2:]) == {0}
  fps = [{r["run_fingerprint"] for r in records.iter_records(
      tmp_path / name / "results.jsonl")} for name in ("a", "b")]
  assert fps[0] == fps[1]


def test_report_says_what_its_tables_average(tmp_path):
  from experiments.eval import report

  def header(**kw):
    cfg = EvalConfig(output_dir=str(tmp_path), **kw)
    return report.markdown(cfg, report.summarize(cfg, []), "cmd", "cpu")

  ppl_only = header(tasks=("ppl/kjv",), ppl_docs=3)
  assert "Perplexity over 3 documents per length; seed 0." in ppl_only
  assert "samples per task" not in ppl_only
  both = header(tasks=("niah/needle", "ppl/kjv"), samples=4, ppl_docs=3)
  assert "Scores x100; 4 samples per task and length" in both
  assert "perplexity over 3 documents per length; seed 0." in both
  gen_only = header(tasks=("niah/needle",), samples=4)
  assert "documents" not in gen_only and "; seed 0." in gen_only


@pytest.mark.parametrize(
    "path", sorted((FIXTURES_DIR.parent.parent / "configs" / "eval")
                   .glob("*.yaml")), ids=lambda p: p.stem)
def test_committed_eval_configs_parse(path):
  cfg = load_config(EvalConfig, path)
  assert cfg.name == path.stem and cfg.attention and cfg.tasks


def test_a_pattern_file_runs_its_layers_through_one_step(tmp_path):
  """A pattern file whose layers differ (a searched config) becomes one
  pattern table per layer: one compiled layer step, same logits as the
  per-layer MInferenceAttention."""
  loaded = tiny_model(max_len=1024)
  config = loaded.config
  kinds = (VerticalSlash(30, 50), AShape(4, 60))
  patterns = PatternConfig(layers=tuple(
      tuple(kinds[(i + h) % 2] for h in range(config.num_heads))
      for i in range(config.num_layers)))
  path = tmp_path / "searched.json"
  patterns.save_json(str(path))
  cfg = _config(tmp_path, "attention=[{name: searched, kind: pattern_file,"
                f" path: {path}}}]")
  resolved = attention_configs.resolve(cfg, cfg.attention[0], 512,
                                       config.num_layers, config.num_heads,
                                       "cpu")
  shared = resolved.make()
  assert isinstance(shared, LayerAttentions)
  model = CausalLM(config, loaded.params, attention=shared)
  assert model.layerwise.num_steps(512) == 1
  plain = make_attention(patterns, backend="xla", dense_threshold=0)
  assert CausalLM(config, loaded.params,
                  attention=plain).layerwise.num_steps(512) == min(
                      2, config.num_layers)
  tokens = jnp.asarray(np.arange(256)[None] % 90 + 5, jnp.int32)
  got, _ = model.prefill(tokens)
  want, _ = CausalLM(config, loaded.params, attention=plain).prefill(tokens)
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
