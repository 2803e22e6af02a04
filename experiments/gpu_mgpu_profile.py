"""Where the warpgroups of a Mosaic GPU launch spend their time.

Run on an H100/H200 from the repo root:
  PYTHONPATH=. python3 -m experiments.gpu_mgpu_profile [out_dir=DIR]
      ["kernels=[vs_k128,vs_k64,free_k128]"] [seq_len=16384]
      [num_heads=8] [num_kv_heads=2] [layout_source=clustered]
      [profile_space=512]

Each kernel runs once with `Config.profile_space`, which turns on Mosaic
GPU's profiler. The profiler records the start and end of every named
region (`jax.named_scope` in `mosaic_gpu_core.tile_list_attention`) in
every warpgroup of every CTA, and writes a Chrome trace (open it in
Perfetto) under out_dir/profile_<kernel>/.

This script adds the regions up per role (the compute warpgroups, the
producers) and reports for each region:
- the total time;
- its share of the role's time (from a warpgroup's first event to its
  last, summed over warpgroups);
- the number of calls and the mean length of one.
"other" is the time between regions.

The clock reads cost time, so the shares are a diagnostic, not a timing.
The default size is small (the trace is written by a Python loop over
every event): N = 8, K = 2, T = 16K. Even so each trace takes 120-190 MB
(H200, tenth session), so delete the profile_* folders before fetching
out_dir from a device machine. A warpgroup records at most profile_space
regions: the longest query blocks' lists are cut short, and a single
producer of both rings (`vs_k64`, `vs_k128_one_producer`) records both
rings' regions and stops sooner.

The kernels are the Vertical-Slash window launch without the column seed
(`gpu_vs_mgpu_variants`' rows) on the same layout:
- `vs_k128`: paired steps, default config;
- `vs_k128_one_producer`: paired steps, one producer for both rings;
- `vs_k64`: 64-key steps, default config;
- `free_k128`: the mask-free 128-key loop with one slot per ring.

Writes gpu_mgpu_profile.json / .md to out_dir ($OUT if set).
"""

import collections
import dataclasses
import glob
import json
import os
import sys
import traceback
import warnings

import jax

from experiments import bench_common as bc
from experiments import gpu_vs_mgpu_variants as variants
from pallas_kernels.mosaic_gpu_core import BLOCK
from pallas_kernels.vertical_slash import pallas_mosaic_gpu as vs_mgpu

warnings.filterwarnings("ignore", message="The Pallas Triton backend")

# kernel -> (keys per step, plan class or None for the stream plan, config)
KERNELS = {
    "vs_k128": (2 * BLOCK, None, variants.PAIRED),
    "vs_k128_one_producer": (2 * BLOCK, None, variants.PAIRED_ONE_PRODUCER),
    "vs_k64": (BLOCK, None, vs_mgpu.default_config(128)),
    "free_k128": (2 * BLOCK, variants._Plan128Free, variants.W2S1),
}


@dataclasses.dataclass(frozen=True)
class Cfg:
  out_dir: str = os.environ.get("OUT", "outputs")
  kernels: tuple[str, ...] = ("vs_k128", "vs_k64", "free_k128")
  seq_len: int = 16384
  num_heads: int = 8
  num_kv_heads: int = 2
  head_dim: int = 128
  vs_budget: tuple[int, int] = (1000, 6096)
  layout_source: str = "clustered"  # or "synthetic" (gpu_vs_mgpu_variants)
  profile_space: int = 512  # regions per warpgroup and CTA
  seed: int = 0

  def __post_init__(self):
    variants.check_layout_source(self.layout_source)


def summarize_trace(events: list[dict], compute_wgs: int,
                    warpgroups: int) -> dict:
  """{role: {region: dict(total_us, share, calls, mean_ns)}} from a Mosaic
  GPU Chrome trace's events ("B"/"E" pairs with name, ts in us, tid).

  tid - 1 counts warpgroups CTA by CTA (`warpgroups` per CTA): the first
  `compute_wgs` of a CTA are "compute", the rest "producer". Nested
  regions count in full in each. A role's time is the sum over its
  warpgroups of last event - first event; "other" is what no top-level
  region covers.
  """
  if compute_wgs < 1 or warpgroups <= compute_wgs:
    raise ValueError(f"compute_wgs={compute_wgs} must be in [1,"
                     f" warpgroups={warpgroups})")
  by_tid = collections.defaultdict(list)
  for e in events:
    by_tid[e["tid"]].append(e)
  totals = collections.defaultdict(lambda: collections.defaultdict(float))
  calls = collections.defaultdict(lambda: collections.defaultdict(int))
  span = collections.defaultdict(float)
  covered = collections.defaultdict(float)
  for tid, evs in by_tid.items():
    role = ("compute" if (tid - 1) % warpgroups < compute_wgs
            else "producer")
    evs = sorted(evs, key=lambda e: e["ts"])
    span[role] += evs[-1]["ts"] - evs[0]["ts"]
    stack = []
    for e in evs:
      if e["ph"] == "B":
        stack.append(e)
        continue
      if not stack or stack[-1]["name"] != e["name"]:
        raise ValueError(f"unbalanced trace at tid {tid}: end of"
                         f" {e['name']!r} inside"
                         f" {stack[-1]['name'] if stack else None!r}")
      begin = stack.pop()
      length = e["ts"] - begin["ts"]
      totals[role][e["name"]] += length
      calls[role][e["name"]] += 1
      if not stack:
        covered[role] += length
  out = {}
  for role in sorted(span):
    total = span[role]
    rows = {name: dict(total_us=t, share=t / total if total else 0.0,
                       calls=calls[role][name],
                       mean_ns=1e3 * t / calls[role][name])
            for name, t in totals[role].items()}
    other = max(total - covered[role], 0.0)
    rows["other"] = dict(total_us=other,
                         share=other / total if total else 0.0, calls=0,
                         mean_ns=0.0)
    out[role] = dict(sorted(rows.items(), key=lambda kv: -kv[1]["total_us"]))
  return out


def profile_kernel(cfg, name, q, k, v, layout):
  """Runs kernel `name` once with the profiler; returns (trace path,
  summary)."""
  if name not in KERNELS:
    raise ValueError(f"kernel {name!r} must be one of {tuple(KERNELS)}")
  step_keys, plan_cls, config = KERNELS[name]
  trace_dir = os.path.abspath(os.path.join(cfg.out_dir, f"profile_{name}"))
  os.makedirs(trace_dir, exist_ok=True)
  config = dataclasses.replace(config, profile_space=cfg.profile_space,
                               profile_dir=trace_dir)
  if plan_cls is None:
    fn = variants._stream_windows_fn(step_keys, config=config)
  else:
    fn = variants._windows_fn(plan_cls, step_keys, config)
  jax.block_until_ready(jax.jit(fn)(q, k, v, layout))
  jax.effects_barrier()  # the trace is written by a host callback
  traces = sorted(glob.glob(os.path.join(trace_dir, "*-trace.json")))
  if not traces:
    raise RuntimeError(f"no trace written under {trace_dir}")
  with open(traces[-1]) as f:
    events = json.load(f)["traceEvents"]
  summary = summarize_trace(events, config.compute_wgs,
                            config.compute_wgs + config.producers)
  return traces[-1], summary


def main(argv):
  cfg, _ = bc.parse_cli(Cfg, argv, None)
  meta = dict(bc.environment(), config=bc.as_dict(cfg))
  print(json.dumps(meta, default=str), flush=True)
  q, k, v, layout, source = variants.build_inputs(cfg, cfg.seq_len)
  stats = variants.layout_stats(layout, cfg.seq_len)
  print(json.dumps(dict(layout=source, **stats)), flush=True)
  rows = []
  for name in cfg.kernels:
    try:
      path, summary = profile_kernel(cfg, name, q, k, v, layout)
    except Exception as e:  # noqa: BLE001
      rows.append(dict(kernel=name, error=f"{type(e).__name__}:"
                       f" {str(e)[:300]}"))
      traceback.print_exc()
      continue
    for role, regions in summary.items():
      for region, r in regions.items():
        rows.append(dict(kernel=name, role=role, region=region,
                         share=r["share"], total_us=r["total_us"],
                         calls=r["calls"], mean_ns=r["mean_ns"],
                         trace=os.path.relpath(path, cfg.out_dir)))
    print(json.dumps(dict(kernel=name, summary=summary)), flush=True)
  cols = [(c, c) for c in ("kernel", "role", "region", "share", "total_us",
                           "calls", "mean_ns", "trace", "error")]
  print("wrote", *bc.write_results(cfg.out_dir, "gpu_mgpu_profile", meta,
                                   rows, cols), flush=True)


if __name__ == "__main__":
  main(sys.argv[1:])
