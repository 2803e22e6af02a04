"""GPU measurements of the Vertical-Slash estimate: XLA vs fused Pallas scores.

For each T (bf16 synthetic q/k, N=32, K=8, D=128, budgets 1000/6096):
- agreement of `pallas_kernels.vs_estimate.vs_line_scores` with the XLA
  scores (`index_vs.line_scores_xla`): max relative error of both score
  vectors, and the share of identical selected lines;
- times (median, compile separate): the scores alone, the whole estimate
  (`vertical_slash_indices`, scores + top-k selection) with either scorer,
  the chain layout, and estimate + chain layout (the issue's "index build +
  layout" figure);
- with --sweep, the fused scores' launch knobs at the largest T.

  PYTHONPATH=. python3 -m experiments.gpu_vs_estimate --out DIR [--sweep]
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
from minference_jax import index, index_vs, synthetic
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


def run(t: int, n: int, kv: int, d: int, seed: int) -> dict:
  nv, ns = _BUDGET
  s = synthetic.synthetic_qkv(seed, batch=1, seq_len=t, num_heads=n,
                              num_kv_heads=kv, head_dim=d,
                              dtype=jnp.bfloat16)
  q, k = jax.block_until_ready((s.q, s.k))
  del s
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
  chain_fn = functools.partial(index.vertical_slash_chain_layout, seq_len=t)
  _, r = _timed(chain_fn, (est["pallas"],))
  row["chain_layout_ms"] = r["median_ms"]

  def estimate_and_layout(q, k):
    ind = index.vertical_slash_indices(q, k, nv, ns, _LAST_Q,
                                       scores="pallas")
    return index.vertical_slash_chain_layout(ind, t)

  _, r = _timed(estimate_and_layout, (q, k))
  row["estimate_pallas_plus_chain_layout_ms"] = r["median_ms"]
  print(json.dumps(row), flush=True)
  return row


def sweep(t: int, n: int, kv: int, d: int, seed: int) -> list[dict]:
  s = synthetic.synthetic_qkv(seed, batch=1, seq_len=t, num_heads=n,
                              num_kv_heads=kv, head_dim=d,
                              dtype=jnp.bfloat16)
  q, k = jax.block_until_ready((s.q, s.k))
  rows = []
  for block_k, warps, heads, stages in itertools.product(
      (64, 128), (4, 8), (1, 2), (2, 3)):
    cfg = Config(block_k=block_k, num_warps=warps, heads_per_program=heads,
                 num_stages=stages)
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
  args = ap.parse_args()
  out = Path(args.out)
  out.mkdir(parents=True, exist_ok=True)
  results = dict(env=bc.environment(), rows=[], sweep=[])
  path = out / "gpu_vs_estimate.json"
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
