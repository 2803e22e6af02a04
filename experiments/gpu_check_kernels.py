"""GPU correctness check of every Pallas kernel against an f32 reference.

Run on a CUDA machine from the repo root:
  PYTHONPATH=. python3 -m experiments.gpu_check_kernels [out_dir=DIR] ...

For each case (4K-32K tokens, GQA, head dims 64/96/128/256, bf16/fp16, T not
a multiple of 64) every kernel runs on all heads in one call; a sample of
query row blocks (always the first and the last) is compared with the dense
f32 reference on exactly the kernel's key set (`rows_relative_error`). The
whole output must be finite and inactive heads zero. Then the one-call
addressing check: 1M tokens x 32 query heads x 32 KV heads x 128 (8 GiB per
array, past int32 offsets) for A-shape, Block-Sparse and Vertical-Slash,
checking rows at the highest addresses. Layouts come from the real index
builders on synthetic structured q/k (minference_jax.index/synthetic) where
present, else from the clustered generator in bench_common.
"""

import dataclasses
import json
import sys
import time
import traceback
import warnings
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from experiments import bench_common as bc
from pallas_kernels.a_shape import a_shape_attention
from pallas_kernels.block_sparse import block_sparse_attention
from pallas_kernels.flash import flash_attention
from pallas_kernels.layouts import AShapeLayout
from pallas_kernels.vertical_slash import vertical_slash_attention

warnings.filterwarnings("ignore", message="The Pallas Triton backend")


@dataclasses.dataclass(frozen=True)
class CheckConfig:
  """What to check (all overridable as key=value)."""

  # (T, N, K, D, dtype) cases.
  # "T,N,K,D,dtype[,clustered]": ",clustered" adds the clustered layouts
  # (unaligned windows, many columns) next to the index builders' ones.
  cases: tuple[str, ...] = (
      "4133,32,8,128,bfloat16,clustered", "4096,8,4,96,float16",
      "3000,8,8,64,bfloat16", "2100,4,1,256,bfloat16",
      "32768,32,8,128,bfloat16,clustered",
  )
  sample_blocks: int = 8
  tolerance: float = 1e-2
  check_1m: bool = True
  len_1m: int = 1 << 20
  seed: int = 0
  out_dir: str = "experiments/results"
  interpret: bool = False  # CPU dry run of this script (tiny cases only)


def _inputs(key, t, n, kv, d, dtype):
  """Synthetic structured q/k/v if available (realistic layouts), else
  Gaussian. Returns (q, k, v, source)."""
  try:
    from experiments import synthetic
    s = synthetic.synthetic_qkv(
        int(jax.random.randint(key, (), 0, 2**30)), batch=1, seq_len=t,
        num_heads=n, num_kv_heads=kv, head_dim=d, dtype=dtype)
    return s.q, s.k, s.v, "synthetic"
  except ImportError:
    pass
  kq, kk, kv_ = jax.random.split(key, 3)
  shape_q, shape_k = (1, t, n, d), (1, t, kv, d)
  return (jax.random.normal(kq, shape_q, dtype),
          jax.random.normal(kk, shape_k, dtype),
          jax.random.normal(kv_, shape_k, dtype), "gaussian")


def _layouts(key, q, k, t, n, clustered):
  """(name, kind, layout, source) for every sparse kernel."""
  active = (True,) * (n - 1) + (False,)
  out = []
  try:
    from minference_jax import index
    vs = index.vertical_slash_layout(index.vertical_slash_indices(
        q, k, 1000, 6096, active=active), t)
    bsl = index.block_sparse_indices(q, k, 100, active=active)
    out += [("vs_builder", "vs", vs, "index builder"),
            ("bs_builder", "bs", bsl, "index builder")]
  except ImportError:
    clustered = True
  k1, k2 = jax.random.split(key)
  vs_c = bc.clustered_vs_layout(k1, 1, n, t, 1000, 6096)
  vs_c = dataclasses.replace(
      vs_c, block_count=vs_c.block_count.at[:, -1].set(0),
      column_count=vs_c.column_count.at[:, -1].set(0))
  bs_c = bc.clustered_bs_layout(k2, 1, n, t, 100)
  bs_c = dataclasses.replace(bs_c,
                             block_count=bs_c.block_count.at[:, -1].set(0))
  sizes = np.random.default_rng(int(jax.random.randint(key, (), 0, 2**30)))
  n_init = np.where(np.arange(n) % 2, 128, sizes.integers(0, 300, n))
  n_local = np.where(np.arange(n) % 2, 3968, sizes.integers(1, 2000, n))
  n_init[-1] = n_local[-1] = 0
  ash = AShapeLayout(jnp.asarray(n_init, jnp.int32),
                     jnp.asarray(n_local, jnp.int32))
  if clustered:
    out += [("vs_clustered", "vs", vs_c, "clustered"),
            ("bs_clustered", "bs", bs_c, "clustered")]
  return out + [("a_shape", "a", ash, "per-head sizes")]


def _run(kind, q, k, v, layout, interpret=False):
  if kind == "vs":
    return vertical_slash_attention(q, k, v, layout, interpret=interpret)
  if kind == "bs":
    return block_sparse_attention(q, k, v, layout, interpret=interpret)
  if kind == "a":
    return a_shape_attention(q, k, v, layout, interpret=interpret)
  return flash_attention(q, k, v, interpret=interpret)


def _mask_fn(kind, layout, rows, t):
  """heads -> [B, heads, R, S] key set of the kernel on the sampled rows."""
  fns = dict(vs=bc.vs_rows_mask, bs=bc.bs_rows_mask, a=bc.a_shape_rows_mask)
  if kind not in fns:
    return lambda heads: bc.causal_rows_mask(rows, t, heads)
  return lambda heads: fns[kind](layout, rows, t, heads)


def _sample_rows(rng, t, n_blocks):
  tb = -(-t // 64)
  picks = {0, tb - 1} | set(rng.integers(0, tb, n_blocks).tolist())
  blocks = np.array(sorted(picks))
  rows = (blocks[:, None] * 64 + np.arange(64)).reshape(-1)
  return rows[rows < t]


def check_case(cfg, key, t, n, kv, d, dtype, rng, results, clustered):
  q, k, v, source = _inputs(key, t, n, kv, d, dtype)
  items = _layouts(key, q, k, t, n, clustered) + [
      ("flash", "flash", None, "dense")]
  rows = _sample_rows(rng, t, cfg.sample_blocks)
  for name, kind, layout, lsource in items:
    row = dict(case=f"T={t} N={n} K={kv} D={d} {jnp.dtype(dtype).name}",
               kernel=name, inputs=source, layout=lsource)
    try:
      t0 = time.perf_counter()
      out = jax.block_until_ready(
          _run(kind, q, k, v, layout, cfg.interpret))
      row["first_call_s"] = time.perf_counter() - t0
      rel, max_abs, finite = bc.rows_relative_error(
          out, q, k, v, rows, _mask_fn(kind, layout, rows, t))
      inactive_zero = True
      if kind != "flash":
        inactive_zero = not bool(jnp.any(out[:, :, -1] != 0))
      row.update(rel_err=rel, max_abs=max_abs, finite=finite,
                 inactive_zero=inactive_zero,
                 ok=bool(finite and inactive_zero and rel <= cfg.tolerance))
    except Exception as e:  # noqa: BLE001 - report and go on
      row.update(ok=False, error=f"{type(e).__name__}: {e}"[:500])
      traceback.print_exc()
    results.append(row)
    print(json.dumps(row), flush=True)


def check_one_million(cfg, key, results):
  """One call over 1M tokens x 32 heads (32 KV heads): int64 addressing."""
  t, n, kv, d = cfg.len_1m, 32, 32, 128
  kq, kk, kv_, k1, k2 = jax.random.split(key, 5)
  shape = (1, t, n, d)
  q = jax.random.normal(kq, shape, jnp.bfloat16)
  k = jax.random.normal(kk, shape, jnp.bfloat16)
  v = jax.random.normal(kv_, shape, jnp.bfloat16)
  tb = -(-t // 64)
  rows = np.concatenate([np.arange(64), (tb // 2) * 64 + np.arange(64),
                         (tb - 1) * 64 + np.arange(64)])
  items = [
      ("a_shape", "a", AShapeLayout(jnp.full((n,), 128, jnp.int32),
                                    jnp.full((n,), 3968, jnp.int32))),
      ("bs_clustered", "bs", bc.clustered_bs_layout(k2, 1, n, t, 100)),
      ("vs_clustered", "vs", bc.clustered_vs_layout(k1, 1, n, t, 1000, 6096)),
  ]
  for name, kind, layout in items:
    row = dict(case=f"T={t} N={n} K={kv} D={d} bfloat16 (one call)",
               kernel=name, inputs="gaussian", layout="clustered")
    try:
      t0 = time.perf_counter()
      out = jax.block_until_ready(
          _run(kind, q, k, v, layout, cfg.interpret))
      row["first_call_s"] = time.perf_counter() - t0
      rel, max_abs, finite = bc.rows_relative_error(
          out, q, k, v, rows, _mask_fn(kind, layout, rows, t),
          heads_per_chunk=4)
      row.update(rel_err=rel, max_abs=max_abs, finite=finite,
                 ok=bool(finite and rel <= cfg.tolerance))
      del out
    except Exception as e:  # noqa: BLE001
      row.update(ok=False, error=f"{type(e).__name__}: {e}"[:500])
      traceback.print_exc()
    del layout
    results.append(row)
    print(json.dumps(row), flush=True)


def main(argv):
  cfg, _ = bc.parse_cli(CheckConfig, argv, None)
  meta = bc.environment() | dict(config=dataclasses.asdict(cfg))
  print(json.dumps(meta), flush=True)
  results = []
  key = jax.random.key(cfg.seed)
  rng = np.random.default_rng(cfg.seed)
  cols = [("case", "case"), ("kernel", "kernel"), ("layout", "layout"),
          ("rel_err", "rel err"), ("max_abs", "max abs"),
          ("finite", "finite"), ("inactive_zero", "inactive head 0"),
          ("ok", "ok"), ("error", "error")]
  for case in cfg.cases:
    t, n, kv, d, dt, *flags = case.split(",")
    key, sub = jax.random.split(key)
    check_case(cfg, sub, int(t), int(n), int(kv), int(d), jnp.dtype(dt),
               rng, results, "clustered" in flags)
    bc.write_results(cfg.out_dir, "gpu_check_kernels", meta, results, cols)
  if cfg.check_1m:
    key, sub = jax.random.split(key)
    check_one_million(cfg, sub, results)
  bc.write_results(cfg.out_dir, "gpu_check_kernels", meta, results, cols)
  n_ok = sum(r["ok"] for r in results)
  print(f"\n{n_ok}/{len(results)} checks passed")
  for r in results:
    print(f"{'OK ' if r['ok'] else 'BAD'} {r['case']:42s} {r['kernel']:13s}"
          f" rel={r.get('rel_err', float('nan')):.2e}"
          f" {r.get('error', '')[:80]}")
  return 0 if n_ok == len(results) else 1


if __name__ == "__main__":
  sys.exit(main(sys.argv[1:]))
