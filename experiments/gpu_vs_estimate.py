"""GPU measurements of the Vertical-Slash estimate: XLA vs fused Pallas scores.

For each T (bf16 synthetic q/k, N=32, K=8, D=128, budgets 1000/6096):
- agreement of `pallas_kernels.vs_estimate.vs_line_scores` with the XLA
  scores (`index_vs.line_scores_xla`): max relative error of both score
  vectors, and the share of identical selected lines;
- times (median, compile separate): the scores alone, the whole estimate
  (`vertical_slash_indices`, scores + top-k selection) with either scorer,
  the chain layout, and estimate + chain layout (the issue's "index build +
  layout" figure);
- with --sweep, the fused scores' launch knobs at the largest T;
- with --breakdown, per-stage times at each T: the scores with either
  scratch form, the top-k selection (the current one and the earlier
  searchsorted one, which must agree) and the chain layout's parts;
- with --chain-sweep, only the Pallas chain-layout builder's launch knobs
  at each T (each checked equal to the XLA builder's arrays).

The chain layout is timed with both builders ("xla", the previous one, and
"pallas"), which must give equal arrays (`chain_layout_pallas_same_as_xla`);
`estimate_pallas_plus_chain_layout_ms` uses the Pallas builder,
`..._xla_ms` the XLA one.

  PYTHONPATH=. python3 -m experiments.gpu_vs_estimate --out DIR [--sweep]
      [--breakdown] [--chain-sweep]
"""

import argparse
import functools
import itertools
import json
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from experiments import bench_common as bc
from experiments import synthetic
from minference_jax import index, index_vs
from pallas_kernels.vs_chain_layout import Config as ChainConfig
from pallas_kernels.vs_chain_layout import vs_chain_layout
from pallas_kernels.vs_chain_layout import pallas_triton as vs_chain_pallas
from pallas_kernels.vs_estimate import Config, vs_line_scores
from pallas_kernels.vs_estimate import pallas_triton as vs_pallas

_BUDGET = (1000, 6096)  # MInference's default vertical / slash budgets
_LAST_Q = 64


def _timed(fn, args, budget_s=2.0):
  r = bc.time_jitted(fn, args, warmup=1, min_repeats=3, max_repeats=20,
                     budget_s=budget_s, keep_output=True)
  return r.pop("output"), r


def _rel_err(got, want) -> float:
  return float(jnp.max(jnp.abs(got - want)) / jnp.max(jnp.abs(want)))


def _same_share(a: index_vs.VerticalSlashIndices,
                b: index_vs.VerticalSlashIndices) -> dict:
  """Share of selected lines common to both index sets (per head, counts
  equal by construction)."""
  out = {}
  for field in ("vertical", "slash"):
    x, y = np.asarray(getattr(a, field)), np.asarray(getattr(b, field))
    common = [len(np.intersect1d(r1, r2)) / len(r1)
              for r1, r2 in zip(x.reshape(-1, x.shape[-1]),
                                y.reshape(-1, y.shape[-1]))]
    out[f"{field}_same_share_min"] = float(np.min(common))
    out[f"{field}_same_share_mean"] = float(np.mean(common))
  return out


def _top_searchsorted(scores, counts, k_max: int, descending: bool):
  """The earlier `index_vs.top_sorted_positions` (radix over all S keys,
  two cumulative sums and a binary search per slot), the baseline of the
  breakdown."""
  s = scores.shape[-1]
  counts = jnp.broadcast_to(counts, scores.shape[:-1])
  keys = index_vs._sortable_key(scores)
  t = index_vs._kth_largest(keys, jnp.maximum(counts, 1))[..., None]
  above = keys > t
  n_above = jnp.sum(above, axis=-1, keepdims=True, dtype=jnp.int32)
  at_t = jnp.cumsum(keys == t, axis=-1, dtype=jnp.int32)
  keep = above | ((keys == t) & (at_t <= counts[..., None] - n_above))
  kept_before = jnp.cumsum(keep, axis=-1, dtype=jnp.int32)
  slot = jnp.arange(k_max, dtype=jnp.int32)
  search = jax.vmap(
      lambda c: jnp.searchsorted(c, slot + 1, side="left", method="scan"))
  asc = search(kept_before.reshape(-1, s)).reshape(counts.shape + (k_max,))
  pad = slot >= counts[..., None]
  if descending:
    rev = jnp.take_along_axis(
        asc, jnp.maximum(counts[..., None] - 1 - slot, 0), axis=-1)
    return jnp.where(pad, 0, rev).astype(jnp.int32)
  return jnp.where(pad, s - 1, asc).astype(jnp.int32)


def _inputs(t: int, n: int, kv: int, d: int, seed: int):
  """Synthetic bf16 (q, k) on the device (v is never needed)."""
  s = synthetic.synthetic_qkv(seed, batch=1, seq_len=t, num_heads=n,
                              num_kv_heads=kv, head_dim=d,
                              dtype=jnp.bfloat16)
  return jax.block_until_ready((s.q, s.k))


def breakdown(t: int, n: int, kv: int, d: int, seed: int) -> dict:
  """Per-stage times (ms) of the estimate + chain layout at one T."""
  nv, ns = _BUDGET
  q, k = _inputs(t, n, kv, d, seed)
  row = dict(T=t)
  (v_x, s_x), _ = _timed(
      functools.partial(index_vs.line_scores_xla, last_q=_LAST_Q), (q, k))
  for scratch, exp2 in (("probs", False), ("logits", False),
                        ("skewed_store", True), ("skewed_store", False)):
    cfg = Config(scratch=scratch, exp2=exp2)
    name = f"{scratch}{'_exp2' if exp2 else ''}"
    (v_p, s_p), r = _timed(functools.partial(
        vs_line_scores, last_q=_LAST_Q, config=cfg), (q, k))
    row[f"scores_{name}_ms"] = r["median_ms"]
    row[f"scores_{name}_rel_err"] = [_rel_err(v_p, v_x), _rel_err(s_p, s_x)]
  for exp2 in (True, False):
    _, r = _timed(functools.partial(
        vs_pallas.row_stats, last_q=_LAST_Q, config=Config(exp2=exp2)),
        (q, k))
    row[f"stats_pass{'_exp2' if exp2 else ''}_ms"] = r["median_ms"]
  del v_x, s_x, q, k
  cols = jnp.arange(t)
  v_p = jnp.where(cols < index_vs.VS_MIN_VERTICAL, jnp.inf, v_p)
  s_p = jnp.where(cols < index_vs.VS_FORCED_SLASH_OFFSETS, jnp.inf, s_p)
  for name, sc, budget, desc in (("vertical", v_p, nv, False),
                                 ("slash", s_p, ns, True)):
    counts = jnp.full((n,), budget, jnp.int32)
    got, r = _timed(functools.partial(
        index_vs.top_sorted_positions, k_max=budget, descending=desc),
        (sc, counts))
    row[f"topk_{name}_ms"] = r["median_ms"]
    want, r = _timed(functools.partial(
        _top_searchsorted, k_max=budget, descending=desc), (sc, counts))
    row[f"topk_{name}_searchsorted_ms"] = r["median_ms"]
    row[f"topk_{name}_same"] = bool(jnp.all(got == want))
    keys = index_vs._sortable_key(sc).reshape(n, t)
    _, r = _timed(index_vs._kth_largest, (keys, counts))
    row[f"topk_{name}_radix_all_keys_ms"] = r["median_ms"]
    _, r = _timed(lambda x: jnp.cumsum(x, axis=-1, dtype=jnp.int32),
                  (keys > 3,))
    row["cumsum_ms"] = r["median_ms"]
  ind = index_vs.VerticalSlashIndices(
      vertical=_top_searchsorted(v_p, jnp.int32(nv), nv, False),
      vertical_count=jnp.full((1, n), nv, jnp.int32),
      slash=_top_searchsorted(s_p, jnp.int32(ns), ns, True),
      slash_count=jnp.full((1, n), ns, jnp.int32))
  _, r = _timed(functools.partial(index.vertical_slash_chain_layout,
                                  seq_len=t), (ind,))
  row["chain_layout_ms"] = r["median_ms"]
  _, r = _timed(functools.partial(index.vertical_slash_chain_layout,
                                  seq_len=t, builder="pallas"), (ind,))
  row["chain_layout_pallas_ms"] = r["median_ms"]
  table, r = _timed(functools.partial(index_vs._successor_table, seq_len=t,
                                      bs=64), (ind.slash, ind.slash_count))
  row["chain_successor_table_ms"] = r["median_ms"]
  _, r = _timed(functools.partial(index_vs._runs, bs=64), (table,))
  row["chain_runs_ms"] = r["median_ms"]
  print(json.dumps(row), flush=True)
  return row


def run(t: int, n: int, kv: int, d: int, seed: int) -> dict:
  nv, ns = _BUDGET
  q, k = _inputs(t, n, kv, d, seed)
  row = dict(T=t, N=n, K=kv, D=d, n_vertical=nv, n_slash=ns, last_q=_LAST_Q)
  (v_p, s_p), r = _timed(
      functools.partial(vs_line_scores, last_q=_LAST_Q), (q, k))
  row.update(scores_pallas_ms=r["median_ms"],
             scores_pallas_compile_s=r["compile_s"])
  _, r = _timed(functools.partial(
      vs_pallas.row_stats, last_q=_LAST_Q, config=Config()), (q, k))
  row["scores_pallas_stats_pass_ms"] = r["median_ms"]
  (v_x, s_x), r = _timed(
      functools.partial(index_vs.line_scores_xla, last_q=_LAST_Q), (q, k))
  row.update(scores_xla_ms=r["median_ms"],
             vertical_rel_err=_rel_err(v_p, v_x),
             slash_rel_err=_rel_err(s_p, s_x))
  del v_p, s_p, v_x, s_x
  est = {}
  for scores in ("pallas", "xla"):
    fn = functools.partial(index.vertical_slash_indices, n_vertical=nv,
                           n_slash=ns, last_q=_LAST_Q, scores=scores)
    est[scores], r = _timed(fn, (q, k))
    row[f"estimate_{scores}_ms"] = r["median_ms"]
  row.update(_same_share(est["pallas"], est["xla"]))
  chain = {}
  for builder in ("xla", "pallas"):
    chain[builder], r = _timed(functools.partial(
        index.vertical_slash_chain_layout, seq_len=t, builder=builder),
        (est["pallas"],))
    row[f"chain_layout_{builder}_ms"] = r["median_ms"]
  row["chain_layout_ms"] = row["chain_layout_pallas_ms"]
  row["chain_layout_pallas_same_as_xla"] = _same_layout(chain["pallas"],
                                                        chain["xla"])
  del chain

  for builder, key in (("pallas", ""), ("xla", "_xla")):
    def estimate_and_layout(q, k, builder=builder):
      ind = index.vertical_slash_indices(q, k, nv, ns, _LAST_Q,
                                         scores="pallas")
      return index.vertical_slash_chain_layout(ind, t, builder=builder)

    _, r = _timed(estimate_and_layout, (q, k))
    row[f"estimate_pallas_plus_chain_layout{key}_ms"] = r["median_ms"]
  print(json.dumps(row), flush=True)
  return row


def _same_layout(a, b) -> bool:
  """Every array of two chain layouts is equal."""
  return all(bool(jnp.array_equal(x, y)) for x, y in
             zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)))


def chain_sweep(t: int, n: int, kv: int, d: int, seed: int) -> list[dict]:
  """Launch knobs of the Pallas chain-layout builder at one T (on the
  estimate's indices); each config's arrays must equal the XLA builder's.
  Also times its first launch alone (`table_pass_ms`)."""
  nv, ns = _BUDGET
  q, k = _inputs(t, n, kv, d, seed)
  ind = index.vertical_slash_indices(q, k, nv, ns, _LAST_Q, scores="pallas")
  del q, k
  want = index.vertical_slash_chain_layout(ind, t, builder="xla")
  rows = []
  for r_tile, warps in itertools.product((8, 16, 32), (2, 4)):
    cfg = ChainConfig(rows_per_tile=r_tile, num_warps=warps)
    got, r = _timed(lambda s, sc, v, vc, cfg=cfg: vs_chain_layout(
        s, sc, v, vc, t, 64, config=cfg),
        (ind.slash, ind.slash_count, ind.vertical, ind.vertical_count),
        budget_s=1.0)
    row = dict(T=t, config=repr(cfg), ms=r["median_ms"],
               same_as_xla=_same_layout(got, want))
    del got
    _, r = _timed(functools.partial(
        vs_chain_pallas.table_pass, seq_len=t, block_size=64, config=cfg),
        (ind.slash, ind.slash_count, ind.vertical, ind.vertical_count),
        budget_s=1.0)
    row["table_pass_ms"] = r["median_ms"]
    print(json.dumps(row), flush=True)
    rows.append(row)
  return rows


def sweep(t: int, n: int, kv: int, d: int, seed: int) -> list[dict]:
  q, k = _inputs(t, n, kv, d, seed)
  rows = []
  for block_k, warps, stages in itertools.product((64, 128), (4, 8), (2, 3)):
    cfg = Config(block_k=block_k, num_warps=warps, num_stages=stages)
    fn = functools.partial(vs_line_scores, last_q=_LAST_Q, config=cfg)
    try:
      _, r = _timed(fn, (q, k), budget_s=1.0)
      row = dict(T=t, config=repr(cfg), ms=r["median_ms"])
    except Exception as e:  # noqa: BLE001 (a config that fails to compile)
      row = dict(T=t, config=repr(cfg), error=str(e)[:300])
    print(json.dumps(row), flush=True)
    rows.append(row)
  return rows


def main():
  ap = argparse.ArgumentParser()
  ap.add_argument("--seq-lens", type=int, nargs="+",
                  default=[16384, 131072, 1048576])
  ap.add_argument("--out", default="outputs")
  ap.add_argument("--kv-heads", type=int, default=8)
  ap.add_argument("--sweep", action="store_true",
                  help="launch-knob sweep of the fused scores at max T")
  ap.add_argument("--breakdown", action="store_true",
                  help="per-stage times only (no estimate rows)")
  ap.add_argument("--chain-sweep", action="store_true",
                  help="only the Pallas chain-layout builder's knobs")
  args = ap.parse_args()
  out = Path(args.out)
  out.mkdir(parents=True, exist_ok=True)
  results = dict(env=bc.environment(), rows=[], sweep=[])
  if args.chain_sweep:
    results["chain_sweep"] = [
        row for t in args.seq_lens
        for row in chain_sweep(t, 32, args.kv_heads, 128, 0)]
    (out / "gpu_vs_estimate_chain_sweep.json").write_text(
        json.dumps(results, indent=1))
    return
  path = out / "gpu_vs_estimate.json"
  if args.breakdown:
    results["breakdown"] = [breakdown(t, 32, args.kv_heads, 128, 0)
                            for t in args.seq_lens]
    path = out / "gpu_vs_estimate_breakdown.json"
    path.write_text(json.dumps(results, indent=1))
    if args.sweep:
      results["sweep"] = sweep(max(args.seq_lens), 32, args.kv_heads, 128, 0)
      path.write_text(json.dumps(results, indent=1))
    return
  for t in args.seq_lens:
    t0 = time.time()
    results["rows"].append(run(t, 32, args.kv_heads, 128, 0))
    print(f"T={t} done in {time.time() - t0:.0f} s", flush=True)
    path.write_text(json.dumps(results, indent=1))
  if args.sweep:
    results["sweep"] = sweep(max(args.seq_lens), 32, args.kv_heads, 128, 0)
    path.write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
  main()
