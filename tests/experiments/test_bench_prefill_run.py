"""A tiny prefill (2 layers, 1K tokens) through bench-prefill's code path.

The layer pieces chained must give `models.forward`'s logits; sparse
attention whose lines cover every causal key (online estimate or replayed
recording) must give the dense logits through the same executor; the
command writes its result files, says that the CPU backend has no memory
statistics, and a rerun resumes.
"""

import dataclasses
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from experiments import bench_prefill
from experiments.config import load_config
from experiments.index_sets import HeadIndices
from experiments.prefill import cases, replay, weights
from experiments.prefill.executors import LibraryPrefill
from experiments.prefill.pieces import DecoderPieces, PiecesPrefill
from experiments.prefill.settings import CaseSpec, ModelSpec, PrefillConfig
from minference_jax import (
    AShape,
    BlockSparse,
    DenseAttention,
    PatternConfig,
    VerticalSlash,
)
from models import LayerAttentions, LayerwisePrefill, forward_jit

T = 1024
TINY = dict(hidden_size=64, intermediate_size=128, num_layers=2,
            num_heads=4, num_kv_heads=2, head_dim=16, vocab_size=96)
SPEC = ModelSpec(overrides=TINY, dtype="float32", weight_std=0.3)
# Vertical-Slash budgets of T lines: every causal key is kept.
CFG = PrefillConfig(model=SPEC, seq_lens=(T,), vs_budget=(T, T),
                    chunk_size=384)


def _cfg(tmp_path, cases_, **kw) -> PrefillConfig:
  raw = dict(
      name="tiny", out_dir=str(tmp_path / "out"), seq_lens=[T],
      chunk_size=384, vs_budget=[T, T],
      model=dict(preset="llama3_8b_1048k", overrides=TINY, dtype="float32",
                 weight_std=0.3),
      cases=cases_, timing=dict(warmup=1, min_repeats=1, max_repeats=1,
                                budget_s=0.0))
  raw.update(kw)
  path = tmp_path / "c.yaml"
  path.write_text(json.dumps(raw))
  return load_config(PrefillConfig, path)


@pytest.fixture(scope="module")
def model():
  setup = bench_prefill.validate(CFG)
  params = weights.device_random_params(setup.config, 0, jnp.float32, 0.3)
  tokens = weights.random_tokens(setup.config.vocab_size, 1, T, 0)
  return setup.config, params, tokens


def _run(config, params, tokens, plans, mode="prefill"):
  run = PiecesPrefill(DecoderPieces(config, 384), params, plans, mode)
  info = run.compile(tokens)
  logits, kv = run(tokens)
  return np.asarray(logits), kv, info


def test_pieces_give_the_model_logits_and_sparse_equals_dense(model):
  config, params, tokens = model
  want, _ = forward_jit(params, tokens, config=config,
                        attention=DenseAttention(implementation="xla"),
                        chunk_size=384)
  cfg = CFG
  dense, _ = cases.online_plans(cfg, CaseSpec("d", attention="dense"), None,
                                [0, 1], 4, T)
  got, kv, info = _run(config, params, tokens, dense, mode="cache")
  assert info["executables"] == 3  # embed, one shared layer step, logits
  np.testing.assert_allclose(got, np.asarray(want), rtol=2e-4, atol=2e-4)
  assert len(kv) == 2 and kv[0][0].shape == (1, T, 2, 16)
  # Sparse through the library's executor (the default), its cache kept.
  vs_case = CaseSpec("vs", attention="vertical_slash", implementation="xla")
  source = cases.pattern_source(cfg, vs_case, config)
  sparse, _ = cases.online_plans(cfg, vs_case, source, [0, 1], 4, T)
  assert all(p.index is not None for p in sparse)
  lib = LibraryPrefill(config, params, cases.online_attention(
      cfg, vs_case, source, [0, 1]), 384, "cache")
  assert lib.compile(tokens)["executables"] == 3
  lib_logits, cache = lib(tokens)
  np.testing.assert_allclose(np.asarray(lib_logits), got, rtol=2e-4,
                             atol=2e-4)
  np.testing.assert_allclose(np.asarray(cache.k[1]), np.asarray(kv[1][0]),
                             rtol=2e-4, atol=2e-4)


def test_replayed_lines_cover_everything_equal_dense(model):
  config, params, tokens = model
  cfg = CFG
  # A recording whose every head keeps every column and every diagonal.
  ls, ns = 2, 4
  full_v = np.broadcast_to(np.arange(T, dtype=np.int32), (ls, ns, T))
  full_s = np.broadcast_to(np.arange(T - 1, -1, -1, dtype=np.int32),
                           (ls, ns, T))
  counts = np.full((ls, ns), T, np.int32)
  rec = HeadIndices(full_v.copy(), counts, full_s.copy(), counts.copy(),
                    dict(seq_len=T, num_kv_heads=2, source_model="full"))
  case = CaseSpec("r", attention="vertical_slash", indices="replay",
                  implementation="xla")
  source = cases.pattern_source(cfg, case, config)
  budgets = [cases.layer_patterns(source, i, 4) for i in (0, 1)]
  lines = replay.replay_lines(rec, [0, 1], 2, 4, 2, budgets)
  replay.check_lines(lines)
  plans = cases.replay_plans(cfg, case, source, lines, T, 1)
  assert len({p.key for p in plans}) == 1  # one executable for all layers
  want, _ = forward_jit(params, tokens, config=config,
                        attention=DenseAttention(implementation="xla"),
                        chunk_size=384)
  # Through the library's executor: the lines of each layer are traced
  # arguments of one shared layer step.
  lib = LibraryPrefill(config, params, cases.replay_layer_attentions(
      cfg, case, source, lines, 1), 384, "prefill")
  assert lib.compile(tokens)["executables"] == 3
  np.testing.assert_allclose(np.asarray(lib(tokens)[0]), np.asarray(want),
                             rtol=2e-4, atol=2e-4)
  # The kept online estimate is in the compiled layer step.
  kept = jax.jit(plans[0].index).lower(
      *_qk(config), plans[0].lines).as_text()
  bare = jax.jit(replay.ReplayVerticalSlash("xla").index).lower(
      *_qk(config), plans[0].lines).as_text()
  assert kept.count("dot_general") > bare.count("dot_general")


def _qk(config):
  q = jax.ShapeDtypeStruct((1, T, config.num_heads, config.head_dim),
                           jnp.float32)
  k = jax.ShapeDtypeStruct((1, T, config.num_kv_heads, config.head_dim),
                           jnp.float32)
  return q, k


def test_command_writes_results_and_resumes(tmp_path, capsys):
  cfg_cases = [dict(label="dense", attention="dense", implementation="xla",
                    modes=["prefill", "cache_host"]),
               dict(label="dense_1", attention="dense", implementation="xla",
                    layers=1)]
  _cfg(tmp_path, cfg_cases, phases=["dense"], crossover=True)
  argv = ["--config", str(tmp_path / "c.yaml")]
  assert bench_prefill.main(argv) == 0
  out = tmp_path / "out"
  data = json.loads((out / "tiny.json").read_text())
  rows = {(r["case"], r["mode"]): r for r in data["rows"]}
  assert set(rows) == {("dense", "prefill"), ("dense", "cache_host"),
                       ("dense_1", "prefill")}
  full = rows[("dense", "prefill")]
  assert full["executor"] == "layerwise"  # the library's, by default
  assert rows[("dense", "cache_host")]["executor"] == "pieces"
  assert full["logits_finite"] and full["model_s"] > 0
  assert full["peak_gib"] is None and "no memory statistics" in (
      full["memory_note"])
  assert full["estimate_gib"] > 0 and full["xla_predicted_gib"] > 0
  ph = full["phases"]
  assert ph["layers"] == 2 and ph["seconds"]["index"] == 0.0
  assert full["density"] == 1.0
  scaled = rows[("dense_1", "prefill")]
  assert scaled["scaled"] and scaled["layers_run"] == 1
  assert scaled["model_s"] > scaled["measured_s"] - scaled["fixed_s"]
  assert (out / "tiny.md").read_text().count("| dense") >= 2
  assert (out / "tiny.png").is_file() and (out / "tiny_config.yaml").is_file()
  assert "no memory statistics" in (out / "tiny.md").read_text()
  capsys.readouterr()
  assert bench_prefill.main(argv) == 0  # resumes: nothing runs again
  assert "dense T=1024" not in capsys.readouterr().err
  again = json.loads((out / "tiny.json").read_text())["rows"]
  assert len(again) == 3


def test_shared_steps_case_runs_a_per_head_config_in_one_step(model):
  """`shared_steps`: a config whose layers differ runs as pattern tables,
  one compiled layer step, with the per-layer attention's logits."""
  config, params, tokens = model
  heads = config.num_heads
  source = PatternConfig(layers=(
      (VerticalSlash(64, 96),) * heads,
      (AShape(16, 256), BlockSparse(4)) * (heads // 2)))
  plain_case = CaseSpec("p", attention="pattern_file", pattern_file="p.json",
                        implementation="xla")
  shared_case = dataclasses.replace(plain_case, shared_steps=True)
  layers = [1, 0]  # reordered to the run's numbering
  plain = cases.online_attention(CFG, plain_case, source, layers)
  shared = cases.online_attention(CFG, shared_case, source, layers)
  assert isinstance(shared, LayerAttentions)
  assert LayerwisePrefill(config, plain).num_steps(T) == 2
  assert LayerwisePrefill(config, shared).num_steps(T) == 1
  want, _ = LayerwisePrefill(config, plain)(params, tokens)
  got, _ = LayerwisePrefill(config, shared)(params, tokens)
  np.testing.assert_allclose(got, want, rtol=2e-5, atol=2e-5)
  for bad in (dict(attention="vertical_slash"),
              dict(indices="replay", attention="minference"),
              dict(attention="minference", executor="pieces")):
    with pytest.raises(ValueError, match="shared_steps applies"):
      CaseSpec("b", shared_steps=True, **bad)
