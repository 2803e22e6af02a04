"""GPU measurements of the Vertical-Slash index path and its two layouts.

Modes (each writes JSON to --out):
- default: for each T, the same indices (the real estimate on synthetic q/k,
  and the clustered generator) through the expanded and the chain layout and
  both kernels; outputs compared with each other and, at T <= 32K, with the
  f32 reference on sampled rows; plus the estimate's parts at T >= 128K.
- --sweep: chain kernel launch knobs vs the expanded kernel at 128K.
- --estimate-variants: alternative formulations of the estimate's slowest
  parts at 1M (diagonal sums, top-k selection).
- --model-indices FILES: the kernels on index sets recorded from a real
  model (experiments.model_head_indices), vs cuDNN.

  PYTHONPATH=. python3 -m experiments.gpu_vs_chain --out DIR [mode]
"""

import argparse
import functools
import json
import re
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from experiments import bench_common as bc
from experiments import synthetic
from minference_jax import index
from minference_jax import index_vs
from pallas_kernels.vertical_slash import vertical_slash_attention


def _timed(fn, args, budget_s=2.0):
  r = bc.time_jitted(fn, args, warmup=1, min_repeats=3, max_repeats=20,
                     budget_s=budget_s, keep_output=True)
  return r.pop("output"), r


def _index_parts(q, k, nv, ns):
  """Separately jitted stages of vertical_slash_indices (same maths)."""
  n = q.shape[2]
  logits_fn = functools.partial(index_vs.last_q_logits, last_q=64)
  stats = index_vs._softmax_stats
  lines = index_vs._line_scores
  counts = jnp.full((n,), ns, jnp.int32)
  select = lambda s: index_vs.top_sorted_positions(s, counts, ns, True)

  def topk_select(s):
    _, idx = jax.lax.top_k(s, ns)
    return jnp.sort(idx, axis=-1)

  out = {}
  (lg, visible), out["logits"] = _timed(logits_fn, (q, k))
  (m, z), out["softmax_stats"] = _timed(stats, (lg, visible))
  (_, slash), out["line_scores"] = _timed(lines, (lg, visible, m, z))
  _, out["select_radix_slash"] = _timed(select, (slash,))
  _, out["select_lax_top_k_slash"] = _timed(topk_select, (slash,))
  return {key: r["median_ms"] for key, r in out.items()}


def run(t, n, kv, d, budget, seed, check_rows):
  nv, ns = budget
  s = synthetic.synthetic_qkv(seed, batch=1, seq_len=t, num_heads=n,
                              num_kv_heads=kv, head_dim=d,
                              dtype=jnp.bfloat16)
  q, k, v = jax.block_until_ready((s.q, s.k, s.v))
  rows_out = []
  sources = {
      "builder": lambda q, k: index.vertical_slash_indices(q, k, nv, ns),
      "clustered": lambda q, k: bc.clustered_vs_indices(
          jax.random.key(seed + t), 1, n, t, nv, ns),
  }
  for name, make in sources.items():
    ind, t_ind = _timed(make, (q, k))
    chain, t_chain = _timed(
        functools.partial(index.vertical_slash_chain_layout, seq_len=t),
        (ind,))
    lay, t_lay = _timed(
        functools.partial(index.vertical_slash_layout, seq_len=t), (ind,))
    o_old, k_old = _timed(vertical_slash_attention, (q, k, v, lay), 4.0)
    o_new, k_new = _timed(vertical_slash_attention, (q, k, v, chain), 4.0)
    diff = float(jnp.linalg.norm((o_new - o_old).astype(jnp.float32))
                 / jnp.linalg.norm(o_old.astype(jnp.float32)))
    pairs_old = bc.vs_tile_pairs(lay)
    pairs_new = bc.vs_chain_tile_pairs(chain, lay, t)
    row = dict(
        T=t, N=n, K=kv, D=d, source=name,
        density_expanded=pairs_old / (n * bc.causal_pairs(t)),
        density_chain=pairs_new / (n * bc.causal_pairs(t)),
        index_ms=t_ind["median_ms"], chain_layout_ms=t_chain["median_ms"],
        expanded_layout_ms=t_lay["median_ms"],
        kernel_expanded_ms=k_old["median_ms"],
        kernel_chain_ms=k_new["median_ms"],
        tflops_expanded=bc.attention_flops(pairs_old, d)
        / k_old["median_ms"] / 1e9,
        tflops_chain=bc.attention_flops(pairs_new, d)
        / k_new["median_ms"] / 1e9,
        chain_vs_expanded_rel_diff=diff,
        compile_chain_s=k_new["compile_s"],
    )
    if check_rows:
      rows = np.unique(np.concatenate([
          np.arange(0, 64), np.arange(t // 2 - 32, t // 2 + 32),
          np.arange(t - 64, t)]))
      err, max_abs, finite = bc.rows_relative_error(
          o_new, q, k, v, rows,
          lambda heads: bc.vs_rows_mask(lay, rows, t, heads))
      row.update(chain_rel_err=err, chain_finite=finite)
    rows_out.append(row)
    print(json.dumps(row), flush=True)
    del o_old, o_new, lay, chain
  if t >= 131072:
    parts = _index_parts(q, k, nv, ns)
    parts.update(T=t, what="index parts ms")
    print(json.dumps(parts), flush=True)
    rows_out.append(parts)
  return rows_out


def estimate_variants(t=1048576, n=32, kv=8, d=128, seed=0):
  """Times alternative formulations of the estimate's slowest parts."""
  s = synthetic.synthetic_qkv(seed, batch=1, seq_len=t, num_heads=n,
                              num_kv_heads=kv, head_dim=d, dtype=jnp.bfloat16)
  q, k = jax.block_until_ready((s.q, s.k))
  last = 64
  lg, visible = jax.block_until_ready(index_vs.last_q_logits(q, k, last))
  m, z = index_vs._softmax_stats(lg, visible)

  def probs(lg):
    return jnp.exp(index_vs._masked_f32(lg, visible) - m[..., None]) / z[
        ..., None]

  def diag_reshape(lg):
    return index_vs._diagonal_sums(probs(lg))

  def diag_gather(lg):
    p = probs(lg)
    r = jnp.arange(last)[:, None]
    o = jnp.arange(t)[None, :]
    cols = t - last + r - o
    on = jnp.take_along_axis(p, jnp.broadcast_to(jnp.maximum(cols, 0),
                                                 p.shape), axis=-1)
    return jnp.sum(jnp.where(cols >= 0, on, 0.0), axis=-2)

  def diag_slices(lg):
    p = jnp.pad(probs(lg), ((0, 0), (0, 0), (0, 0), (last, 0)))
    acc = 0.0
    for i in range(last):  # benchmark only: which HLO XLA fuses best
      acc = acc + p[:, :, i, i + 1: i + 1 + t]
    return acc[..., ::-1]

  def vertical(lg):
    return jnp.sum(probs(lg), axis=-2)

  slash = diag_reshape(lg)
  keys = index_vs._sortable_key(slash)
  counts = jnp.full(keys.shape[:-1], 6096, jnp.int32)

  def radix(keys):  # one [..., 15, S] compare-and-reduce per pass
    return index_vs._kth_largest_with(keys, counts,
                                      index_vs._count_ge_broadcast)

  def radix_multi(keys):  # 15 sibling reductions per pass
    return index_vs._kth_largest_with(keys, counts,
                                      index_vs._count_ge_siblings)

  def bisect(keys):
    lo = jnp.zeros(keys.shape[:-1], jnp.uint32)
    for bit in range(31, -1, -1):
      cand = lo | jnp.uint32(1 << bit)
      ok = jnp.sum(keys >= cand[..., None], axis=-1) >= counts
      lo = jnp.where(ok, cand, lo)
    return lo

  out = {}
  ref = None
  for name, fn, arg in (("diag_reshape", diag_reshape, lg),
                        ("diag_gather", diag_gather, lg),
                        ("diag_slices", diag_slices, lg),
                        ("vertical", vertical, lg),
                        ("radix", radix, keys),
                        ("radix_multi", radix_multi, keys),
                        ("bisect", bisect, keys)):
    try:
      o, r = _timed(fn, (arg,))
      out[name] = r["median_ms"]
      if name.startswith("diag"):
        ref = o if ref is None else ref
        out[name + "_maxdiff"] = float(jnp.max(jnp.abs(o - ref)))
      if name in ("radix_multi", "bisect"):
        out[name + "_same"] = bool(jnp.all(o == radix(keys)))
    except Exception as e:  # noqa: BLE001
      out[name] = f"{type(e).__name__}: {str(e)[:200]}"
    print(name, out[name], flush=True)
  return out


def bench_model_indices(paths, n=32, kv=8, d=128, seed=0, scores="pallas"):
  """VS kernels on index sets recorded from SmolLM2's heads (npz files from
  experiments.model_head_indices), with synthetic q/k/v values, vs cuDNN.

  The estimate is timed with `scores` ("pallas": the fused Pallas line
  scores the "pallas" backend runs; "xla": the XLA form)."""
  from experiments.model_head_indices import load_model_head_indices

  rows = []
  for path in paths:
    t = int(re.search(r"_T(\d+)\.npz$", str(path)).group(1))
    ind = load_model_head_indices(path, n, batch=1, expect_seq_len=t)
    s = synthetic.synthetic_qkv(seed, batch=1, seq_len=t, num_heads=n,
                                num_kv_heads=kv, head_dim=d,
                                dtype=jnp.bfloat16)
    q, k, v = jax.block_until_ready((s.q, s.k, s.v))
    _, t_ind = _timed(lambda q, k: index.vertical_slash_indices(
        q, k, 1000, 6096, scores=scores), (q, k))
    lay, t_lay = _timed(functools.partial(index.vertical_slash_layout,
                                          seq_len=t), (ind,))
    chain, t_chain = _timed(functools.partial(
        index.vertical_slash_chain_layout, seq_len=t), (ind,))
    _, k_old = _timed(vertical_slash_attention, (q, k, v, lay), 4.0)
    _, k_new = _timed(vertical_slash_attention, (q, k, v, chain), 4.0)
    _, dense = _timed(lambda q, k, v: jax.nn.dot_product_attention(
        q, k, v, is_causal=True, implementation="cudnn"), (q, k, v), 4.0)
    pairs = bc.vs_tile_pairs(lay)
    layer = t_ind["median_ms"] + t_lay["median_ms"] + k_old["median_ms"]
    row = dict(
        T=t, source="SmolLM2-135M heads (model_head_indices)",
        density=pairs / (n * bc.causal_pairs(t)),
        estimate_scores=scores,
        estimate_ms_synthetic_qk=t_ind["median_ms"],
        expanded_layout_ms=t_lay["median_ms"],
        chain_layout_ms=t_chain["median_ms"],
        kernel_expanded_ms=k_old["median_ms"],
        kernel_chain_ms=k_new["median_ms"],
        cudnn_ms=dense["median_ms"],
        tflops_expanded=bc.attention_flops(pairs, d) / k_old["median_ms"] / 1e9,
        x_cudnn_kernel=dense["median_ms"] / k_old["median_ms"],
        x_cudnn_layer=dense["median_ms"] / layer,
    )
    print(json.dumps(row), flush=True)
    rows.append(row)
  return rows


def main():
  ap = argparse.ArgumentParser()
  ap.add_argument("--seq-lens", type=int, nargs="+",
                  default=[16384, 131072, 1048576])
  ap.add_argument("--out", default="outputs")
  ap.add_argument("--kv-heads", type=int, default=8)
  ap.add_argument("--sweep", action="store_true")
  ap.add_argument("--estimate-variants", action="store_true")
  ap.add_argument("--model-indices", nargs="*", default=None,
                  help="npz files from experiments.model_head_indices")
  ap.add_argument("--scores", choices=("pallas", "xla"), default="pallas",
                  help="line scores of the estimate (--model-indices)")
  args = ap.parse_args()
  out = Path(args.out)
  out.mkdir(parents=True, exist_ok=True)
  if args.estimate_variants:
    res = estimate_variants()
    (out / "estimate_variants.json").write_text(json.dumps(res, indent=1))
    return
  if args.model_indices:
    rows = bench_model_indices(args.model_indices, scores=args.scores)
    (out / "gpu_vs_model_indices.json").write_text(json.dumps(
        dict(env=bc.environment(), rows=rows), indent=1))
    return
  if args.sweep:
    rows = sweep_variants()
    (out / "gpu_vs_chain_sweep.json").write_text(json.dumps(rows, indent=1))
    return
  results = dict(env=bc.environment(), rows=[])
  for t in args.seq_lens:
    t0 = time.time()
    results["rows"] += run(t, 32, args.kv_heads, 128, (1000, 6096), 0,
                           check_rows=t <= 32768)
    print(f"T={t} done in {time.time() - t0:.0f} s", flush=True)
    (out / "gpu_vs_chain.json").write_text(json.dumps(results, indent=1))


def sweep_variants(t=131072, n=32, kv=8, d=128, seed=0):
  """Times the chain kernel's loop variants against the expanded kernel."""
  from pallas_kernels.vertical_slash import Config

  s = synthetic.synthetic_qkv(seed, batch=1, seq_len=t, num_heads=n,
                              num_kv_heads=kv, head_dim=d, dtype=jnp.bfloat16)
  q, k, v = jax.block_until_ready((s.q, s.k, s.v))
  out = []
  for name in ("builder", "clustered"):
    ind = (index.vertical_slash_indices(q, k, 1000, 6096) if name == "builder"
           else bc.clustered_vs_indices(jax.random.key(seed + t), 1, n, t,
                                        1000, 6096))
    chain = index.vertical_slash_chain_layout(ind, t)
    lay = index.vertical_slash_layout(ind, t)
    ref, r = _timed(vertical_slash_attention, (q, k, v, lay), 3.0)
    print(name, "expanded", r["median_ms"], flush=True)
    out.append(dict(source=name, variant="expanded", ms=r["median_ms"]))
    for warps, stages in ((4, 2), (4, 3)):
      cfg = Config(block_c=64, num_warps=warps, num_stages=stages)
      fn = functools.partial(vertical_slash_attention, config=cfg)
      try:
        o, r = _timed(fn, (q, k, v, chain), 3.0)
        diff = float(jnp.linalg.norm((o - ref).astype(jnp.float32))
                     / jnp.linalg.norm(ref.astype(jnp.float32)))
        row = dict(source=name, variant="runs", warps=warps, stages=stages,
                   ms=r["median_ms"], diff=diff)
      except Exception as e:  # noqa: BLE001 - report and go on
        row = dict(source=name, variant="runs", warps=warps, stages=stages,
                   error=f"{type(e).__name__}: {str(e)[:200]}")
      print(json.dumps(row), flush=True)
      out.append(row)
  return out


if __name__ == "__main__":
  main()
