"""One tiny evaluation end to end on CPU: two tasks (the needle grid and
perplexity) at 1K tokens, dense and Vertical-Slash, through the real model
path (prefill with each attention, shared dense decode, per-position NLL,
density/recall), then the tables and plots; a rerun does no model work."""

import json

import pytest
from eval_helpers import tiny_model

from experiments.config import load_config
from experiments.eval import model_calls
from experiments.eval.config import EvalConfig
from experiments.eval.records import iter_records
from experiments.eval.report import write_report
from experiments.eval.runner import run_eval


@pytest.mark.slow  # about 25 s of CPU time (XLA compiles of two configs)
def test_tiny_eval_dense_and_vertical_slash(tmp_path, monkeypatch):
  cfg = load_config(EvalConfig, None, [
      f"output_dir={tmp_path}", "tasks=[niah/needle,ppl/kjv]",
      "lengths=[1024]", "depths=[0.0,1.0]", "samples=1", "batch_size=2",
      "ppl_docs=2", "ppl_batch_size=2", "density_samples=1",
      "attention=[{name: dense}, {name: vs, kind: vertical_slash,"
      " n_vertical: 64, n_slash: 128}]"])
  loaded = tiny_model(max_len=2048)
  run_eval(cfg, loaded, platform="cpu", log=lambda _: None)
  rows = list(iter_records(tmp_path / "results.jsonl"))
  by = {(r["attn_config"], r["task"]): [] for r in rows}
  for r in rows:
    by[(r["attn_config"], r["task"])].append(r)
  for attn in ("dense", "vs"):
    needle = by[(attn, "niah/needle")]
    assert sorted(r["depth_percent"] for r in needle) == [0.0, 100.0]
    for r in needle:
      assert r["n_input_tokens"] == 1024 - cfg.generation_reserve
      assert 0.0 <= r["scores"]["string_match_all"] <= 1.0
      assert len(r["references"]) == 1 and r["references"][0].isdigit()
    ppl = by[(attn, "ppl/kjv")]
    assert len(ppl) == 2 and len({r["document"] for r in ppl}) == 2
    for r in ppl:
      assert r["n_tokens"] == 1023
      assert sum(n for *_, n in r["buckets"]) == 1023
      assert abs(sum(s for _, _, s, _ in r["buckets"]) - r["nll_sum"]) < 1e-3
  (dense_diag,) = by[("dense", "diagnostics/attention")]
  (vs_diag,) = by[("vs", "diagnostics/attention")]
  assert dense_diag["scores"] == {"density": 1.0, "recall": 1.0}
  assert 0.0 < vs_diag["scores"]["density"] < 1.0
  assert 0.0 < vs_diag["scores"]["recall"] <= 1.0 + 1e-6
  assert len(vs_diag["layer_recall"]) == loaded.config.num_layers
  # The same documents under both configs: the sparse prefill changes the
  # loss, but only a little on a random model with most keys kept.
  d = sum(r["nll_sum"] for r in by[("dense", "ppl/kjv")])
  v = sum(r["nll_sum"] for r in by[("vs", "ppl/kjv")])
  assert d != v and abs(d - v) / d < 0.05

  paths = write_report(cfg, "pytest")
  text = paths["md"].read_text()
  assert "| niah/needle | 1024 |" in text and "| 1024 | " in text
  assert "## Goal check" in text
  summary = json.loads(paths["json"].read_text())
  assert set(summary["ppl"]) == {"dense|1024", "vs|1024"}
  for name in ("niah_heatmap", "ppl_vs_density", "layer_recall"):
    assert paths[name].stat().st_size > 1000
  assert "accuracy_vs_length" not in paths  # one length: no curve

  def no_model_calls(*args, **kwargs):
    raise AssertionError("a finished case ran again")

  monkeypatch.setattr(model_calls, "greedy_answers", no_model_calls)
  monkeypatch.setattr(model_calls, "token_nll", no_model_calls)
  run_eval(cfg, loaded, platform="cpu", log=lambda _: None)
  assert len(list(iter_records(tmp_path / "results.jsonl"))) == len(rows)
