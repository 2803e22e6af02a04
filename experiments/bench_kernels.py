"""`minference-jax bench-kernels`: the sparse attention kernels against
cuDNN dense attention, on realistic index sets (GPU).

  minference-jax bench-kernels [--config configs/experiments/bench_kernels.yaml]
      [seq_lens=[131072]] [kernel_impls=[triton,mosaic_gpu]] [key=value ...]

For every (KV heads K, sequence length T): structured synthetic q/k/v
(`experiments.synthetic`; Gaussian if that fails, flagged in the rows),
cuDNN's dense causal attention and our dense flash kernel, then each
pattern at MInference's default budgets with each kernel implementation
(`experiments.kernel_impls`: the ops' public entry points). A pattern's
index sets come from `index_source`, or from the source a pattern names
(`vertical_slash:clustered`):
- builder: the online estimate and layout builders of
  `minference_jax.index` on the synthetic q/k (their time is the index
  time);
- clustered: the clustered-line generators of `experiments.bench_common`
  (their time is the generator's, not an estimate's);
- model: index sets recorded from a real model's heads by `minference-jax
  model-indices` (read from `model_indices_dir`); the index time is the
  builder's estimate on the synthetic q/k (its cost does not depend on the
  values) plus, for Vertical-Slash, the layout built from the recorded
  sets;
- auto: builder, and clustered where the builder fails (flagged).
Per row: density (computed tile area / causal area), index and kernel
times (compile apart, median of repeats), effective TFLOP/s on the
computed area (4 D FLOPs per computed q-k pair) and speed-ups over cuDNN
measured in the same run; then per pattern and implementation the
dense-fallback crossover (the smallest T from which index + kernel beats
cuDNN at every larger measured T). Writes `<name>.json` (environment,
command, resolved config, rows; rewritten after every size, so a time-out
keeps what ran), `<name>.md` (a table) and `<name>.config.yaml` under
`out_dir`.
"""

import dataclasses
import gc
import json
import sys
import time
import traceback
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Literal

import jax
import jax.numpy as jnp

from experiments import bench_common as bc
from experiments import kernel_impls
from experiments.config import (
    CONFIGS_DIR,
    ConfigError,
    command,
    parse_cli,
    repo_relative,
    save_resolved,
)
from experiments.index_sets import (
    BlockSparseHeads,
    bs_indices_path,
    load_model_head_indices,
    vs_indices_path,
)
from experiments.synthetic import synthetic_qkv
from minference_jax import index
from pallas_kernels.a_shape.xla import Config as AShapeXlaConfig
from pallas_kernels.layouts import AShapeLayout

warnings.filterwarnings("ignore", message="The Pallas Triton backend")

DEFAULT_CONFIG = CONFIGS_DIR / "experiments" / "bench_kernels.yaml"
PATTERNS = ("vertical_slash", "block_sparse", "a_shape")
SOURCES = ("builder", "clustered", "model")


@dataclasses.dataclass(frozen=True)
class BenchConfig:
  """Benchmark settings (YAML keys; `key=value` on the command line).

  Attributes:
    seq_lens, kv_heads: the sizes (every K for every T).
    num_heads, head_dim, batch, dtype: N, D, B and the input dtype.
    patterns: "vertical_slash", "block_sparse", "a_shape", optionally with
      an index source suffix (":builder", ":clustered", ":model").
    vs_budget: Vertical-Slash (n_vertical, n_slash).
    bs_top_k: Block-Sparse key blocks per query block.
    a_shape_sizes: A-shape (n_init, n_local).
    index_source: the index source of a pattern without a suffix.
    model_indices_dir: the files of `minference-jax model-indices`.
    inputs: "synthetic" (structured) or "gaussian" q/k/v.
    dense: time cuDNN's dense attention (up to dense_max_len).
    flash_max_len: time our dense flash kernel up to this T.
    vs_configs, bs_configs, flash_configs, a_shape_configs: Pallas-Triton
      launch knobs to sweep (`kernel_impls.TRITON_KNOBS` order); the first
      is the headline row; empty: the default config.
    kernel_impls: implementations timed side by side
      (`kernel_impls.IMPLEMENTATIONS`).
    crossover_lens, crossover_kv_heads: extra (small) sizes timed first,
      with one K, for the dense-fallback crossover.
    warmup, min_repeats, max_repeats, budget_s: timing (a run longer than
      budget_s is timed once).
    seed: inputs and clustered layouts.
    out_dir, name: where the results go (`<name>.json`, `.md`).
    interpret: the kernels' interpret mode (CPU dry runs at tiny sizes).
  """

  seq_lens: tuple[int, ...] = (32768, 131072, 524288, 1048576)
  kv_heads: tuple[int, ...] = (8, 32)
  num_heads: int = 32
  head_dim: int = 128
  batch: int = 1
  dtype: Literal["bfloat16", "float16", "float32"] = "bfloat16"
  patterns: tuple[str, ...] = PATTERNS
  vs_budget: tuple[int, int] = (1000, 6096)
  bs_top_k: int = 100
  a_shape_sizes: tuple[int, int] = (128, 3968)
  index_source: Literal["auto", "builder", "clustered", "model"] = "auto"
  model_indices_dir: str = "outputs/model_indices"
  inputs: Literal["synthetic", "gaussian"] = "synthetic"
  dense: bool = True
  dense_max_len: int = 1 << 20
  flash_max_len: int = 131072
  vs_configs: tuple[tuple[int, ...], ...] = ()
  bs_configs: tuple[tuple[int, ...], ...] = ()
  flash_configs: tuple[tuple[int, ...], ...] = ()
  a_shape_configs: tuple[tuple[int, ...], ...] = ()
  kernel_impls: tuple[str, ...] = ("triton",)
  crossover_lens: tuple[int, ...] = ()
  crossover_kv_heads: int = 8
  warmup: int = 1
  min_repeats: int = 3
  max_repeats: int = 10
  budget_s: float = 8.0
  seed: int = 0
  out_dir: str = "outputs"
  name: str = "bench_kernels"
  interpret: bool = False

  def __post_init__(self):
    for name in ("num_heads", "head_dim", "batch", "bs_top_k", "warmup",
                 "min_repeats", "crossover_kv_heads"):
      if getattr(self, name) < 1:
        raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
    for name in ("seq_lens", "kv_heads", "crossover_lens"):
      if any(v < 1 for v in getattr(self, name)):
        raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
    crossover_k = (self.crossover_kv_heads,) if self.crossover_lens else ()
    bad_k = [kv for kv in (*self.kv_heads, *crossover_k)
             if self.num_heads % kv]
    if bad_k:
      raise ValueError(f"kv_heads {bad_k} do not divide num_heads"
                       f" ({self.num_heads})")
    for spec in self.patterns:
      pattern, _, source = spec.partition(":")
      if pattern not in PATTERNS or (source and source not in SOURCES):
        raise ValueError(f"patterns: unknown {spec!r}; use one of"
                         f" {list(PATTERNS)}, optionally with"
                         f" :{'/:'.join(SOURCES)}")
      if pattern == "a_shape" and source:
        raise ValueError(f"patterns: {spec!r}: A-shape takes no index source")
    unknown = sorted(set(self.kernel_impls) - set(kernel_impls.IMPLEMENTATIONS))
    if unknown:
      raise ValueError(f"kernel_impls: unknown {unknown}; choose from"
                       f" {list(kernel_impls.IMPLEMENTATIONS)}")
    if self.max_repeats < self.min_repeats:
      raise ValueError(f"max_repeats ({self.max_repeats}) < min_repeats"
                       f" ({self.min_repeats})")
    ignored = self.ignored_keys()
    if ignored:
      raise ValueError("; ".join(ignored))

  def ignored_keys(self) -> list[str]:
    """Keys set away from their defaults that nothing here reads."""
    kinds = {spec.partition(":")[0] for spec in self.patterns}
    sources = {spec.partition(":")[2] or self.index_source
               for spec in self.patterns if not spec.startswith("a_shape")}
    changed = {f.name for f in dataclasses.fields(self)
               if getattr(self, f.name) != f.default}
    reads = {
        "vs_budget": ("vertical_slash" in kinds, "no vertical_slash pattern"),
        "vs_configs": ("vertical_slash" in kinds
                       and "triton" in self.kernel_impls,
                       "no vertical_slash pattern on kernel_impls 'triton'"),
        "bs_top_k": ("block_sparse" in kinds, "no block_sparse pattern"),
        "bs_configs": ("block_sparse" in kinds
                       and "triton" in self.kernel_impls,
                       "no block_sparse pattern on kernel_impls 'triton'"),
        "a_shape_sizes": ("a_shape" in kinds, "no a_shape pattern"),
        "a_shape_configs": ("a_shape" in kinds
                            and "triton" in self.kernel_impls,
                            "no a_shape pattern on kernel_impls 'triton'"),
        "index_source": (bool(kinds - {"a_shape"}),
                         "A-shape takes no index source"),
        "model_indices_dir": ("model" in sources,
                              "no pattern reads index sets of source"
                              " 'model'"),
        "crossover_kv_heads": (bool(self.crossover_lens),
                               "crossover_lens is empty"),
        "dense_max_len": (self.dense, "dense is false"),
    }
    return [f"{key} has no effect: {why}" for key, (read, why) in
            reads.items() if key in changed and not read]

  def triton_configs(self) -> dict[str, list]:
    """op -> the Pallas-Triton configs to time ([None]: the default)."""
    lists = dict(vertical_slash=self.vs_configs, block_sparse=self.bs_configs,
                 a_shape=self.a_shape_configs, flash=self.flash_configs)
    return {op: [kernel_impls.triton_config(op, v) for v in values] or [None]
            for op, values in lists.items()}


# ----------------------------------------------------------------- inputs
def make_inputs(cfg: BenchConfig, t: int, kv: int, seed: int):
  """((q [B, T, N, D], k, v [B, T, K, D]), "synthetic" or "gaussian")."""
  dtype = jnp.dtype(cfg.dtype)
  if cfg.inputs == "synthetic":
    try:
      s = synthetic_qkv(seed, batch=cfg.batch, seq_len=t,
                        num_heads=cfg.num_heads, num_kv_heads=kv,
                        head_dim=cfg.head_dim, dtype=dtype)
      return jax.block_until_ready((s.q, s.k, s.v)), "synthetic"
    except Exception as e:  # noqa: BLE001 - fall back, flagged in the row
      print(f"synthetic inputs failed ({type(e).__name__}: {e}); gaussian",
            flush=True)
  qkv = bc.gaussian_qkv(jax.random.key(seed), cfg.batch, t, cfg.num_heads,
                        kv, cfg.head_dim, dtype)
  return jax.block_until_ready(qkv), "gaussian"


def _estimate_fn(cfg: BenchConfig, pattern: str, t: int):
  """fn(q, k) -> layout: the builder's estimate and layout."""
  nv, ns = cfg.vs_budget
  if pattern == "vertical_slash":
    scores = "xla" if cfg.interpret else "pallas"  # as backend="pallas"
    return lambda q, k: index.vertical_slash_layout(
        index.vertical_slash_indices(q, k, nv, ns, scores=scores), t)
  return lambda q, k: index.block_sparse_indices(q, k, cfg.bs_top_k)


def _clustered_fn(cfg: BenchConfig, pattern: str, t: int):
  key = jax.random.key(cfg.seed + t)
  b, n = cfg.batch, cfg.num_heads
  if pattern == "vertical_slash":
    return lambda q, k: bc.clustered_vs_layout(key, b, n, t, *cfg.vs_budget)
  return lambda q, k: bc.clustered_bs_layout(key, b, n, t, cfg.bs_top_k)


def _model_layout(cfg: BenchConfig, pattern: str, q, k, t: int):
  """(layout, index timing) from `model-indices` files: the estimate on
  q/k timed, plus the VS layout from the recorded sets."""
  nv, ns = cfg.vs_budget
  timing = bc.time_with(cfg, _estimate_fn(cfg, pattern, t)
                        if pattern == "block_sparse" else
                        lambda q, k: index.vertical_slash_indices(
                            q, k, nv, ns,
                            scores="xla" if cfg.interpret else "pallas"),
                        (q, k))
  if pattern == "block_sparse":
    heads = BlockSparseHeads.load(bs_indices_path(cfg.model_indices_dir, t))
    if heads.seq_len != t:
      raise ValueError(f"{bs_indices_path(cfg.model_indices_dir, t)} holds"
                       f" T={heads.seq_len}, not {t}")
    return heads.layout(cfg.num_heads, cfg.batch), timing
  recorded = load_model_head_indices(
      vs_indices_path(cfg.model_indices_dir, t), cfg.num_heads, cfg.batch,
      expect_seq_len=t)
  lay = bc.time_with(cfg, lambda ind: index.vertical_slash_layout(ind, t),
                     (recorded,), keep_output=True)
  layout = lay.pop("output")
  timing = dict(median_ms=timing["median_ms"] + lay["median_ms"],
                compile_s=timing["compile_s"] + lay["compile_s"])
  return layout, timing


def build_layout(cfg: BenchConfig, spec: str, q, k, t: int):
  """(layout, index timing or None, source label) of a pattern spec."""
  pattern, _, source = spec.partition(":")
  source = source or cfg.index_source
  if pattern == "a_shape":
    n_init, n_local = cfg.a_shape_sizes
    n = cfg.num_heads
    return AShapeLayout(jnp.full((n,), n_init, jnp.int32),
                        jnp.full((n,), n_local, jnp.int32)), None, "static"
  if source == "model":
    layout, timing = _model_layout(cfg, pattern, q, k, t)
    return layout, timing, "model heads (model-indices)"
  if source == "clustered":
    timing = bc.time_with(cfg, _clustered_fn(cfg, pattern, t), (q, k),
                          keep_output=True)
    return timing.pop("output"), timing, "clustered (synthetic layout)"
  try:
    timing = bc.time_with(cfg, _estimate_fn(cfg, pattern, t), (q, k),
                          keep_output=True)
    return timing.pop("output"), timing, "index builder"
  except Exception as e:  # noqa: BLE001
    if source == "builder":
      raise
    print(f"{pattern} index builder failed at T={t}: {type(e).__name__}: "
          f"{str(e)[:300]}; clustered fallback", flush=True)
    gc.collect()
    timing = bc.time_with(cfg, _clustered_fn(cfg, pattern, t), (q, k),
                          keep_output=True)
    return (timing.pop("output"), timing,
            "clustered (synthetic layout) [builder failed]")


def _pairs(pattern, layout, t, b, config):
  """Computed q-k pairs; A-shape tiles are the Triton config's, or 64 x 64
  (the Triton default at D <= 128 and the Mosaic GPU kernel's)."""
  if pattern == "vertical_slash":
    return bc.vs_tile_pairs(layout)
  if pattern == "block_sparse":
    return bc.bs_tile_pairs(layout)
  bq, bk = ((config.block_q, config.block_k)
            if hasattr(config, "block_q") else (64, 64))
  return bc.a_shape_tile_pairs(layout, t, b, bq, bk)


# ---------------------------------------------------------------- timing
def _cudnn(q, k, v):
  return jax.nn.dot_product_attention(q, k, v, is_causal=True,
                                      implementation="cudnn")


def _timing_row(tm) -> dict:
  return dict(kernel_ms=tm["median_ms"], compile_s=tm["compile_s"],
              repeats=tm["repeats"], spread_ms=tm["max_ms"] - tm["min_ms"])
def _extrapolate_dense(rows, t, kv):
  """cuDNN time at T from the largest smaller measured T (x (T/T')^2), or
  None; the row says it is extrapolated."""
  done = [r for r in rows if r.get("kernel") == "cudnn_dense"
          and r.get("K") == kv and "kernel_ms" in r and r["T"] < t
          and not r.get("extrapolated")]
  if not done:
    return None
  ref = max(done, key=lambda r: r["T"])
  ms = ref["kernel_ms"] * (t / ref["T"]) ** 2
  rows.append(dict(ref, T=t, kernel_ms=ms, extrapolated=True,
                   kernel="cudnn_dense"))
  return ms


def _dense_rows(cfg, base, q, k, v, causal, rows, t, kv, configs, source):
  """cuDNN and our flash kernel; returns cuDNN's time (or None)."""
  d = cfg.head_dim
  dense_ms = None
  if cfg.dense and t <= cfg.dense_max_len:
    try:
      tm = bc.time_with(cfg, _cudnn, (q, k, v))
      dense_ms = tm["median_ms"]
      rows.append(base | dict(kernel="cudnn_dense", inputs=source,
                              density=1.0, **_timing_row(tm),
                              tflops=bc.attention_flops(causal, d)
                              / dense_ms / 1e9))
      print(json.dumps(rows[-1]), flush=True)
    except Exception as e:  # noqa: BLE001
      rows.append(base | dict(kernel="cudnn_dense", error=str(e)[:300]))
      traceback.print_exc()
      dense_ms = _extrapolate_dense(rows, t, kv)
  if t > cfg.flash_max_len:
    return dense_ms
  for c in configs["flash"]:
    row = base | dict(kernel="flash", config=kernel_impls.describe(c),
                      inputs=source)
    try:
      tm = bc.time_with(cfg, kernel_impls.flash_fn(c, cfg.interpret),
                        (q, k, v))
      row.update(density=1.0, **_timing_row(tm),
                 tflops=bc.attention_flops(causal, d) / tm["median_ms"] / 1e9,
                 vs_cudnn=(dense_ms / tm["median_ms"]) if dense_ms else None)
    except Exception as e:  # noqa: BLE001
      row.update(error=str(e)[:300])
      traceback.print_exc()
    rows.append(row)
    print(json.dumps(row), flush=True)
  return dense_ms


def _kernel_runs(cfg, pattern, configs):
  """[(impl, config, fn(q, k, v, layout))] timed for one pattern."""
  runs = []
  for impl in cfg.kernel_impls:
    if impl in kernel_impls.VS_STEP_KEYS and pattern != "vertical_slash":
      continue  # a Vertical-Slash kernel only
    default = None
    if pattern == "a_shape" and impl == "xla":  # static window bounds
      n_init, n_local = cfg.a_shape_sizes
      default = AShapeXlaConfig(max_init=n_init, max_local=n_local)
    for c in (configs[pattern] if impl == "triton" else [default]):
      runs.append((impl, c, kernel_impls.kernel_fn(
          pattern, impl, head_dim=cfg.head_dim, config=c,
          interpret=cfg.interpret)))
  return runs


def bench_size(cfg: BenchConfig, t: int, kv: int, configs: dict,
               rows: list, seed: int) -> None:
  """Appends the rows of one (T, K) to `rows` (module docstring)."""
  n, d, b = cfg.num_heads, cfg.head_dim, cfg.batch
  base = dict(T=t, N=n, K=kv, D=d, B=b, dtype=cfg.dtype)
  t0 = time.perf_counter()
  (q, k, v), source = make_inputs(cfg, t, kv, seed)
  print(f"inputs T={t} K={kv} ({source}) {time.perf_counter() - t0:.1f}s",
        flush=True)
  causal = bc.causal_pairs(t) * b * n
  dense_ms = _dense_rows(cfg, base, q, k, v, causal, rows, t, kv, configs,
                         source)
  for spec in cfg.patterns:
    pattern = spec.partition(":")[0]
    try:
      layout, itm, lsource = build_layout(cfg, spec, q, k, t)
    except Exception as e:  # noqa: BLE001
      rows.append(base | dict(kernel=spec, error=str(e)[:300]))
      traceback.print_exc()
      continue
    index_ms = itm["median_ms"] if itm else 0.0
    for impl, c, fn in _kernel_runs(cfg, pattern, configs):
      row = base | dict(kernel=spec, impl=impl,
                        config=kernel_impls.describe(c), inputs=source,
                        layout=lsource, index_ms=index_ms)
      try:
        tm = bc.time_with(cfg, fn, (q, k, v, layout))
        pairs = _pairs(pattern, layout, t, b, c)
        total = index_ms + tm["median_ms"]
        row.update(**_timing_row(tm),
                   index_compile_s=itm["compile_s"] if itm else 0.0,
                   total_ms=total, density=pairs / causal,
                   tflops=bc.attention_flops(pairs, d) / tm["median_ms"]
                   / 1e9)
        if dense_ms:
          row.update(kernel_speedup=dense_ms / tm["median_ms"],
                     layer_speedup=dense_ms / total)
      except Exception as e:  # noqa: BLE001
        row.update(error=f"{type(e).__name__}: {str(e)[:300]}")
        traceback.print_exc()
      rows.append(row)
      print(json.dumps(row), flush=True)
    del layout
    gc.collect()
  del q, k, v
  gc.collect()


def crossover_from_rows(rows, patterns, kv):
  """Smallest T where index + kernel (headline config) beats cuDNN dense.

  Over every measured size with K == kv, per pattern and kernel
  implementation: the crossover is the smallest T from which the sparse
  layer wins at every larger measured T (None if never). Keys are the
  pattern names for the Triton kernels and "pattern@impl" for the others
  (e.g. "block_sparse@mosaic_gpu").
  """
  found = {}
  impls = sorted({r.get("impl", "triton") for r in rows if r.get("impl")},
                 key=lambda i: (i != "triton", i)) or ["triton"]
  for name in patterns:
    for impl in impls:
      speed = {}
      for r in rows:
        if (r.get("kernel") == name and r.get("K") == kv
            and r.get("impl", "triton") == impl and r.get("layer_speedup")
            and r["T"] not in speed):
          speed[r["T"]] = r["layer_speedup"]  # first (headline) config
      if not speed:
        continue
      lens = sorted(speed)
      cross = next((t for t in lens
                    if all(speed[u] > 1.0 for u in lens if u >= t)), None)
      key = name if impl == "triton" else f"{name}@{impl}"
      found[key] = dict(crossover_T=cross, layer_speedup=speed)
  return found


def check_model_files(cfg: BenchConfig) -> None:
  """The `model-indices` files every `:model` pattern needs exist.

  Raises:
    ConfigError: naming the first missing file.
  """
  paths = dict(vertical_slash=vs_indices_path, block_sparse=bs_indices_path)
  for spec in cfg.patterns:
    pattern, _, source = spec.partition(":")
    if (source or cfg.index_source) != "model" or pattern not in paths:
      continue
    for t in (*cfg.crossover_lens, *cfg.seq_lens):
      path = paths[pattern](cfg.model_indices_dir, t)
      if not path.is_file():
        raise ConfigError(
            f"patterns: {spec} needs {path}; make it with `minference-jax "
            f"model-indices seq_lens=[{t}] out_dir={cfg.model_indices_dir}`")


def run(cfg: BenchConfig, config_file: str | None = None) -> list[dict]:
  """Runs the benchmark (module docstring); returns its rows.

  Raises:
    ConfigError: a `model-indices` file that a pattern needs is missing.
  """
  check_model_files(cfg)
  save_resolved(cfg, Path(cfg.out_dir) / f"{cfg.name}.config.yaml")
  meta = bc.environment() | dict(config_file=repo_relative(config_file),
                                 config=dataclasses.asdict(cfg))
  print(json.dumps(meta), flush=True)
  configs = cfg.triton_configs()
  rows = []
  # Crossover sizes first (small and quick), then the main sizes; results
  # are rewritten after every size so that a time-out keeps what ran.
  for t in cfg.crossover_lens:
    bench_size(dataclasses.replace(cfg, flash_max_len=0), t,
               cfg.crossover_kv_heads, {k: v[:1] for k, v in configs.items()},
               rows, cfg.seed + t)
    rows[-1]["section"] = "crossover"
    _write(cfg, meta, rows)
  for kv in cfg.kv_heads:
    for t in cfg.seq_lens:
      bench_size(cfg, t, kv, configs, rows, cfg.seed + t + kv)
      meta["crossover"] = crossover_from_rows(
          rows, cfg.patterns, cfg.crossover_kv_heads)
      _write(cfg, meta, rows)
  print("crossover:", json.dumps(meta.get("crossover")), flush=True)
  _write(cfg, meta, rows)
  _print_table(rows)
  return rows


@command
def main(argv: Sequence[str] | None = None) -> None:
  cfg, path = parse_cli(BenchConfig, sys.argv[1:] if argv is None else argv,
                        DEFAULT_CONFIG)
  run(cfg, path)


def _write(cfg, meta, rows):
  cols = [("T", "T"), ("K", "K"), ("kernel", "kernel"), ("impl", "impl"),
          ("config", "config"),
          ("layout", "indices"), ("density", "density"),
          ("index_ms", "index ms"), ("kernel_ms", "kernel ms"),
          ("total_ms", "index+kernel ms"), ("tflops", "eff. TFLOP/s"),
          ("kernel_speedup", "x cuDNN (kernel)"),
          ("layer_speedup", "x cuDNN (index+kernel)"),
          ("vs_cudnn", "flash x cuDNN"), ("compile_s", "compile s"),
          ("error", "error")]
  bc.write_results(cfg.out_dir, cfg.name, meta, rows, cols)


def _print_table(rows):
  print(f"\n{'T':>8} {'K':>3} {'kernel':15} {'impl':13} {'dens':>6} "
        f"{'idx ms':>8} "
        f"{'kern ms':>9} {'TF/s':>6} {'xcuDNN':>7} {'layer':>6}  config")
  for r in rows:
    if "error" in r:
      print(f"{r['T']:>8} {r['K']:>3} {r['kernel']:15} ERROR "
            f"{r['error'][:60]}")
      continue
    print(f"{r['T']:>8} {r['K']:>3} {r['kernel']:15} "
          f"{r.get('impl', ''):13} {r.get('density', 0):6.3f} "
          f"{r.get('index_ms', 0):8.2f} "
          f"{r['kernel_ms']:9.2f} {r.get('tflops', 0):6.0f} "
          f"{r.get('kernel_speedup') or r.get('vs_cudnn') or 0:7.2f} "
          f"{r.get('layer_speedup') or 0:6.2f}  {r.get('config', '')}")


if __name__ == "__main__":
  main()
