"""Kernel benchmark: sparse Pallas kernels vs cuDNN dense, on realistic indices.

  PYTHONPATH=. python3 -m experiments.bench_kernels \
      [--config configs/experiments/bench_kernels.yaml] [key=value ...]

For every (KV heads, T): structured synthetic q/k/v (experiments.synthetic;
Gaussian if absent), dense cuDNN causal attention and our flash kernel, then
each sparse pattern at MInference's defaults: index build time (the real
builders in minference_jax.index; the clustered generator of bench_common if
absent or failing, flagged in the row), kernel time, density (computed tile
area / causal area), effective TFLOP/s on the computed area (4 * D FLOPs per
computed q-k pair) and ratios to cuDNN measured in the same run. Then the
dense-fallback crossover: the smallest T at which index + kernel beats cuDNN.
Writes JSON + a markdown table (GPU, jax version, git sha, command line).
"""

import dataclasses
import gc
import json
import sys
import time
import traceback
import warnings

import jax
import jax.numpy as jnp

from experiments import bench_common as bc
from pallas_kernels import a_shape, block_sparse, flash, vertical_slash
from pallas_kernels.layouts import AShapeLayout

warnings.filterwarnings("ignore", message="The Pallas Triton backend")

DEFAULT_CONFIG = "configs/experiments/bench_kernels.yaml"


@dataclasses.dataclass(frozen=True)
class BenchConfig:
  """Benchmark settings (YAML keys; `key=value` on the command line)."""

  seq_lens: tuple[int, ...] = (32768, 131072, 524288, 1048576)
  kv_heads: tuple[int, ...] = (8, 32)
  num_heads: int = 32
  head_dim: int = 128
  batch: int = 1
  dtype: str = "bfloat16"
  patterns: tuple[str, ...] = ("vertical_slash", "block_sparse", "a_shape")
  vs_budget: tuple[int, ...] = (1000, 6096)
  bs_top_k: int = 100
  a_shape_sizes: tuple[int, ...] = (128, 3968)
  index_source: str = "auto"  # auto | builder | clustered
  inputs: str = "synthetic"  # synthetic | gaussian
  dense: bool = True
  dense_max_len: int = 1 << 20
  flash_max_len: int = 131072
  # Kernel config variants: the first of each list is the headline row.
  # vs: [num_warps, num_stages, block_c]; bs: [num_warps, num_stages];
  # flash / a_shape: [block_q, block_k, num_warps, num_stages]. [] = default.
  vs_configs: tuple[tuple[int, ...], ...] = ()
  bs_configs: tuple[tuple[int, ...], ...] = ()
  flash_configs: tuple[tuple[int, ...], ...] = ()
  a_shape_configs: tuple[tuple[int, ...], ...] = ()
  # Kernel implementations timed side by side: "triton" (Pallas-Triton,
  # any GPU), "mosaic_gpu" (Hopper: wgmma + TMA; default configs),
  # "mosaic_gpu_qb" / "mosaic_gpu_gqa" (the same with another CTA order,
  # `MGPU_ORDERS`; for Vertical-Slash "mosaic_gpu" is the library default,
  # whose keys per step follow `auto_step_keys`), and "mosaic_gpu_k64" /
  # "mosaic_gpu_k128" (Vertical-Slash only: 64 / 128 keys per step, each
  # with its default config).
  kernel_impls: tuple[str, ...] = ("triton",)
  crossover_lens: tuple[int, ...] = ()
  crossover_kv_heads: int = 8
  warmup: int = 1
  min_repeats: int = 3
  max_repeats: int = 10
  budget_s: float = 8.0
  seed: int = 0
  out_dir: str = "experiments/results"
  name: str = "bench_kernels"
  interpret: bool = False  # CPU dry run of this script (tiny sizes only)


def _tuple_configs(raw, mod, build):
  if not raw:
    return [mod.Config.get_default(128)]
  return [build(*c) for c in raw]


def _configs(cfg):
  return dict(
      vs=_tuple_configs(cfg.vs_configs, vertical_slash, lambda w, s, c=64:
                        vertical_slash.Config(num_warps=w, num_stages=s,
                                              block_c=c)),
      bs=_tuple_configs(cfg.bs_configs, block_sparse, lambda w, s:
                        block_sparse.Config(num_warps=w, num_stages=s)),
      flash=_tuple_configs(cfg.flash_configs, flash, lambda bq, bk, w, s:
                           flash.Config(block_q=bq, block_k=bk, num_warps=w,
                                        num_stages=s)),
      a_shape=_tuple_configs(cfg.a_shape_configs, a_shape, lambda bq, bk, w,
                             s: a_shape.Config(block_q=bq, block_k=bk,
                                               num_warps=w, num_stages=s)),
  )


def _describe(c) -> str:
  return ",".join(f"{f.name}={getattr(c, f.name)}"
                  for f in dataclasses.fields(c))


def _inputs(cfg, t, kv, key):
  dtype = jnp.dtype(cfg.dtype)
  shape = dict(batch=cfg.batch, seq_len=t, num_heads=cfg.num_heads,
               num_kv_heads=kv, head_dim=cfg.head_dim)
  if cfg.inputs == "synthetic":
    try:
      from experiments import synthetic
      s = synthetic.synthetic_qkv(int(key), dtype=dtype, **shape)
      return jax.block_until_ready((s.q, s.k, s.v)), "synthetic"
    except Exception as e:  # noqa: BLE001 - fall back, flagged in the row
      print(f"synthetic inputs failed ({type(e).__name__}: {e}); gaussian",
            flush=True)
  qkv = bc.gaussian_qkv(jax.random.key(key), cfg.batch, t, cfg.num_heads,
                        kv, cfg.head_dim, dtype)
  return jax.block_until_ready(qkv), "gaussian"


def _index_fns(cfg, t):
  """pattern -> (builder fn(q, k) -> layout, source), real or clustered."""
  n, b = cfg.num_heads, cfg.batch
  nv, ns = cfg.vs_budget
  fns = {}
  if cfg.index_source in ("auto", "builder"):
    try:
      from minference_jax import index
      scores = "xla" if cfg.interpret else "pallas"  # as backend="pallas"
      fns["vertical_slash"] = (lambda q, k: index.vertical_slash_layout(
          index.vertical_slash_indices(q, k, nv, ns, scores=scores), t),
                               "index builder")
      fns["block_sparse"] = (lambda q, k: index.block_sparse_indices(
          q, k, cfg.bs_top_k), "index builder")
    except ImportError:
      if cfg.index_source == "builder":
        raise
  key = jax.random.key(cfg.seed + t)
  fns.setdefault("vertical_slash", (lambda q, k: bc.clustered_vs_layout(
      key, b, n, t, nv, ns), "clustered (synthetic layout)"))
  fns.setdefault("block_sparse", (lambda q, k: bc.clustered_bs_layout(
      key, b, n, t, cfg.bs_top_k), "clustered (synthetic layout)"))
  return fns


def _cudnn(q, k, v):
  return jax.nn.dot_product_attention(q, k, v, is_causal=True,
                                      implementation="cudnn")


def _build_layout(cfg, pattern, fns, q, k, t):
  """(layout, index timing or None, source); clustered on builder failure."""
  if pattern == "a_shape":
    n_init, n_local = cfg.a_shape_sizes
    n = cfg.num_heads
    return AShapeLayout(jnp.full((n,), n_init, jnp.int32),
                        jnp.full((n,), n_local, jnp.int32)), None, "static"
  fn, source = fns[pattern]
  try:
    timing = bc.time_with(cfg, fn, (q, k), keep_output=True)
    return timing.pop("output"), timing, source
  except Exception as e:  # noqa: BLE001
    if source != "index builder" or cfg.index_source == "builder":
      raise
    print(f"{pattern} index builder failed at T={t}: {type(e).__name__}: "
          f"{str(e)[:300]}; clustered fallback", flush=True)
    gc.collect()
    clustered = _index_fns(dataclasses.replace(cfg,
                                               index_source="clustered"), t)
    fn, source = clustered[pattern]
    timing = bc.time_with(cfg, fn, (q, k), keep_output=True)
    return timing.pop("output"), timing, source + " [builder failed]"


# "mosaic_gpu_<order>": the Mosaic GPU kernel with Config.fastest_axis.
MGPU_ORDERS = {"mosaic_gpu": "heads", "mosaic_gpu_qb": "query_blocks",
               "mosaic_gpu_gqa": "gqa_group"}
# Vertical-Slash only: 64 or 128 (paired) keys per step, each with its
# default config ("mosaic_gpu" is the library default, `auto_step_keys`).
MGPU_STEP_KEYS = {"mosaic_gpu_k64": 64, "mosaic_gpu_k128": 128}
KERNEL_IMPLS = ("triton", *MGPU_ORDERS, *MGPU_STEP_KEYS)


def _mosaic_gpu_kernel_fn(pattern, interpret, impl="mosaic_gpu"):
  """The Mosaic GPU (Hopper) kernel of a pattern: its default config, with
  the CTA order of `impl` (`MGPU_ORDERS`), or Vertical-Slash at the keys
  per step of `impl` (`MGPU_STEP_KEYS`)."""
  if impl in MGPU_STEP_KEYS and pattern != "vertical_slash":
    raise ValueError(f"{impl} is a Vertical-Slash kernel, not {pattern}")
  if pattern == "vertical_slash" and impl in ("mosaic_gpu", *MGPU_STEP_KEYS):
    # The default config at those keys per step (None, for "mosaic_gpu":
    # the library default, `auto_step_keys`).
    from pallas_kernels.vertical_slash import pallas_mosaic_gpu as vs_mod
    step_keys = MGPU_STEP_KEYS.get(impl)
    return lambda q, k, v, lay: vs_mod.vertical_slash_attention_mgpu(
        q, k, v, lay, step_keys=step_keys, interpret=interpret)
  if pattern == "vertical_slash":
    from pallas_kernels.vertical_slash import pallas_mosaic_gpu as mod
    fn = mod.vertical_slash_attention_mgpu
  elif pattern == "block_sparse":
    from pallas_kernels.block_sparse import pallas_mosaic_gpu as mod
    fn = mod.block_sparse_attention_mgpu
  else:
    from pallas_kernels.a_shape import pallas_mosaic_gpu as mod
    fn = mod.a_shape_attention_mgpu

  def run(q, k, v, lay):
    config = dataclasses.replace(mod.Config.get_default(q.shape[-1]),
                                 fastest_axis=MGPU_ORDERS[impl])
    return fn(q, k, v, lay, config=config, interpret=interpret)

  return run


def _kernel_fn(pattern, config, interpret):
  if pattern == "vertical_slash":
    return lambda q, k, v, lay: vertical_slash.vertical_slash_attention(
        q, k, v, lay, config=config, interpret=interpret)
  if pattern == "block_sparse":
    return lambda q, k, v, lay: block_sparse.block_sparse_attention(
        q, k, v, lay, config=config, interpret=interpret)
  return lambda q, k, v, lay: a_shape.a_shape_attention(
      q, k, v, lay, config=config, interpret=interpret)


def _pairs(pattern, layout, t, b, config):
  if pattern == "vertical_slash":
    return bc.vs_tile_pairs(layout)
  if pattern == "block_sparse":
    return bc.bs_tile_pairs(layout)
  return bc.a_shape_tile_pairs(layout, t, b, config.block_q, config.block_k)


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


def bench_size(cfg, t, kv, configs, rows, key):
  n, d, b = cfg.num_heads, cfg.head_dim, cfg.batch
  base = dict(T=t, N=n, K=kv, D=d, B=b, dtype=cfg.dtype)
  t0 = time.perf_counter()
  (q, k, v), source = _inputs(cfg, t, kv, key)
  print(f"inputs T={t} K={kv} ({source}) {time.perf_counter() - t0:.1f}s",
        flush=True)
  causal = bc.causal_pairs(t) * b * n
  dense_ms = None
  if cfg.dense and t <= cfg.dense_max_len:
    try:
      tm = bc.time_with(cfg, _cudnn, (q, k, v))
      dense_ms = tm["median_ms"]
      rows.append(base | dict(
          kernel="cudnn_dense", inputs=source, kernel_ms=dense_ms,
          compile_s=tm["compile_s"], repeats=tm["repeats"],
          spread_ms=tm["max_ms"] - tm["min_ms"], density=1.0,
          tflops=bc.attention_flops(causal, d) / dense_ms / 1e9))
      print(json.dumps(rows[-1]), flush=True)
    except Exception as e:  # noqa: BLE001
      rows.append(base | dict(kernel="cudnn_dense", error=str(e)[:300]))
      traceback.print_exc()
      dense_ms = _extrapolate_dense(rows, t, kv)
  if t <= cfg.flash_max_len:
    for c in configs["flash"]:
      try:
        tm = bc.time_with(cfg, lambda q, k, v: flash.flash_attention(
            q, k, v, config=c, interpret=cfg.interpret), (q, k, v))
        rows.append(base | dict(
            kernel="flash", config=_describe(c), inputs=source,
            kernel_ms=tm["median_ms"], compile_s=tm["compile_s"],
            repeats=tm["repeats"], spread_ms=tm["max_ms"] - tm["min_ms"],
            density=1.0,
            tflops=bc.attention_flops(causal, d) / tm["median_ms"] / 1e9,
            vs_cudnn=(dense_ms / tm["median_ms"]) if dense_ms else None))
      except Exception as e:  # noqa: BLE001
        rows.append(base | dict(kernel="flash", config=_describe(c),
                                error=str(e)[:300]))
        traceback.print_exc()
      print(json.dumps(rows[-1]), flush=True)
  key_of = dict(vertical_slash="vs", block_sparse="bs", a_shape="a_shape")
  for name in cfg.patterns:
    # "pattern:clustered" forces the clustered generator's indices.
    pattern, _, forced = name.partition(":")
    pcfg = dataclasses.replace(cfg, index_source=forced) if forced else cfg
    try:
      fns = _index_fns(pcfg, t)
      layout, itm, lsource = _build_layout(pcfg, pattern, fns, q, k, t)
    except Exception as e:  # noqa: BLE001
      rows.append(base | dict(kernel=name, error=str(e)[:300]))
      traceback.print_exc()
      continue
    index_ms = itm["median_ms"] if itm else 0.0
    runs = [("triton", c, _kernel_fn(pattern, c, cfg.interpret))
            for c in configs[key_of[pattern]]
            if "triton" in cfg.kernel_impls]
    for impl in cfg.kernel_impls:
      if impl in MGPU_STEP_KEYS and pattern != "vertical_slash":
        continue  # a Vertical-Slash kernel only
      if impl.startswith("mosaic_gpu"):
        # 64 x 64 tiles: the area counted like the Triton default's.
        runs.append((impl, configs[key_of[pattern]][0],
                     _mosaic_gpu_kernel_fn(pattern, cfg.interpret, impl)))
    for impl, c, kernel_fn in runs:
      row = base | dict(kernel=name, impl=impl,
                        config=_describe(c) if impl == "triton" else
                        "default", inputs=source, layout=lsource,
                        index_ms=index_ms)
      try:
        tm = bc.time_with(cfg, kernel_fn, (q, k, v, layout))
        pairs = _pairs(pattern, layout, t, b, c)
        total = index_ms + tm["median_ms"]
        row.update(
            kernel_ms=tm["median_ms"], compile_s=tm["compile_s"],
            repeats=tm["repeats"], spread_ms=tm["max_ms"] - tm["min_ms"],
            index_compile_s=itm["compile_s"] if itm else 0.0,
            total_ms=total, density=pairs / causal,
            tflops=bc.attention_flops(pairs, d) / tm["median_ms"] / 1e9)
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


def main(argv):
  cfg, path = bc.parse_cli(BenchConfig, argv, DEFAULT_CONFIG)
  unknown = set(cfg.kernel_impls) - set(KERNEL_IMPLS)
  if unknown:
    raise SystemExit(f"kernel_impls: unknown {sorted(unknown)}; choose from"
                     f" {list(KERNEL_IMPLS)}")
  meta = bc.environment() | dict(config_file=path,
                                 config=dataclasses.asdict(cfg))
  print(json.dumps(meta), flush=True)
  configs = _configs(cfg)
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
      meta["crossover"] = crossover_from_rows(rows, cfg.patterns,
                                              cfg.crossover_kv_heads)
      _write(cfg, meta, rows)
  print("crossover:", json.dumps(meta.get("crossover")), flush=True)
  _write(cfg, meta, rows)
  _print_table(rows)
  return 0


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
  sys.exit(main(sys.argv[1:]))
