"""GPU check and benchmark of the Mosaic GPU Block-Sparse kernel (Hopper).

Run on an H100/H200 from the repo root:
  PYTHONPATH=. python3 -m experiments.gpu_bs_mgpu [out_dir=DIR]
      ["lens=[32768,131072]"] ["check_lens=[4096,16384]"]
      ["configs=[w2s2,w2s2p]"] [budget_s=3] [dense_max_len=524288]

(a) Correctness: random layouts (varied counts, a head with count 0, the
    diagonal mostly present) and the clustered top-100 layout at 4K-16K
    tokens. The MGPU output is compared with the dense f32 reference on
    sampled query rows (`bench_common.rows_relative_error`, exact key set)
    and with the Pallas-Triton Block-Sparse kernel on the whole output.
(b) Speed, side by side in one process: MGPU Block-Sparse (each config) vs
    Pallas-Triton Block-Sparse vs cuDNN dense causal, N=32, K=8, D=128, bf16,
    top-100 clustered layout (what `bench_kernels` uses without an index
    builder). Effective TFLOP/s = 4 * D * computed pairs / time, with the
    computed pairs = 64 * 64 * sum(block_count) (`bench_common.bs_tile_pairs`)
    for Block-Sparse and T(T+1)/2 * N for dense. Compile time is separate;
    times are the median of repeats after a warm-up.

Writes `gpu_bs_mgpu.json` / `.md` to out_dir ($OUT if set).
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
from pallas_kernels.block_sparse import Config as TritonConfig
from pallas_kernels.block_sparse import block_sparse_attention
from pallas_kernels.block_sparse.pallas_mosaic_gpu import (
    Config,
    block_sparse_attention_mgpu,
)
from pallas_kernels.layouts import BlockSparseLayout

warnings.filterwarnings("ignore", message="The Pallas Triton backend")

CONFIGS = {
    "w2s2": Config(compute_wgs=2, max_concurrent_steps=2,
                   use_schedule_barrier=False),
    "w2s2p": Config(compute_wgs=2, max_concurrent_steps=2,
                    use_schedule_barrier=True),
    "w2s2q": Config(compute_wgs=2, max_concurrent_steps=2,
                    fastest_axis="query_blocks"),
    "w2s3": Config(compute_wgs=2, max_concurrent_steps=3),
    "w1s3": Config(compute_wgs=1, max_concurrent_steps=3),
    "w1s4": Config(compute_wgs=1, max_concurrent_steps=4),
}


@dataclasses.dataclass(frozen=True)
class Cfg:
  out_dir: str = os.environ.get("OUT", "outputs")
  lens: tuple[int, ...] = (32768, 131072)
  check_lens: tuple[int, ...] = (4096, 16384)
  configs: tuple[str, ...] = ("w2s2", "w2s2p", "w1s3")
  num_heads: int = 32
  num_kv_heads: int = 8
  head_dim: int = 128
  top_k: int = 100
  seed: int = 0
  warmup: int = 1
  min_repeats: int = 3
  max_repeats: int = 10
  budget_s: float = 3.0
  dense: bool = True
  dense_max_len: int = 524288  # longer: no cuDNN run (about 18 s at 1M)
  rows_per_check: int = 256


def random_layout(key, b, n, t, top_k, inactive=(0,)) -> BlockSparseLayout:
  """Random valid layout on device: counts in [0, min(m + 1, KB)], sorted
  distinct blocks <= m, the diagonal forced in ~80% of rows, heads in
  `inactive` empty; padding entries are random in-range ids."""
  tb = t // 64
  k1, k2, k3, k4 = jax.random.split(key, 4)
  m = jnp.arange(tb)[:, None]
  j = jnp.arange(tb)[None, :]
  score = jax.random.uniform(k1, (b, n, tb, tb))
  score = jnp.where(j > m, 3.0, score)
  diag = jax.random.uniform(k2, (b, n, tb, 1)) < 0.8
  score = jnp.where((j == m) & diag, -1.0, score)
  kb = min(top_k, tb)
  pick = jnp.argsort(score, axis=-1)[..., :kb]  # [B, N, Tb, KB]
  hi = jnp.minimum(m[:, 0] + 1, kb)  # [Tb]
  count = jnp.floor(jax.random.uniform(k3, (b, n, tb)) * (hi + 1)).astype(
      jnp.int32)
  count = jnp.minimum(count, hi)
  for h in inactive:
    count = count.at[:, h].set(0)
  valid = jnp.arange(kb) < count[..., None]
  index = jnp.sort(jnp.where(valid, pick, tb + 1), axis=-1)
  pad = jax.random.randint(k4, index.shape, 0, tb) % (m[..., :1] + 1)
  index = jnp.where(jnp.arange(kb) < count[..., None], index, pad)
  return BlockSparseLayout(count.astype(jnp.int32), index.astype(jnp.int32))


def check(cfg, rows_out):
  d0 = cfg.head_dim
  cases = []
  for t in cfg.check_lens:
    cases += [("random", t, 8, 2, d0, jnp.bfloat16),
              ("random", t, 8, 8, d0, jnp.float16),
              ("clustered", t, cfg.num_heads, cfg.num_kv_heads, d0,
               jnp.bfloat16)]
  t = min(cfg.check_lens, default=0)
  if t:  # the other head dims, default configs
    cases += [("random", t, 8, 2, 64, jnp.bfloat16),
              ("random", t, 4, 1, 256, jnp.bfloat16)]
  for kind, t, n, kv, d, dtype in cases:
    key = jax.random.key(cfg.seed + t + n)
    q, k, v = bc.gaussian_qkv(key, 1, t, n, kv, d, dtype)
    if kind == "random":
      layout = random_layout(jax.random.fold_in(key, 1), 1, n, t, cfg.top_k)
    else:
      layout = bc.clustered_bs_layout(jax.random.fold_in(key, 1), 1, n, t,
                                      cfg.top_k)
    rng = np.random.default_rng(t)
    tb = t // 64
    blocks = np.unique(np.r_[0, 1, tb - 1, rng.integers(0, tb, 6)])
    rows = np.unique(np.concatenate(
        [b * 64 + rng.integers(0, 64, 8) for b in blocks] + [[0, t - 1]]))
    for name in cfg.configs if d == d0 else ("default",):
      row = dict(check=kind, T=t, N=n, K=kv, D=d,
                 dtype=jnp.dtype(dtype).name, config=name)
      try:
        out = jax.block_until_ready(block_sparse_attention_mgpu(
            q, k, v, layout, config=CONFIGS.get(name)))
        tri = block_sparse_attention(q, k, v, layout)
        rel, max_abs, finite = bc.rows_relative_error(
            out, q, k, v, rows,
            lambda heads: bc.bs_rows_mask(layout, rows, t, heads))
        zero0 = (not bool(jnp.any(out[:, :, 0] != 0))
                 if kind == "random" else None)
        rel_tri = bc.relative_l2(out, tri)
        row.update(rel_ref=rel, max_abs_ref=max_abs, finite=finite,
                   rel_triton=rel_tri, inactive_head_zero=zero0,
                   ok=bool(finite and rel <= 1e-2 and rel_tri <= 1e-2
                           and zero0 is not False))
      except Exception as e:  # noqa: BLE001
        row.update(error=f"{type(e).__name__}: {str(e)[:400]}", ok=False)
        traceback.print_exc()
      rows_out.append(row)
      print(json.dumps(row), flush=True)


def bench(cfg, rows_out):
  n, kv, d = cfg.num_heads, cfg.num_kv_heads, cfg.head_dim
  for t in cfg.lens:
    q, k, v = bc.gaussian_qkv(jax.random.key(cfg.seed + t), 1, t, n, kv, d,
                              jnp.bfloat16)
    layout = jax.block_until_ready(bc.clustered_bs_layout(
        jax.random.key(cfg.seed + t + 1), 1, n, t, cfg.top_k))
    pairs = bc.bs_tile_pairs(layout)
    causal = bc.causal_pairs(t) * n
    base = dict(T=t, N=n, K=kv, D=d, dtype="bfloat16", top_k=cfg.top_k)
    impls = [("triton_bs", "default", lambda q, k, v, lay:
              block_sparse_attention(q, k, v, lay), pairs)]
    impls += [("mgpu_bs", name, (lambda c: lambda q, k, v, lay:
               block_sparse_attention_mgpu(q, k, v, lay, config=c))(
                   CONFIGS[name]), pairs) for name in cfg.configs]
    if cfg.dense and t <= cfg.dense_max_len:
      impls.append(("cudnn_dense", "", lambda q, k, v, lay:
                    jax.nn.dot_product_attention(
                        q, k, v, is_causal=True, implementation="cudnn"),
                    causal))
    times = {}
    for kernel, name, fn, area in impls:
      row = base | dict(kernel=kernel, config=name,
                        density=pairs / causal if kernel != "cudnn_dense"
                        else 1.0)
      try:
        tm = bc.time_with(cfg, fn, (q, k, v, layout))
        ms = tm["median_ms"]
        times[(kernel, name)] = ms
        row.update(kernel_ms=ms, compile_s=tm["compile_s"],
                   repeats=tm["repeats"], min_ms=tm["min_ms"],
                   max_ms=tm["max_ms"],
                   tflops=bc.attention_flops(area, d) / ms / 1e9)
      except Exception as e:  # noqa: BLE001
        row.update(error=f"{type(e).__name__}: {str(e)[:400]}")
        traceback.print_exc()
      rows_out.append(row)
      print(json.dumps(row), flush=True)
    # Correctness at the benchmark size: the whole output vs Triton BS, and
    # sampled rows (incl. the last ones, the highest addresses) vs the f32
    # reference.
    try:
      tri_out = block_sparse_attention(q, k, v, layout)
      rows = np.unique(np.r_[0, 63, 64 * (t // 128), t - 65, t - 64,
                            t - 2, t - 1])
      for name in cfg.configs:
        out = block_sparse_attention_mgpu(q, k, v, layout,
                                          config=CONFIGS[name])
        rel, max_abs, finite = bc.rows_relative_error(
            out, q, k, v, rows,
            lambda heads: bc.bs_rows_mask(layout, rows, t, heads))
        rel_tri = bc.relative_l2(out, tri_out)
        row = base | dict(check="bench-size", kernel="mgpu_bs", config=name,
                          rel_ref=rel, max_abs_ref=max_abs, finite=finite,
                          rel_triton=rel_tri,
                          ok=bool(finite and rel <= 1e-2 and rel_tri <= 1e-2))
        rows_out.append(row)
        print(json.dumps(row), flush=True)
        del out
      del tri_out
    except Exception as e:  # noqa: BLE001
      rows_out.append(base | dict(check="bench-size", error=str(e)[:400],
                                  ok=False))
      traceback.print_exc()
    tri = times.get(("triton_bs", "default"))
    dense = times.get(("cudnn_dense", ""))
    for row in rows_out:
      if row.get("T") == t and row.get("kernel") == "mgpu_bs" and \
          "kernel_ms" in row and "check" not in row:
        if tri:
          row["speedup_vs_triton_bs"] = tri / row["kernel_ms"]
        if dense:
          row["speedup_vs_cudnn"] = dense / row["kernel_ms"]
    del q, k, v, layout


def main(argv):
  cfg, _ = bc.parse_cli(Cfg, argv, None)
  meta = dict(bc.environment(), config=bc.as_dict(cfg),
              triton_config=str(TritonConfig.get_default(cfg.head_dim)))
  print(json.dumps(meta, default=str), flush=True)
  rows = []
  t0 = time.perf_counter()
  if cfg.check_lens:
    check(cfg, rows)
  print(f"checks done in {time.perf_counter() - t0:.0f}s", flush=True)
  bench(cfg, rows)
  cols = [("check", "check"), ("kernel", "kernel"), ("config", "config"),
          ("T", "T"), ("N", "N"), ("K", "K"), ("D", "D"), ("dtype", "dtype"),
          ("rel_ref", "rel err ref"), ("rel_triton", "rel err Triton"),
          ("ok", "ok"), ("density", "density"), ("kernel_ms", "ms"),
          ("tflops", "eff. TFLOP/s"),
          ("speedup_vs_triton_bs", "x Triton BS"),
          ("speedup_vs_cudnn", "x cuDNN"), ("compile_s", "compile s"),
          ("error", "error")]
  paths = bc.write_results(cfg.out_dir, "gpu_bs_mgpu", meta, rows, cols)
  print("wrote", *paths, flush=True)


if __name__ == "__main__":
  main(sys.argv[1:])
