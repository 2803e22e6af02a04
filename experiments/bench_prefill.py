"""Whole-model long-context prefill: time to first token and peak memory.

  minference-jax bench-prefill [--config configs/experiments/prefill_NAME.yaml]
      [key=value ...]

For every length T (ascending) and case of the config: the whole model
(embedding, every layer's norms, projections, attention and MLP, logits of
the last position) through the library's executor that users run
(`models.LayerwisePrefill`, what `CausalLM` runs for long prompts; or
`models.forward` under one jit; on a multi-device mesh
`models.make_sharded_prefill`; experiments/prefill/executors.py), compiled
ahead of time (compile time is its own column), then timed as the median
of repeats. Modes: prefill only, with every layer's K/V kept on the device,
or kept in pinned host memory (the benchmark's own executor). Cases may run
a subset of the layers (dense at 1M takes minutes per layer); their times
are scaled to all layers and labelled so. Selected cases also get a phase
breakdown from a synchronised run of separately compiled pieces
(`experiments.prefill.pieces.PiecesPrefill.phases`).
Peak device memory comes from the allocator's statistics (none on CPU:
the rows say so), beside `models.memory`'s estimate and XLA's buffer sizes.

Results: `<out_dir>/<name>.json` (rewritten after every case; a rerun with
resume=true skips finished rows), `<name>.md`, `<name>.png` (log-log
latency against length) and the resolved config `<name>_config.yaml`.
"""

import dataclasses
import gc
import os
import sys
import time
import traceback
from pathlib import Path

import jax
import jax.numpy as jnp
from tqdm import tqdm

from experiments import bench_common
from experiments.config import (
    ConfigError,
    command,
    mesh_config,
    parse_cli,
    save_resolved,
)
from experiments.index_sets import HeadIndices, vs_indices_path
from experiments.model_context import (
    check_context,
    model_geometry,
    with_rope_scaling,
)
from experiments.model_indices import model_head_indices
from experiments.model_slice import load_slice
from experiments.prefill import accounting, cases, ops, report, weights
from experiments.prefill.executors import (
    LibraryPrefill,
    ModelPrefill,
    ShardedModelPrefill,
)
from experiments.prefill.pieces import DecoderPieces, PiecesPrefill
from experiments.prefill.replay import check_lines, find_recording, replay_lines
from experiments.prefill.settings import CaseSpec, PrefillConfig
from minference_jax import PatternConfig, VerticalSlash
from models import MeshConfig, ModelConfig, load_model, memory
from models.sharded_memory import estimate_sharded_prefill_memory

DEFAULT_CONFIG = "configs/experiments/prefill_llama3_8b.yaml"
GIB = accounting.GIB


@dataclasses.dataclass
class Setup:
  """What `validate` established before any slow work."""

  config: ModelConfig
  sources: dict
  layers: dict
  model_slice: object = None
  loaded: object = None  # models.LoadedModel (source "checkpoint")
  skipped: dict = dataclasses.field(default_factory=dict)
  mesh: MeshConfig | None = None  # a multi-device mesh (None: one device)


def model_label(cfg: PrefillConfig, setup: Setup) -> str:
  """The model a run's results name: the config's name, else the slice's
  source model, the checkpoint path, or the preset (random weights)."""
  if setup.config.name:
    return setup.config.name
  if setup.model_slice is not None:
    full = setup.model_slice.meta.get("full_num_layers")
    source = setup.model_slice.meta.get("source_model", cfg.model.path)
    return (f"{source}, first {setup.config.num_layers} of {full} layers"
            if full else str(source))
  if cfg.model.source == "checkpoint":
    return str(cfg.model.path)
  return cfg.model.preset


def _model_config(cfg: PrefillConfig):
  spec = cfg.model
  if spec.source == "slice":
    model_slice = load_slice(spec.path)  # FileNotFoundError: one line
    return model_slice.config, model_slice
  if spec.source == "checkpoint":
    for path in (spec.path, spec.tokens_file):
      if path and not Path(path).exists():
        raise ConfigError(f"model: {path} does not exist")
    # The geometry only: the weights load after every check.
    return model_geometry(spec.path, "model.path"), None
  try:
    base = ModelConfig.preset(spec.preset)
    overrides = dict(spec.overrides)
    if "head_dim" in overrides and "rope" not in overrides:
      # A smaller head keeps the preset's RoPE over the whole head.
      overrides["rope"] = dataclasses.replace(
          base.rope, rotary_dim=overrides["head_dim"])
    return dataclasses.replace(base, **overrides), None
  except (ValueError, TypeError) as e:
    raise ConfigError(f"model: {e}") from None


def _recording_missing(cfg: PrefillConfig, t: int) -> bool:
  return find_recording(cfg.replay.index_dirs, t) is None


def validate(cfg: PrefillConfig) -> Setup:
  """Checks files, patterns, layers and recordings against the model.

  Raises:
    ConfigError: anything a user must fix (one line each).
  """
  config, model_slice = _model_config(cfg)
  config = with_rope_scaling(config, cfg.model.rope_scaling,
                             "model.rope_scaling")
  check_context(config, max(cfg.seq_lens),
                what=f"seq_lens up to {max(cfg.seq_lens)}",
                scaling_key="model.rope_scaling",
                allow_key="model.beyond_context",
                allowed=cfg.model.beyond_context)
  # A slice runs the first layers of a model: pattern configs are the full
  # model's.
  full_layers = (int(model_slice.meta.get("full_num_layers",
                                          config.num_layers))
                 if model_slice is not None else config.num_layers)
  mesh = mesh_config(cfg.mesh)
  if mesh is not None:
    _check_mesh(cfg, mesh, config)
  sources, layers, skipped = {}, {}, {}
  for case in cfg.cases:
    layers[case.label] = cases.run_layers(case, config.num_layers)
    try:
      sources[case.label] = cases.pattern_source(cfg, case, config,
                                                 full_layers)
    except ConfigError as e:
      if not case.optional:
        raise
      skipped[case.label] = str(e)
      continue
    pats = [cases.layer_patterns(sources[case.label], i, config.num_heads)
            for i in layers[case.label]]
    if case.indices == "replay" and (not cfg.only or case.label in cfg.only):
      cases.check_replayable(case, pats)
      missing = [t for t in cfg.lengths_for(case)
                 if _recording_missing(cfg, t)]
      if missing and not (cfg.replay.record_missing
                          and Path(cfg.replay.slice_path).is_file()):
        raise ConfigError(
            f"case {case.label!r}: no recorded index sets for T={missing} in"
            f" {list(cfg.replay.index_dirs)}; record them with `minference-jax"
            " model-indices seq_lens=[...]` or set"
            " replay.record_missing=true with replay.slice_path present")
    if case.executor == "model" and case.layers is not None:
      raise ConfigError(f"case {case.label!r}: executor 'model' runs every"
                        " layer; drop layers or use 'layerwise'")
  return Setup(config, sources, layers, model_slice, None, skipped, mesh)


def _check_mesh(cfg: PrefillConfig, mesh: MeshConfig,
                config: ModelConfig) -> None:
  """What a multi-device run takes: a geometry that splits over the mesh,
  prefill mode (online or replayed indices; no KV cache is kept).

  Raises:
    ConfigError: naming the case or the mesh.
  """
  try:
    mesh.for_model(config)
  except ValueError as e:
    raise ConfigError(f"mesh: {e}") from None
  for t in cfg.seq_lens:
    if t % mesh.sequence or cfg.batch % mesh.data:
      raise ConfigError(f"mesh: T={t} / batch={cfg.batch} do not split over"
                        f" sequence={mesh.sequence} / data={mesh.data}")
  if cfg.phases:
    raise ConfigError(f"phases {list(cfg.phases)}: the phase breakdown runs"
                      " on one device only; pass 'phases=[]' with a"
                      " multi-device mesh")
  for case in cfg.cases:
    kept = sorted(set(case.modes) - {"prefill"})
    if kept:
      raise ConfigError(f"case {case.label!r}: on a multi-device mesh cases"
                        f" run in prefill mode only; drop modes {kept} (no"
                        " KV cache is kept on a mesh)")
    if case.executor != "layerwise":
      raise ConfigError(f"case {case.label!r}: executor {case.executor!r}"
                        " runs on one device; on a multi-device mesh every"
                        " case runs models.make_sharded_prefill (drop"
                        " executor)")


# ---------------------------------------------------------------- memory
def _patterns_budget(source) -> tuple[int, int]:
  if isinstance(source, VerticalSlash):
    return source.n_vertical, source.n_slash
  if isinstance(source, PatternConfig):
    vs = [p for layer in source.layers for p in layer
          if isinstance(p, VerticalSlash)]
    if vs:
      return (max(p.n_vertical for p in vs), max(p.n_slash for p in vs))
  return 0, 0


def _recorded_budget(cfg: PrefillConfig, t: int) -> tuple[int, int]:
  """The line budgets of the recording a replay case reads at T."""
  path = find_recording(cfg.replay.index_dirs, t)
  if path is None:  # recorded at model-indices' defaults
    return 1000, 6096
  meta = HeadIndices.load(path).meta
  return int(meta["n_vertical"]), int(meta["n_slash"])


def estimate(cfg: PrefillConfig, config: ModelConfig, case: CaseSpec,
             source, t: int, mode: str) -> memory.MemoryEstimate:
  """`models.memory`'s peak estimate for one (case, T, mode)."""
  nv, ns = _patterns_budget(source)
  if case.indices == "replay":  # replayed heads keep at most the recording
    rv, rs = _recorded_budget(cfg, t)
    nv, ns = min(nv, rv), min(ns, rs)
  sparse = source is not None and any(
      t >= cases.threshold(case, k) for k in
      ({source.kind} if isinstance(source, VerticalSlash)
       else {p.kind for layer in source.layers for p in layer}))
  impl = ops.resolve_implementation(case.implementation, cfg.interpret)
  if sparse and nv:
    ws = memory.attention_workspace(
        config, t, "vertical_slash", batch=cfg.batch, n_vertical=nv,
        n_slash=ns, scores="xla" if impl == "xla" else "pallas")
  else:
    ws = memory.attention_workspace(
        config, t, "dense_xla" if impl == "xla" else "dense_cudnn",
        batch=cfg.batch)
  dtype_bytes = jnp.dtype(cfg.model.dtype).itemsize
  mesh = mesh_config(cfg.mesh)
  if mesh is not None:  # per device (the VS estimate's workspace)
    s = estimate_sharded_prefill_memory(config, t, mesh,
                                        chunk_size=cfg.chunk_size,
                                        dtype_bytes=dtype_bytes)
    return memory.MemoryEstimate(
        seq_len=t, batch=cfg.batch, keep_kv_cache=False,
        chunk_size=cfg.chunk_size, weights=s.weights, kv_cache=0,
        activations=s.activations, attention_workspace=s.attention_workspace,
        logits=s.logits)
  est = memory.estimate_prefill_memory(
      config, t, batch=cfg.batch, keep_kv_cache=mode != "prefill",
      kv_cache_on_host=mode == "cache_host", chunk_size=cfg.chunk_size,
      dtype_bytes=dtype_bytes, attention_workspace=ws)
  # Every layer's weights are resident; only the running layers keep K/V.
  share = len(cases.run_layers(case, config.num_layers)) / config.num_layers
  return dataclasses.replace(est, kv_cache=int(est.kv_cache * share),
                             host_kv_cache=int(est.host_kv_cache * share))


# ---------------------------------------------------------------- running
_SLICES: dict = {}


def _recorded(cfg: PrefillConfig, t: int) -> HeadIndices:
  """The recording at T, recorded from the slice first if missing."""
  path = find_recording(cfg.replay.index_dirs, t)
  if path is None:
    out = Path(cfg.replay.record_dir or cfg.replay.index_dirs[0])
    print(f"recording index sets at T={t} from {cfg.replay.slice_path}",
          flush=True)
    if cfg.replay.slice_path not in _SLICES:
      _SLICES[cfg.replay.slice_path] = load_slice(cfg.replay.slice_path)
    res, _, _ = model_head_indices(_SLICES[cfg.replay.slice_path], t,
                                   interpret=cfg.interpret)
    path = res.save(vs_indices_path(out, t))
  return HeadIndices.load(path)


def executor_kind(setup: Setup, case: CaseSpec, mode: str) -> str:
  """The executor of a row: "sharded" on a multi-device mesh, "pieces" for
  a host cache, else the case's."""
  if setup.mesh is not None:
    return "sharded"
  return "pieces" if mode == "cache_host" else case.executor


def _pieces_run(cfg, setup, run_params, case, t, mode, lines):
  """The benchmark's own executor (host cache, phase breakdown)."""
  source = setup.sources[case.label]
  pieces = DecoderPieces(setup.config, cfg.chunk_size)
  if case.indices == "replay":
    plans = cases.replay_plans(cfg, case, source, lines, t, cfg.batch)
  else:
    plans, _ = cases.online_plans(cfg, case, source,
                                  setup.layers[case.label],
                                  setup.config.num_heads, t)
  return PiecesPrefill(pieces, run_params, plans, mode)


def _executor(cfg, setup, run_params, case, t, mode, lines, kind):
  """The executor that runs a row (experiments/prefill/executors.py)."""
  if kind == "pieces":
    return _pieces_run(cfg, setup, run_params, case, t, mode, lines)
  source = setup.sources[case.label]
  layers = setup.layers[case.label]
  config = dataclasses.replace(setup.config, num_layers=len(layers))
  if case.indices == "replay":
    attention = cases.replay_layer_attentions(cfg, case, source, lines,
                                              cfg.batch)
  else:
    attention = cases.online_attention(cfg, case, source, layers)
  if kind == "sharded":
    return ShardedModelPrefill(config, run_params, attention, cfg.chunk_size,
                               setup.mesh)
  executor = ModelPrefill if kind == "model" else LibraryPrefill
  return executor(config, run_params, attention, cfg.chunk_size, mode)


def _fixed_seconds(pieces: DecoderPieces, params, tokens) -> float:
  """Median seconds of the embedding and the logits (counted once when a
  layer subset is scaled to all layers)."""
  from experiments.prefill.pieces import head_params

  embed = jax.jit(pieces.embed).lower(params["embed"], tokens).compile()
  x = embed(params["embed"], tokens)[0]
  head = head_params(pieces.config, params)
  logits = jax.jit(pieces.logits).lower(head, x).compile()
  run = lambda: (embed(params["embed"], tokens), logits(head, x))
  return accounting.time_runs(run, warmup=1, min_repeats=3, max_repeats=3,
                              budget_s=1.0)["median_s"]


def run_case(cfg: PrefillConfig, setup: Setup, params, case: CaseSpec,
             t: int, mode: str, tokens, lines, est) -> dict:
  """Compiles, times (and optionally breaks down) one case; a row."""
  layers = setup.layers[case.label]
  kind = executor_kind(setup, case, mode)
  row = dict(case=case.label, T=t, mode=mode, B=cfg.batch,
             attention=case.attention, indices=case.indices,
             executor=kind,
             implementation=("dense" if case.attention == "dense" else
                             ops.resolve_implementation(case.implementation,
                                                        cfg.interpret)),
             layers_run=len(layers), layers_full=setup.config.num_layers,
             scaled=len(layers) != setup.config.num_layers,
             estimate_gib=est.total / GIB)
  if lines is not None:
    row["replay"] = dict(lines.source, capped_heads=lines.capped,
                         mean_slash_lines=lines.density_lines)
    row["line_density"] = lines.density()
  before = accounting.device_memory()
  run_params = weights.layer_subset(params, layers)
  run = _executor(cfg, setup, run_params, case, t, mode, lines, kind)
  row.update(run.compile(tokens))
  timing = accounting.time_runs(
      lambda: run(tokens), **dataclasses.asdict(cfg.timing),
      inspect=lambda out: bool(jnp.all(jnp.isfinite(out[0]))))
  row["logits_finite"] = timing["inspected"]
  gc.collect()
  after = accounting.device_memory()
  row.update(measured_s=timing["median_s"], min_s=timing["min_s"],
             max_s=timing["max_s"], repeats=timing["repeats"],
             from_warmup=timing["from_warmup"])
  row.update(accounting.case_peak(before, after, jax.default_backend()))
  row["memory_note"] = row.pop("note")
  step = max((m for m in run.memory.values() if m),
             key=lambda m: m["temp"] + m["output"], default=None)
  kept = (est.kv_cache if mode == "cache" else 0)
  pred = accounting.xla_predicted_peak(
      bench_weights_bytes(params), step, run.step_bytes(), kept)
  row["xla_predicted_gib"] = None if pred is None else pred / GIB
  row["xla_step_buffers"] = step
  run = None  # frees the executables and their buffers
  gc.collect()
  if row["scaled"]:
    fixed = _fixed_seconds(DecoderPieces(setup.config, cfg.chunk_size),
                           run_params, tokens)
    row["fixed_s"] = fixed
    row["model_s"] = accounting.scale_to_layers(
        timing["median_s"], min(fixed, timing["median_s"]), len(layers),
        setup.config.num_layers)
  else:
    row["model_s"] = timing["median_s"]
  row["tokens_per_s"] = cfg.batch * t / row["model_s"]
  if (case.label in cfg.phases and kind in ("layerwise", "pieces")
      and mode == "prefill" and (not cfg.phase_lens or t in cfg.phase_lens)):
    pieces_run = _pieces_run(cfg, setup, run_params, case, t, mode, lines)
    times = pieces_run.phases(tokens, cfg.phase_index_layers)
    pieces_run = None
    row["phases"] = accounting.phase_breakdown(times, timing["median_s"])
    row["phases"]["compile_s"] = times["compile_s"]
    row["attention_layer_s"] = (sum(times["attention"])
                                / len(times["attention"]))
    if times["pairs_layers"]:
      row["density"] = times["pairs"] / (
          cfg.batch * setup.config.num_heads * t * (t + 1) / 2
          * times["pairs_layers"])
  gc.collect()
  return row


def bench_weights_bytes(params) -> int:
  return sum(int(a.size) * a.dtype.itemsize for a in jax.tree.leaves(params))


def _load_params(cfg: PrefillConfig, setup: Setup):
  dtype = jnp.dtype(cfg.model.dtype)
  if cfg.model.source == "checkpoint":
    setup.loaded = load_model(cfg.model.path, cfg.model.dtype, setup.mesh)
    return setup.loaded.params
  if setup.model_slice is not None:
    return setup.model_slice.params(dtype)
  return weights.device_random_params(
      setup.config, cfg.model.seed, dtype, cfg.model.weight_std,
      None if setup.mesh is None else setup.mesh.for_model(
          setup.config).bind())


def _tokens(cfg: PrefillConfig, setup: Setup, t: int):
  if setup.model_slice is not None:
    return weights.slice_tokens(setup.model_slice, cfg.batch, t)
  if cfg.model.tokens_file:
    return weights.file_tokens(cfg.model.tokens_file, cfg.batch, t,
                               setup.config.vocab_size)
  return weights.random_tokens(setup.config.vocab_size, cfg.batch, t,
                               cfg.model.seed)


def _device_limit_gib(cfg: PrefillConfig) -> float | None:
  if cfg.device_memory_gib is not None:
    return cfg.device_memory_gib
  stats = accounting.device_memory()
  return None if not stats else stats.get("bytes_limit", 0) / GIB


def _host_memory_bytes() -> int:
  return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def _add_ratios(rows: list[dict]) -> None:
  """x dense: the dense case (all layers or scaled) of the same T, mode."""
  dense = {(r["T"], r["mode"]): r["model_s"] for r in rows
           if r.get("attention") == "dense" and r.get("model_s")}
  for r in rows:
    ref = dense.get((r["T"], r["mode"]))
    if ref and r.get("model_s") and r.get("attention") != "dense":
      r["vs_dense"] = ref / r["model_s"]


def crossovers(cfg: PrefillConfig, rows: list[dict]) -> dict:
  """Per sparse case: model- and layer-level crossover against the dense
  case of the same executor."""
  dense = [c for c in cfg.cases if c.attention == "dense"]
  out = {}
  if not dense:
    return out
  for case in cfg.cases:
    if case.attention == "dense":
      continue
    ref = dense[0].label
    # Rows of cases that ran (an error or skip row has no timing).
    done = [r for r in rows if r.get("mode") == "prefill"
            and not (r.get("error") or r.get("skipped"))]
    entry = dict(implementation=next(
        (r["implementation"] for r in done if r["case"] == case.label), ""),
        model=accounting.crossover(done, case.label, ref, "model_s"))
    if any(r.get("attention_layer_s") for r in done
           if r["case"] == case.label):
      entry["layer"] = accounting.crossover(done, case.label, ref,
                                            "attention_layer_s")
    out[case.label] = entry
  return out


@command
def main(argv=None) -> int:
  argv = sys.argv[1:] if argv is None else list(argv)
  cfg, path = parse_cli(PrefillConfig, argv, DEFAULT_CONFIG)
  setup = validate(cfg)
  save_resolved(cfg, Path(cfg.out_dir) / f"{cfg.name}_config.yaml")
  meta = bench_common.environment() | dict(
      name=cfg.name, config_file=path, model=model_label(cfg, setup),
      memory_note="")
  if cfg.compilation_cache_dir:
    jax.config.update("jax_compilation_cache_dir", cfg.compilation_cache_dir)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)
  rows = []
  if cfg.resume_from:
    rows, earlier = report.load_results(cfg.resume_from)
    meta["earlier_runs"] = earlier
  elif cfg.resume:
    rows, _ = report.load_results(Path(cfg.out_dir) / f"{cfg.name}.json")
  rows = [r for r in rows if not (r.get("error") or r.get("skipped"))]
  done = {report.row_key(r) for r in rows}
  jobs = [(t, case, mode) for t in sorted(set(cfg.seq_lens))
          for case in cfg.cases if t in cfg.lengths_for(case)
          and (not cfg.only or case.label in cfg.only)
          for mode in case.modes]
  params = None
  if any((c.label, t, m) not in done for t, c, m in jobs):
    begin = time.perf_counter()
    params = jax.block_until_ready(_load_params(cfg, setup))
    meta["weights_gib"] = bench_weights_bytes(params) / GIB
    meta["weights_init_s"] = time.perf_counter() - begin
    print(f"model {meta['model']}: {setup.config.num_layers} layers,"
          f" {meta['weights_gib']:.2f} GiB in {meta['weights_init_s']:.1f}"
          f" s; device {meta['device']}", flush=True)
  limit = _device_limit_gib(cfg)
  ests = {(t, c.label, m): estimate(cfg, setup.config, c,
                                    setup.sources[c.label], t, m)
          for t, c, m in jobs if c.label in setup.sources}
  # Ascending length, then ascending estimated peak: the allocator's peak
  # (which cannot be reset) then rises with most cases.
  jobs.sort(key=lambda j: (j[0], getattr(ests.get((j[0], j[1].label, j[2])),
                                         "total", 0)))
  recorded = {}
  for t, case, mode in tqdm(jobs, desc="bench-prefill", unit="case"):
    key = (case.label, t, mode)
    if key in done:
      continue
    est = ests.get((t, case.label, mode))
    row = dict(case=case.label, T=t, mode=mode,
               estimate_gib=est and est.total / GIB)
    if case.label in setup.skipped:
      row["skipped"] = setup.skipped[case.label]
    elif cfg.skip_over_memory and limit and est.total / GIB > limit:
      row["skipped"] = (f"estimated peak {est.total / GIB:.1f} GiB exceeds"
                        f" the device's {limit:.1f} GiB")
    elif est.host_kv_cache > 0.8 * _host_memory_bytes():
      row["skipped"] = (f"the host cache ({est.host_kv_cache / GIB:.0f} GiB)"
                        " exceeds 80% of the host's memory"
                        f" ({_host_memory_bytes() / GIB:.0f} GiB)")
    else:
      try:
        lines = None
        if case.indices == "replay":
          if t not in recorded:
            recorded[t] = _recorded(cfg, t)
          src = setup.sources[case.label]
          budgets = [cases.layer_patterns(src, i, setup.config.num_heads)
                     for i in setup.layers[case.label]]
          lines = replay_lines(recorded[t], setup.layers[case.label],
                               setup.config.num_layers,
                               setup.config.num_heads,
                               setup.config.num_kv_heads, budgets)
          check_lines(lines)
        tokens = _tokens(cfg, setup, t)
        row = run_case(cfg, setup, params, case, t, mode, tokens, lines, est)
      except Exception as e:  # noqa: BLE001 - recorded, the run goes on
        traceback.print_exc()
        row["error"] = f"{type(e).__name__}: {str(e)[:300]}"
      gc.collect()
    rows.append(row)
    _add_ratios(rows)
    if cfg.crossover:
      meta["crossover"] = crossovers(cfg, rows)
    row.setdefault("run_date", meta["date"])
    report.write(cfg.out_dir, cfg.name, meta, rows)
    tqdm.write(f"{case.label} T={t} {mode}: "
               + (row.get("error") or row.get("skipped")
                  or f"{row['model_s']:.3f} s"))
  _add_ratios(rows)
  if cfg.crossover:
    meta["crossover"] = crossovers(cfg, rows)
  report.write(cfg.out_dir, cfg.name, meta, rows)
  if cfg.plot:
    report.plot(cfg.out_dir, cfg.name, rows,
                reference=setup.config.num_layers == 32
                and setup.config.hidden_size == 4096)
  report.print_table(rows)
  return 0


if __name__ == "__main__":
  sys.exit(main(sys.argv[1:]))

