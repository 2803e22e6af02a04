"""GPU check and benchmark of the Mosaic GPU A-shape and Vertical-Slash kernels.

Run on an H100/H200 from the repo root:
  PYTHONPATH=. python3 -m experiments.gpu_mgpu_kernels [out_dir=DIR]
      ["lens=[32768,131072]"] ["a_shape_lens=[32768,131072,1048576]"]
      ["check_lens=[4096,16384]"] [budget_s=3] [dense_max_len=524288]

(a) Correctness at check_lens: the MGPU output vs the dense f32 reference on
    sampled query rows (`bench_common.rows_relative_error`, exact key set)
    and vs the Pallas-Triton kernel on the whole output, for
    - A-shape: per-head random sizes (one head 0 / 0), and MInference's
      128 sink + 3968 local;
    - Vertical-Slash: the index builder's layout of clustered lines
      (`clustered_vs_indices` + `minference_jax.index.vertical_slash_layout`,
      what `bench_kernels` uses) with head 0 emptied (inactive), and
      `clustered_vs_layout`; bf16 and f16, GQA.
(b) Speed, side by side in one process: MGPU vs Pallas-Triton vs cuDNN dense
    causal, N=32, K=8, D=128, bf16, MInference's default budgets (A-shape
    128 + 3968; VS 1000 vertical / 6096 slash). Effective TFLOP/s as in
    `bench_kernels`: 4 * D * computed pairs / time, with the pairs of the
    kernel's own tiles (`a_shape_tile_pairs` with its block sizes: 64 x 64
    for MGPU; `vs_tile_pairs`: 64 x 64 per window + 64 per column for both VS
    kernels, although the MGPU kernel computes a few more: a misaligned run's
    first tile holds a % 8 keys of no window, and its tail is gathered) and
    T(T+1)/2 * N for dense; `tflops_exact` uses the exact A-shape pairs for
    both A-shape kernels. Compile time is separate; times are the median of
    repeats after a warm-up.

Writes `gpu_mgpu_kernels.json` / `.md` to out_dir ($OUT if set).
"""

import dataclasses
import json
import os
import sys
import time
import traceback
import warnings

import jax
import jax.numpy as jnp
import numpy as np

from experiments import bench_common as bc
from pallas_kernels import a_shape, vertical_slash
from pallas_kernels.a_shape.pallas_mosaic_gpu import a_shape_attention_mgpu
from pallas_kernels.layouts import AShapeLayout, VerticalSlashLayout
from pallas_kernels import mosaic_gpu_core as core
from pallas_kernels.mosaic_gpu_core import Config
from pallas_kernels.vertical_slash import pallas_mosaic_gpu as vs_mgpu
from pallas_kernels.vertical_slash.pallas_mosaic_gpu import (
    vertical_slash_attention_mgpu,
)

warnings.filterwarnings("ignore", message="The Pallas Triton backend")

CONFIGS = {
    "default": None,
    "w2s2": Config(compute_wgs=2, max_concurrent_steps=2,
                   use_schedule_barrier=False),
    "w2s2p": Config(compute_wgs=2, max_concurrent_steps=2,
                    use_schedule_barrier=True),
    "w1s3": Config(compute_wgs=1, max_concurrent_steps=3),
}


@dataclasses.dataclass(frozen=True)
class Cfg:
  out_dir: str = os.environ.get("OUT", "outputs")
  lens: tuple[int, ...] = (32768, 131072)  # VS and A-shape
  a_shape_lens: tuple[int, ...] = ()  # extra A-shape-only lengths (1M)
  check_lens: tuple[int, ...] = (4096, 16384)
  configs: tuple[str, ...] = ("default", "w2s2")
  num_heads: int = 32
  num_kv_heads: int = 8
  head_dim: int = 128
  a_shape_sizes: tuple[int, int] = (128, 3968)
  vs_budget: tuple[int, int] = (1000, 6096)  # vertical, slash
  seed: int = 0
  warmup: int = 1
  min_repeats: int = 3
  max_repeats: int = 10
  budget_s: float = 3.0
  dense: bool = True
  dense_max_len: int = 524288  # longer: no cuDNN run (about 18 s at 1M)
  breakdown: bool = True  # VS: windows-only and seed-only timings
  interpret: bool = False  # CPU smoke run of this script (tiny sizes)


# ------------------------------------------------------------- inputs


def _a_shape_default(cfg, n) -> AShapeLayout:
  n_init, n_local = cfg.a_shape_sizes
  return AShapeLayout(jnp.full((n,), n_init, jnp.int32),
                      jnp.full((n,), n_local, jnp.int32))


def _a_shape_random(key, n, t) -> AShapeLayout:
  """Per-head sizes: sinks in [0, 300), windows in [1, t / 2); head 0 off."""
  k1, k2 = jax.random.split(key)
  n_init = jax.random.randint(k1, (n,), 0, 300).at[0].set(0)
  n_local = jax.random.randint(k2, (n,), 1, max(t // 2, 2)).at[0].set(0)
  return AShapeLayout(n_init.astype(jnp.int32), n_local.astype(jnp.int32))


def _vs_builder(cfg, key, n, t) -> tuple[VerticalSlashLayout, str]:
  """The index builder's layout of clustered lines (bench_kernels' source);
  `clustered_vs_layout` if the builder fails."""
  nv, ns = cfg.vs_budget
  try:
    from minference_jax import index
    ind = bc.clustered_vs_indices(key, 1, n, t, nv, ns)
    return jax.block_until_ready(index.vertical_slash_layout(ind, t)), \
        "index builder (clustered lines)"
  except Exception as e:  # noqa: BLE001
    print(f"VS index builder failed ({type(e).__name__}: {str(e)[:300]});"
          " clustered_vs_layout", flush=True)
    return bc.clustered_vs_layout(key, 1, n, t, nv, ns), \
        "clustered_vs_layout [builder failed]"


def _inactive_head0(layout: VerticalSlashLayout) -> VerticalSlashLayout:
  return dataclasses.replace(
      layout, block_count=layout.block_count.at[:, 0].set(0),
      column_count=layout.column_count.at[:, 0].set(0))


def _windows_only(layout: VerticalSlashLayout) -> VerticalSlashLayout:
  """The layout without its columns (NV = 0)."""
  return dataclasses.replace(
      layout, column_count=jnp.zeros_like(layout.column_count),
      column_index=layout.column_index[..., :0])


def _dims(q, k):
  b, t, n, d = q.shape
  return core.Dims(b, t, n, n // k.shape[2], d, t // 64)


def _sample_rows(t, seed):
  rng = np.random.default_rng(seed)
  tb = t // 64
  blocks = np.unique(np.r_[0, 1, tb - 1, rng.integers(0, tb, 6)])
  return np.unique(np.concatenate(
      [b * 64 + rng.integers(0, 64, 8) for b in blocks] + [[0, t - 1]]))


# ----------------------------------------------------------- kernels


def _mgpu_fn(pattern, config, interpret):
  if pattern == "a_shape":
    return lambda q, k, v, lay: a_shape_attention_mgpu(
        q, k, v, lay, config=config, interpret=interpret)
  return lambda q, k, v, lay: vertical_slash_attention_mgpu(
      q, k, v, lay, config=config, interpret=interpret)


def _triton_fn(pattern, interpret):
  if pattern == "a_shape":
    return lambda q, k, v, lay: a_shape.a_shape_attention(
        q, k, v, lay, interpret=interpret)
  return lambda q, k, v, lay: vertical_slash.vertical_slash_attention(
      q, k, v, lay, interpret=interpret)


def _rows_mask(pattern, layout, rows, t):
  if pattern == "a_shape":
    return lambda heads: bc.a_shape_rows_mask(layout, rows, t, heads)
  return lambda heads: bc.vs_rows_mask(layout, rows, t, heads)


def _check_one(cfg, row, pattern, q, k, v, layout, rows, config):
  """MGPU vs sampled-row reference and vs Triton (whole output)."""
  t = q.shape[1]
  out = jax.block_until_ready(
      _mgpu_fn(pattern, config, cfg.interpret)(q, k, v, layout))
  tri = _triton_fn(pattern, cfg.interpret)(q, k, v, layout)
  rel, max_abs, finite = bc.rows_relative_error(
      out, q, k, v, rows, _rows_mask(pattern, layout, rows, t))
  rel_tri = bc.relative_l2(out, tri)
  zero0 = (not bool(jnp.any(out[:, :, 0] != 0))
           if row.get("inactive_head0") else None)
  row.update(rel_ref=rel, max_abs_ref=max_abs, finite=finite,
             rel_triton=rel_tri, inactive_head_zero=zero0,
             ok=bool(finite and rel <= 1e-2 and rel_tri <= 1e-2
                     and zero0 is not False))


def check(cfg, rows_out):
  d = cfg.head_dim
  cases = []
  for t in cfg.check_lens:  # all cases at the shortest length
    cases += [("a_shape", "128+3968", t, cfg.num_heads, cfg.num_kv_heads,
               jnp.float16),
              ("vertical_slash", "builder", t, cfg.num_heads,
               cfg.num_kv_heads, jnp.bfloat16)]
    if t == min(cfg.check_lens):
      cases += [("a_shape", "random sizes", t, 8, 2, jnp.bfloat16),
                ("vertical_slash", "builder", t, 8, 2, jnp.float16),
                ("vertical_slash", "clustered_vs_layout", t, 8, 8,
                 jnp.bfloat16)]
  for pattern, kind, t, n, kv, dtype in cases:
    key = jax.random.key(cfg.seed + t + n)
    row = dict(check=kind, kernel=f"mgpu_{pattern}", T=t, N=n, K=kv, D=d,
               dtype=jnp.dtype(dtype).name, config="default")
    try:
      q, k, v = bc.gaussian_qkv(key, 1, t, n, kv, d, dtype)
      lkey = jax.random.fold_in(key, 1)
      if kind == "random sizes":
        layout = _a_shape_random(lkey, n, t)
        row["inactive_head0"] = True
      elif pattern == "a_shape":
        layout = _a_shape_default(cfg, n)
      elif kind == "builder":
        layout, source = _vs_builder(cfg, lkey, n, t)
        layout = _inactive_head0(layout)
        row.update(source=source, inactive_head0=True)
      else:
        nv, ns = cfg.vs_budget
        layout = bc.clustered_vs_layout(lkey, 1, n, t, nv, ns)
      _check_one(cfg, row, pattern, q, k, v, layout, _sample_rows(t, t),
                 None)
    except Exception as e:  # noqa: BLE001
      row.update(error=f"{type(e).__name__}: {str(e)[:400]}", ok=False)
      traceback.print_exc()
    rows_out.append(row)
    print(json.dumps(row), flush=True)


# ------------------------------------------------------------- bench


def _impls(cfg, pattern, layout, t):
  """(kernel, config name, fn, computed pairs) to time."""
  n, b = cfg.num_heads, 1
  if pattern == "a_shape":
    tri_cfg = a_shape.Config.get_default(cfg.head_dim)
    tri_pairs = bc.a_shape_tile_pairs(layout, t, b, tri_cfg.block_q,
                                      tri_cfg.block_k)
    mgpu_pairs = bc.a_shape_tile_pairs(layout, t, b, 64, 64)
  else:
    tri_pairs = mgpu_pairs = bc.vs_tile_pairs(layout)
  impls = [(f"triton_{pattern}", "default",
            _triton_fn(pattern, cfg.interpret), tri_pairs)]
  impls += [(f"mgpu_{pattern}", name,
             _mgpu_fn(pattern, CONFIGS[name], cfg.interpret), mgpu_pairs)
            for name in cfg.configs]
  if pattern == "vertical_slash" and cfg.breakdown:
    windows = _windows_only(layout)
    win_pairs = bc.vs_tile_pairs(windows)
    impls += [
        ("triton_vs_windows_only", "default", lambda q, k, v, lay:
         vertical_slash.vertical_slash_attention(
             q, k, v, _windows_only(lay), interpret=cfg.interpret),
         win_pairs),
        ("mgpu_vs_windows_only", "default", lambda q, k, v, lay:
         vertical_slash_attention_mgpu(
             q, k, v, _windows_only(lay), interpret=cfg.interpret),
         win_pairs),
        ("triton_vs_seed_only", "default", lambda q, k, v, lay:
         vs_mgpu._seed(q, k, v, lay.column_count, lay.column_index,
                       lay.block_count, lay.block_offset, _dims(q, k),
                       interpret=cfg.interpret),
         mgpu_pairs - win_pairs)]
  if cfg.dense and t <= cfg.dense_max_len and not cfg.interpret:
    impls.append(("cudnn_dense", "", lambda q, k, v, lay:
                  jax.nn.dot_product_attention(
                      q, k, v, is_causal=True, implementation="cudnn"),
                  bc.causal_pairs(t) * n))
  return impls


def _bench_rows(cfg, pattern, t, q, k, v, layout, base, rows_out):
  exact = (bc.a_shape_exact_pairs(layout, t, 1) if pattern == "a_shape"
           else None)
  causal = bc.causal_pairs(t) * cfg.num_heads
  times = {}
  ref_out = None
  for kernel, name, fn, pairs in _impls(cfg, pattern, layout, t):
    dense = kernel == "cudnn_dense"
    row = base | dict(kernel=kernel, config=name,
                      density=1.0 if dense else pairs / causal)
    if exact is not None and not dense:
      row["density_exact"] = exact / causal
    try:
      keep = kernel in (f"triton_{pattern}", f"mgpu_{pattern}")
      tm = bc.time_jitted(fn, (q, k, v, layout), warmup=cfg.warmup,
                          min_repeats=cfg.min_repeats,
                          max_repeats=cfg.max_repeats,
                          budget_s=cfg.budget_s, keep_output=keep)
      out = tm.pop("output")
      if kernel == f"triton_{pattern}":
        ref_out = out
      elif keep and ref_out is not None:
        row["rel_triton"] = bc.relative_l2(out, ref_out)
      del out
      ms = tm["median_ms"]
      times[kernel, name] = ms
      row.update(kernel_ms=ms, compile_s=tm["compile_s"],
                 repeats=tm["repeats"], min_ms=tm["min_ms"],
                 max_ms=tm["max_ms"],
                 tflops=bc.attention_flops(pairs, cfg.head_dim) / ms / 1e9)
      if exact is not None and not dense:
        row["tflops_exact"] = bc.attention_flops(exact, cfg.head_dim) / ms \
            / 1e9
    except Exception as e:  # noqa: BLE001
      row.update(error=f"{type(e).__name__}: {str(e)[:400]}")
      traceback.print_exc()
    rows_out.append(row)
    print(json.dumps(row), flush=True)
  tri = times.get((f"triton_{pattern}", "default"))
  dense = times.get(("cudnn_dense", ""))
  for row in rows_out:
    if (row.get("T") == t and row.get("kernel") == f"mgpu_{pattern}"
        and "kernel_ms" in row and "check" not in row):
      if tri:
        row["speedup_vs_triton"] = tri / row["kernel_ms"]
      if dense:
        row["speedup_vs_cudnn"] = dense / row["kernel_ms"]


def _bench_size_check(cfg, pattern, q, k, v, layout, base, rows_out):
  """Whole output vs Triton and sampled rows (incl. the last ones, the
  highest addresses) vs the f32 reference, at the benchmark size."""
  t = q.shape[1]
  rows = np.unique(np.r_[0, 63, 64 * (t // 128), t - 65, t - 64, t - 2,
                        t - 1])
  row = base | dict(check="bench-size", kernel=f"mgpu_{pattern}",
                    config="default")
  try:
    _check_one(cfg, row, pattern, q, k, v, layout, rows, None)
  except Exception as e:  # noqa: BLE001
    row.update(error=f"{type(e).__name__}: {str(e)[:400]}", ok=False)
    traceback.print_exc()
  rows_out.append(row)
  print(json.dumps(row), flush=True)


def bench(cfg, rows_out):
  n, kv, d = cfg.num_heads, cfg.num_kv_heads, cfg.head_dim
  work = [(p, t) for t in cfg.lens for p in ("a_shape", "vertical_slash")]
  work += [("a_shape", t) for t in cfg.a_shape_lens]
  for pattern, t in work:
    base = dict(pattern=pattern, T=t, N=n, K=kv, D=d, dtype="bfloat16")
    try:
      q, k, v = bc.gaussian_qkv(jax.random.key(cfg.seed + t), 1, t, n, kv, d,
                                jnp.bfloat16)
      if pattern == "a_shape":
        layout = _a_shape_default(cfg, n)
        base["layout"] = f"{cfg.a_shape_sizes[0]}+{cfg.a_shape_sizes[1]}"
      else:
        t0 = time.perf_counter()
        layout, source = _vs_builder(cfg, jax.random.key(cfg.seed + t + 1),
                                     n, t)
        base.update(layout=f"{cfg.vs_budget[0]}v/{cfg.vs_budget[1]}s",
                    source=source,
                    layout_s=round(time.perf_counter() - t0, 2))
    except Exception as e:  # noqa: BLE001
      rows_out.append(base | dict(error=f"{type(e).__name__}: "
                                  f"{str(e)[:400]}"))
      traceback.print_exc()
      continue
    _bench_rows(cfg, pattern, t, q, k, v, layout, base, rows_out)
    if t <= max(cfg.lens):
      _bench_size_check(cfg, pattern, q, k, v, layout, base, rows_out)
    del q, k, v, layout


COLUMNS = [("check", "check"), ("pattern", "pattern"), ("kernel", "kernel"),
           ("config", "config"), ("T", "T"), ("N", "N"), ("K", "K"),
           ("dtype", "dtype"), ("rel_ref", "rel err ref"),
           ("rel_triton", "rel err Triton"), ("ok", "ok"),
           ("density", "density"), ("density_exact", "density exact"),
           ("kernel_ms", "ms"), ("tflops", "eff. TFLOP/s"),
           ("tflops_exact", "eff. TFLOP/s exact pairs"),
           ("speedup_vs_triton", "x Triton"),
           ("speedup_vs_cudnn", "x cuDNN"), ("compile_s", "compile s"),
           ("error", "error")]


class _Rows(list):
  """Result rows, written out after every row (a run cut short by a time
  limit keeps what it measured)."""

  def __init__(self, out_dir, meta):
    super().__init__()
    self.out_dir, self.meta = out_dir, meta

  def append(self, row):
    super().append(row)
    bc.write_results(self.out_dir, "gpu_mgpu_kernels", self.meta, self,
                     COLUMNS)


def main(argv):
  cfg, _ = bc.parse_cli(Cfg, argv, None)
  meta = dict(bc.environment(), config=bc.as_dict(cfg))
  print(json.dumps(meta, default=str), flush=True)
  rows = _Rows(cfg.out_dir, meta)
  t0 = time.perf_counter()
  if cfg.check_lens:
    check(cfg, rows)
  print(f"checks done in {time.perf_counter() - t0:.0f}s", flush=True)
  bench(cfg, rows)
  paths = bc.write_results(cfg.out_dir, "gpu_mgpu_kernels", meta, list(rows),
                           COLUMNS)
  print("wrote", *paths, flush=True)


if __name__ == "__main__":
  main(sys.argv[1:])
