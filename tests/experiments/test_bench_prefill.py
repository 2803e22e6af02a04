"""bench-prefill on CPU: config parsing, phase accounting, memory statistics
where the backend keeps none, scaling, crossovers and the replay mapping.

The prefills themselves (dense against sparse through one code path) are
in test_bench_prefill_run.py.
"""

import dataclasses

import numpy as np
import pytest

from experiments import bench_prefill
from experiments.config import ConfigError, load_config
from experiments.index_sets import HeadIndices
from experiments.prefill import accounting, replay
from experiments.prefill.settings import CaseSpec, PrefillConfig
from minference_jax import VerticalSlash
from paths import REPO_DIR

CONFIGS = sorted((REPO_DIR / "configs" / "experiments").glob("prefill_*.yaml"))


# ------------------------------------------------------------------ config
@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.stem)
def test_committed_configs_parse(path):
  cfg = load_config(PrefillConfig, path)
  assert cfg.cases and cfg.name.startswith(path.stem)
  for label in cfg.phases:
    assert cfg.case(label).label == label
  for case in cfg.cases:  # every case runs at some length
    assert cfg.lengths_for(case), case.label


def test_results_name_the_model_that_ran():
  from types import SimpleNamespace

  from experiments.prefill.settings import ModelSpec
  from models import ModelConfig

  preset = PrefillConfig(model=ModelSpec(preset="llama3_8b"))
  config = ModelConfig.preset("llama3_8b")
  assert bench_prefill.model_label(
      preset, bench_prefill.Setup(config, {}, {})) == "llama3_8b"
  unnamed = dataclasses.replace(config, name="", num_layers=14)
  sliced = PrefillConfig(model=ModelSpec(source="slice", path="s.npz"))
  piece = SimpleNamespace(meta={"source_model": "SmolLM2-135M-Instruct",
                                "full_num_layers": 30})
  label = bench_prefill.model_label(
      sliced, bench_prefill.Setup(unnamed, {}, {}, piece))
  assert label == "SmolLM2-135M-Instruct, first 14 of 30 layers"


def test_overrides_and_nested_cases(tmp_path):
  f = tmp_path / "c.yaml"
  f.write_text(
      "seq_lens: [4096, 1024]\n"
      "cases:\n"
      "  - {label: d, attention: dense}\n"
      "  - {label: s, layers: [0, 3], indices: replay, max_len: 2048}\n")
  cfg = load_config(PrefillConfig, f, ["model.preset=smollm2_135m",
                                       "timing.budget_s=2", "phases=[s]"])
  assert cfg.model.preset == "smollm2_135m"
  assert cfg.timing.budget_s == 2.0 and cfg.phases == ("s",)
  assert cfg.case("s").layers == (0, 3)
  assert cfg.lengths_for(cfg.case("s")) == [1024]
  assert cfg.lengths_for(cfg.case("d")) == [1024, 4096]


@pytest.mark.parametrize("text,match", [
    ("cases: [{label: a}, {label: a}]", "unique"),
    ("phases: [nope]", "unknown cases"),
    ("cases: [{label: a, attention: dense, indices: replay}]", "sparse"),
    ("cases: [{label: a, executor: model, modes: [cache_host]}]",
     "layerwise"),
    ("cases: [{label: a, attention: pattern_file}]", "pattern_file"),
    ("cases: [{label: a, layers: 0}]", "layers"),
    ("cases: [{label: 'a b'}]", "label"),
    ("timing: {max_repeats: 0}", "max_repeats"),
    ("cases: [{label: a, modes: [decode]}]", "modes"),
    ("seq_lens: []", "seq_lens"),
    ("colour: blue", "unknown config keys"),
])
def test_config_errors_name_the_problem(tmp_path, text, match):
  f = tmp_path / "c.yaml"
  f.write_text(text)
  with pytest.raises(ConfigError, match=match):
    load_config(PrefillConfig, f)


def _tiny_cfg(**kw) -> PrefillConfig:
  model = dict(source="preset", preset="llama3_8b_1048k",
               overrides=dict(hidden_size=64, intermediate_size=128,
                              num_layers=2, num_heads=4, num_kv_heads=2,
                              head_dim=16, vocab_size=96))
  base = dict(seq_lens=(256,), model=model)
  base.update(kw)
  return load_config(PrefillConfig, None,
                     [f"{k}={v!r}" if isinstance(v, str) else
                      f"{k}={_yaml(v)}" for k, v in base.items()])


def _yaml(v):
  import json
  return json.dumps(v)


def test_validate_names_missing_files_and_bad_layers(tmp_path):
  missing = str(tmp_path / "none.json")
  cfg = _tiny_cfg(cases=[dict(label="m", attention="minference")],
                  minference_config=missing)
  with pytest.raises(ConfigError, match="MInference config .*none.json"):
    bench_prefill.validate(cfg)
  cfg = _tiny_cfg(cases=[dict(label="s", attention="searched")],
                  searched_config=missing)
  with pytest.raises(ConfigError, match="pattern search"):
    bench_prefill.validate(cfg)
  cfg = _tiny_cfg(cases=[dict(label="l", layers=[0, 5])])
  with pytest.raises(ConfigError, match=r"layers \[5\]"):
    bench_prefill.validate(cfg)
  cfg = _tiny_cfg(cases=[dict(label="r", indices="replay")],
                  replay=dict(index_dirs=[str(tmp_path)]))
  with pytest.raises(ConfigError,
                     match=r"no recorded index sets for T=\[256\]"):
    bench_prefill.validate(cfg)
  cfg = _tiny_cfg(cases=[dict(label="r", indices="replay"),
                         dict(label="d", attention="dense")],
                  replay=dict(index_dirs=[str(tmp_path)]), only=["d"])
  bench_prefill.validate(cfg)  # the replay case does not run: no check
  bad = tmp_path / "bad.json"
  bad.write_text("{not json")
  cfg = _tiny_cfg(cases=[dict(label="p", attention="pattern_file",
                              pattern_file=str(bad))])
  with pytest.raises(ConfigError, match="not JSON"):
    bench_prefill.validate(cfg)


def test_validate_reads_minference_file_and_checks_heads(shared_dir):
  path = (shared_dir / "data" / "minference_configs"
          / "Llama_3_8B_Instruct_262k_kv_out_v32_fit_o_best_pattern.json")
  cfg = dataclasses.replace(
      _tiny_cfg(cases=[dict(label="m", attention="minference")]),
      minference_config=str(path))
  # Read for the model's 4 heads: the file's head "4" is out of range.
  with pytest.raises(ConfigError, match="layer 0, head 4: head index out of"
                     " range for num_heads=4"):
    bench_prefill.validate(cfg)


# -------------------------------------------------------------- accounting
def test_phase_breakdown_sums_pieces_and_fills_unmeasured_index():
  times = dict(embed=0.5, logits=0.25, qkv=[1.0, 2.0, 3.0],
               index=[0.5, None, 1.5], attention=[2.0, 3.0, 4.0],
               out_mlp=[1.0, 1.0, 1.0])
  out = accounting.phase_breakdown(times, pipelined_s=20.0)
  sec = out["seconds"]
  assert sec["qkv"] == 6.0 and sec["out_mlp"] == 3.0
  assert sec["index"] == 0.5 + 1.0 + 1.5  # the unmeasured layer: the mean
  assert sec["sparse_kernel"] == (2.0 - 0.5) + (3.0 - 1.0) + (4.0 - 1.5)
  # embed + logits + qkv + attention (index + kernel) + out_mlp
  assert out["synchronised_s"] == 0.5 + 0.25 + 6 + 9 + 3
  assert sec["other"] == pytest.approx(20.0 - out["synchronised_s"])
  assert out["index_layers_measured"] == 2 and out["layers"] == 3
  assert out["linear_s"] == 9.0
  shares = [out["fraction"][p] for p in accounting.PHASES if p != "other"]
  assert sum(shares) == pytest.approx(1.0)
  with pytest.raises(ValueError, match="differ in length"):
    accounting.phase_breakdown(dict(times, qkv=[1.0]), 1.0)
  no_pipe = accounting.phase_breakdown(times, None)
  assert no_pipe["seconds"]["other"] == 0.0


def test_scale_to_layers():
  # 2 of 32 layers: 1 s fixed + 2 x 9 s -> 1 + 32 x 9.
  assert accounting.scale_to_layers(19.0, 1.0, 2, 32) == 289.0
  assert accounting.scale_to_layers(5.0, 1.0, 4, 4) == 5.0
  with pytest.raises(ValueError, match="exceeds"):
    accounting.scale_to_layers(1.0, 2.0, 1, 2)


def test_time_runs_takes_the_median_and_budget():
  calls = []

  def run():
    calls.append(1)
    return np.zeros(())

  out = accounting.time_runs(run, warmup=1, min_repeats=3, max_repeats=4,
                             budget_s=1e9)
  assert out["repeats"] == 4 and len(calls) == 5 and not out["from_warmup"]
  assert out["min_s"] <= out["median_s"] <= out["max_s"]
  calls.clear()
  out = accounting.time_runs(run, warmup=2, min_repeats=3, max_repeats=4,
                             budget_s=0.0)  # a warm-up over budget counts
  assert out["from_warmup"] and out["repeats"] == 1 and len(calls) == 2


def test_memory_statistics_where_the_backend_has_none():
  import jax
  assert jax.default_backend() == "cpu"
  assert accounting.device_memory() is None
  peak = accounting.case_peak(None, None, "cpu")
  assert peak["peak_gib"] is None and not peak["peak_exact"]
  assert "cpu backend reports no memory statistics" in peak["note"]
  g = accounting.GIB
  rose = accounting.case_peak(dict(peak_bytes_in_use=2 * g, bytes_in_use=g),
                              dict(peak_bytes_in_use=5 * g), "gpu")
  assert rose["peak_gib"] == 5.0 and rose["peak_exact"]
  same = accounting.case_peak(dict(peak_bytes_in_use=5 * g, bytes_in_use=g),
                              dict(peak_bytes_in_use=5 * g), "gpu")
  assert same["peak_gib"] is None and same["peak_at_most_gib"] == 5.0
  assert "earlier case" in same["note"]


def test_xla_predicted_peak():
  step = dict(argument=10, output=6, alias=4, temp=20, host_output=2)
  # weights 100 + (10 - 3 layer params + 20 + 6 - 4 - 2 host) + 7 kept
  assert accounting.xla_predicted_peak(100, step, 3, 7) == 134
  assert accounting.xla_predicted_peak(100, None, 3, 7) is None


def test_crossover_is_from_where_sparse_always_wins():
  rows = [dict(case="d", T=t, model_s=float(t)) for t in (1, 2, 4, 8)]
  rows += [dict(case="s", T=1, model_s=0.5), dict(case="s", T=2, model_s=3.0),
           dict(case="s", T=4, model_s=2.0), dict(case="s", T=8, model_s=4.0)]
  out = accounting.crossover(rows, "s", "d", "model_s")
  assert out["crossover_T"] == 4  # wins at 1 but loses at 2
  assert out["speedup"] == {1: 2.0, 2: round(2 / 3, 4), 4: 2.0, 8: 2.0}
  rows.append(dict(case="s2", T=8, model_s=9.0))
  assert accounting.crossover(rows, "s2", "d", "model_s")["crossover_T"] is None


def test_crossovers_pass_over_cases_that_failed():
  """An out-of-memory row (error, no timing) is not a measurement: the
  crossover table is made from the rows that ran."""
  cfg = load_config(PrefillConfig, None, [
      "cases=[{label: d, attention: dense}, {label: s, attention:"
      " vertical_slash}]"])
  rows = [dict(case="d", T=t, mode="prefill", implementation="dense",
               model_s=float(t)) for t in (1, 2)]
  rows += [dict(case="s", T=2, mode="prefill", error="RESOURCE_EXHAUSTED"),
           dict(case="s", T=1, mode="prefill", implementation="xla",
                model_s=0.5)]
  out = bench_prefill.crossovers(cfg, rows)
  assert out["s"]["implementation"] == "xla"
  assert out["s"]["model"]["speedup"] == {1: 2.0}


# ------------------------------------------------------------------ replay
def test_layer_and_head_mapping_keeps_depth_and_kv_groups():
  lt, ls = 32, 15
  src = [replay.source_layer(i, lt, ls) for i in range(lt)]
  assert src[0] == 0 and src[-1] == ls - 1
  assert src == sorted(src) and set(src) == set(range(ls))
  n, k, ns, ks = 32, 8, 9, 3
  for layer in (0, 5, 31):
    heads = [replay.source_head(layer, h, n, k, ns, ks) for h in range(n)]
    assert all(0 <= s < ns for s in heads)
    for g in range(k):  # a target KV group maps into one source KV group
      group = {heads[h] // (ns // ks) for h in range(g * 4, g * 4 + 4)}
      assert len(group) == 1
  assert (replay.source_head(1, 0, n, k, ns, ks)
          != replay.source_head(2, 0, n, k, ns, ks))  # members rotate
  with pytest.raises(ValueError):
    replay.source_layer(32, lt, ls)


def test_thin_lines_keeps_forced_lines_and_spreads_the_rest():
  lines = np.concatenate([np.arange(30), np.arange(100, 1070)])
  out = replay.thin_lines(lines, 130, 30)
  assert len(out) == 130 and (np.diff(out) > 0).all()
  assert (out[:30] == np.arange(30)).all()
  gaps = np.diff(out[30:])
  assert gaps.max() - gaps.min() <= 1  # an even stride
  assert (replay.thin_lines(lines, 2000, 30) == lines).all()
  assert (replay.thin_lines(lines, 10, 30) == np.arange(10)).all()


def _recording(seed, t=2048, ls=4, ns=6, ks=2, nv=200, nsl=300):
  rng = np.random.default_rng(seed)
  vertical = np.zeros((ls, ns, nv), np.int32)
  slash = np.zeros((ls, ns, nsl), np.int32)
  for i in range(ls):
    for h in range(ns):
      v = np.concatenate([np.arange(30), 30 + np.sort(rng.choice(
          t - 30, nv - 30, replace=False))])
      s = np.concatenate([np.arange(100), 100 + np.sort(rng.choice(
          t - 100, nsl - 100, replace=False))])
      vertical[i, h], slash[i, h] = v, s[::-1]
  count = lambda n: np.full((ls, ns), n, np.int32)
  meta = dict(seq_len=t, num_kv_heads=ks, n_vertical=nv, n_slash=nsl,
              source_model="random")
  return HeadIndices(vertical, count(nv), slash, count(nsl), meta)


def test_replay_lines_follow_budgets_and_the_mapping():
  seed = 3
  rec = _recording(seed)
  layers = [0, 1, 2, 3, 4, 5, 6, 7]
  small, big = VerticalSlash(100, 150), VerticalSlash(5000, 250)
  budgets = [(small,) * 4 + (big,) * 4] * len(layers)
  lines = replay.replay_lines(rec, layers, 8, 8, 2, budgets)
  replay.check_lines(lines)
  assert lines.vertical.shape == (8, 8, 200) and lines.slash.shape[-1] == 250
  assert (lines.vertical_count[:, :4] == 100).all(), seed
  assert (lines.vertical_count[:, 4:] == 200).all(), seed  # capped
  assert (lines.slash_count[:, :4] == 150).all()
  assert lines.capped == 8 * 4
  # A replayed head holds a subset of its source head's lines.
  src_l = replay.source_layer(5, 8, 4)
  src_h = replay.source_head(5, 6, 8, 2, 6, 2)
  got = set(lines.slash[5, 6, :lines.slash_count[5, 6]].tolist())
  assert got <= set(rec.slash[src_l, src_h].tolist()), seed
  one = lines.layer(5, batch=2)
  assert one.vertical.shape == (2, 8, 200)
  assert (np.diff(np.asarray(one.slash[0, 0, :150])) < 0).all()


def test_replay_budgets_below_the_clamps_keep_the_clamped_lines():
  # Budgets under MInference's minimum (30 columns, 50 diagonals) are
  # raised to it, and the arrays are as wide as the raised budgets.
  rec = _recording(4)
  budgets = [(VerticalSlash(8, 8),) * 8] * 2
  lines = replay.replay_lines(rec, [0, 1], 2, 8, 2, budgets)
  replay.check_lines(lines)
  assert lines.vertical.shape[-1] == 30 and lines.slash.shape[-1] == 50
  assert (lines.vertical_count == 30).all()
  assert (lines.slash_count == 50).all()


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_line_density_counts_the_union_of_lines_in_the_causal_triangle(
    seed):
  rng = np.random.default_rng(seed)
  t = int(rng.integers(1, 300))
  vertical = rng.choice(t, int(rng.integers(0, t + 1)), replace=False)
  slash = rng.choice(t, int(rng.integers(0, t + 1)), replace=False)
  rows, cols = np.indices((t, t))
  on_lines = (np.isin(cols, vertical) | np.isin(rows - cols, slash)) & (
      cols <= rows)
  want = on_lines.sum() / (t * (t + 1) / 2)
  got = replay.line_density(vertical, slash, t)
  assert got == pytest.approx(want, abs=1e-12), f"seed={seed}, T={t}"


def test_replayed_lines_density_is_the_mean_over_heads():
  rec = _recording(5)
  budgets = [(VerticalSlash(40, 60),) * 8] * 2
  lines = replay.replay_lines(rec, [0, 1], 2, 8, 2, budgets)
  per_head = [replay.line_density(lines.vertical[i, h, :40],
                                  lines.slash[i, h, :60], lines.seq_len)
              for i in range(2) for h in range(8)]
  assert lines.density() == pytest.approx(np.mean(per_head))
  assert 0 < lines.density() < 1


def test_settings_defaults_cover_the_issue():
  cfg = PrefillConfig()
  assert cfg.seq_lens == (32768, 131072, 524288, 1048576)
  assert cfg.vs_budget == (1000, 6096)
  case = CaseSpec("x")
  assert dataclasses.replace(case, layers=2).layers == 2


def test_main_config_validates_against_the_8b_geometry(shared_dir):
  """The committed 8B config: MInference's file matches 32 x 32 heads, the
  replay cases find the committed 128K / 1M recordings, and the 4-layer
  cases map to the config's layers."""
  minf = (shared_dir / "data" / "minference_configs"
          / "Llama_3_8B_Instruct_262k_kv_out_v32_fit_o_best_pattern.json")
  path = REPO_DIR / "configs" / "experiments" / "prefill_llama3_8b.yaml"
  if not (REPO_DIR / "experiments" / "results"
          / "model_head_indices_T131072.npz").is_file():
    pytest.skip("the committed 128K recording is absent")
  cfg = load_config(PrefillConfig, path, [
      f"minference_config={minf}", "seq_lens=[131072]",
      "replay.record_missing=false"])
  setup = bench_prefill.validate(cfg)
  assert setup.config.num_layers == 32 and setup.config.num_heads == 32
  assert setup.layers["minf_online_4_layers"] == [1, 9, 17, 25]
  est = bench_prefill.estimate(cfg, setup.config, cfg.case("vs_replay"),
                               setup.sources["vs_replay"], 1 << 20, "prefill")
  # Weights (15 GiB) + activations + the 1M layout and its builder.
  assert 70 < est.total / accounting.GIB < 141


def test_layers_with_equal_patterns_share_one_executable():
  from experiments.prefill import cases
  from minference_jax import PatternConfig
  a, b = VerticalSlash(30, 800), VerticalSlash(1000, 6096)
  source = PatternConfig(layers=((a, b), (b, b), (a, b)))
  cfg = PrefillConfig(seq_lens=(4096,))
  case = CaseSpec("m", attention="pattern_file", pattern_file="x.json",
                  implementation="xla")
  plans, _ = cases.online_plans(cfg, case, source, [0, 1, 2], 2, 4096)
  assert [p.key for p in plans] == [("online", 0), ("online", 1),
                                    ("online", 0)]
  assert all(p.index is not None for p in plans)
  # Below the dense threshold every layer runs dense: one executable.
  auto = dataclasses.replace(case, implementation="auto",
                             dense_threshold=8192)
  plans, _ = cases.online_plans(cfg, auto, source, [0, 1, 2], 2, 4096)
  assert {p.key for p in plans} == {("online", 0)}
  assert all(p.index is None for p in plans)


def test_replayed_layer_step_lowers_for_an_h200():
  """The replay step (kept estimate + layout + Triton kernel) lowers to
  GPU kernels on a CPU (no GPU): the fused estimate's two Triton launches
  and the Vertical-Slash kernel, no host callback."""
  import functools
  import re

  import jax
  import jax.numpy as jnp

  from experiments.prefill import inspect_hlo
  from experiments.prefill.pieces import layer_step
  from minference_jax.index import VerticalSlashIndices
  from models import ModelConfig

  config = ModelConfig.preset("llama3_8b_1048k")
  pieces, p, x, cs = inspect_hlo.layer_args(config, 1024)
  i32 = lambda *s: jax.ShapeDtypeStruct(s, jnp.int32)
  lines = VerticalSlashIndices(i32(1, 32, 100), i32(1, 32), i32(1, 32, 200),
                               i32(1, 32))
  att = replay.ReplayVerticalSlash("triton", (100, 200), 0, False)
  step = functools.partial(layer_step, pieces, att.attend, False)
  with jax.sharding.use_abstract_mesh(inspect_hlo.abstract_h200_mesh()):
    text = jax.jit(step).trace(x, p, cs, cs, lines).lower(
        lowering_platforms=("cuda",)).as_text()
  calls = re.findall(r"stablehlo\.custom_call @([\w$.]+)", text)
  assert calls.count("__gpu$xla.gpu.triton") == 3, calls
  assert not any("callback" in c for c in calls)
  # The inspection tool's own layer step, with the MLP in sequence chunks.
  chunked = inspect_hlo.gpu_layer_calls(config, 2 * 65536, "triton")
  assert chunked["custom_calls"] == {"__gpu$xla.gpu.triton": 3}, chunked


def test_mesh_blocks_are_checked_before_any_work(tmp_path):
  from experiments.config import mesh_config
  from experiments.generate import GenerateConfig
  from models import MeshConfig, ModelConfig

  assert mesh_config(None) is None
  assert mesh_config({}) is None  # one device: the single-device path
  with pytest.raises(ConfigError, match=r"needs 8 devices; this process"):
    mesh_config({"sequence": 8})
  with pytest.raises(ConfigError, match=r"unknown mesh config keys \['seq'"):
    mesh_config({"seq": 8})
  for cls, extra in ((PrefillConfig, ""), (GenerateConfig, "prompt: hi\n")):
    path = tmp_path / f"{cls.__name__}.yaml"
    path.write_text(extra + "mesh: {sequence: 2, tensr: 4}\n")
    with pytest.raises(ConfigError, match="unknown mesh config keys"):
      load_config(cls, path)
  cfg = PrefillConfig(seq_lens=(4096,), cases=(
      CaseSpec("vs"), CaseSpec("r", indices="replay", modes=("cache",))))
  config = ModelConfig.preset("llama3_8b_1048k")  # N/K = 32/8
  with pytest.raises(ConfigError, match="case 'r': on a multi-device mesh"):
    bench_prefill._check_mesh(cfg, MeshConfig(sequence=8), config)
  with pytest.raises(ConfigError, match="num_heads=32 is not divisible"):
    bench_prefill._check_mesh(cfg, MeshConfig(sequence=64), config)
  odd = dataclasses.replace(cfg, seq_lens=(4100,), cases=cfg.cases[:1])
  with pytest.raises(ConfigError, match="T=4100 / batch=1 do not split"):
    bench_prefill._check_mesh(odd, MeshConfig(sequence=8), config)
  # The committed multi-GPU config passes for every GPU count of the run.
  mesh_run = load_config(PrefillConfig, REPO_DIR / "configs" / "experiments"
                         / "prefill_llama3_8b_mesh.yaml")
  for n in (1, 2, 4, 8):
    bench_prefill._check_mesh(mesh_run, MeshConfig(sequence=n), config)
  # What a mesh would silently skip is refused by name.
  one = dataclasses.replace(cfg, cases=cfg.cases[:1])
  bench_prefill._check_mesh(one, MeshConfig(sequence=8), config)
  with pytest.raises(ConfigError, match=r"phases \['vs'\]: the phase"):
    bench_prefill._check_mesh(dataclasses.replace(one, phases=("vs",)),
                              MeshConfig(sequence=8), config)
  pieces = dataclasses.replace(
      one, cases=(CaseSpec("p", executor="pieces"),))
  with pytest.raises(ConfigError, match="case 'p': executor 'pieces'"):
    bench_prefill._check_mesh(pieces, MeshConfig(sequence=8), config)
