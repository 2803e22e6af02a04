"""Timing, phase accounting, scaling, memory statistics and crossovers.

Pure functions over measured numbers (no device work besides `time_runs`
and `device_memory`), so each is tested on CPU with made-up inputs.
"""

import statistics
import time
from collections.abc import Callable, Sequence

import jax

GIB = 1024**3

# The phases of a prefill, in report order.
PHASES = ("embed", "qkv", "index", "sparse_kernel", "out_mlp", "logits",
          "other")
PHASE_TEXT = {
    "embed": "embedding gather + RoPE tables",
    "qkv": "norm, q/k/v projections, RoPE",
    "index": "index build (estimate + layout)",
    "sparse_kernel": "attention kernels (attention minus index build)",
    "out_mlp": "output projection, norm, MLP",
    "logits": "final norm + logits of the last position",
    "other": "pipelined total minus the sum of the pieces",
}


def time_runs(run: Callable[[], object], *, warmup: int, min_repeats: int,
              max_repeats: int, budget_s: float,
              inspect: Callable[[object], object] | None = None) -> dict:
  """Median wall time of `run()` (blocked) after warm-up.

  A warm-up run of `budget_s` or longer is the measurement (one repeat,
  `from_warmup` True): a second run of a minute-long prefill costs more
  than the first-run effects it would remove (the executables are compiled
  before; what remains is module loading and allocator growth).

  Each run's output is dropped before the next starts (a kept KV cache
  would double the memory); `inspect(output)` of the last run is returned
  as "inspected" (e.g. whether the logits are finite).

  Returns:
    {"median_s", "min_s", "max_s", "repeats", "times_s", "warmup_s",
    "from_warmup", "inspected"}.
  """
  est = None
  warm = []
  out = None
  for _ in range(max(warmup, 1)):
    out = None
    t0 = time.perf_counter()
    out = jax.block_until_ready(run())
    est = time.perf_counter() - t0
    warm.append(est)
  if est >= budget_s:
    return dict(median_s=est, min_s=est, max_s=est, repeats=1,
                times_s=[est], warmup_s=warm, from_warmup=True,
                inspected=inspect(out) if inspect else None)
  reps = int(min(max_repeats, max(min_repeats, budget_s // max(est, 1e-9))))
  times = []
  for _ in range(reps):
    out = None
    t0 = time.perf_counter()
    out = jax.block_until_ready(run())
    times.append(time.perf_counter() - t0)
  return dict(median_s=statistics.median(times), min_s=min(times),
              max_s=max(times), repeats=reps, times_s=times, warmup_s=warm,
              from_warmup=False, inspected=inspect(out) if inspect else None)


def fill_unmeasured(values: Sequence[float | None]) -> tuple[list[float],
                                                             int]:
  """None entries -> the mean of the measured ones; (values, measured)."""
  got = [v for v in values if v is not None]
  if not got:
    return [0.0] * len(values), 0
  mean = sum(got) / len(got)
  return [mean if v is None else float(v) for v in values], len(got)


def phase_breakdown(times: dict, pipelined_s: float | None) -> dict:
  """Seconds per phase of one prefill from a synchronised piece run.

  Args:
    times: `LayerwisePrefill.phases` output: "embed", "logits" (s) and
      per-layer lists "qkv", "index" (None where not measured), "attention"
      (index + kernel) and "out_mlp".
    pipelined_s: the same prefill's pipelined time (its median), or None.

  Returns:
    {"seconds": {phase: s}, "fraction": {phase: share of the sum}, "layers",
    "index_layers_measured", "synchronised_s", "pipelined_s"}. "other" is
    pipelined minus synchronised (negative when splitting the layer into
    pieces costs more than it shows, e.g. lost fusion or extra copies).

  Raises:
    ValueError: per-layer lists of different lengths.
  """
  per_layer = ("qkv", "index", "attention", "out_mlp")
  counts = {len(times[k]) for k in per_layer}
  if len(counts) != 1:
    raise ValueError(f"per-layer lists differ in length: "
                     f"{ {k: len(times[k]) for k in per_layer} }")
  index, measured = fill_unmeasured(times["index"])
  attention = [float(a) for a in times["attention"]]
  seconds = {
      "embed": float(times["embed"]),
      "qkv": float(sum(times["qkv"])),
      "index": float(sum(index)),
      "sparse_kernel": float(sum(a - i for a, i in zip(attention, index))),
      "out_mlp": float(sum(times["out_mlp"])),
      "logits": float(times["logits"]),
  }
  synchronised = sum(seconds.values())
  seconds["other"] = (0.0 if pipelined_s is None
                      else float(pipelined_s) - synchronised)
  total = sum(seconds[p] for p in PHASES if p != "other")
  fraction = {p: (seconds[p] / total if total > 0 else 0.0) for p in PHASES}
  return dict(seconds=seconds, fraction=fraction, layers=counts.pop(),
              index_layers_measured=measured, synchronised_s=synchronised,
              pipelined_s=pipelined_s,
              linear_s=seconds["qkv"] + seconds["out_mlp"])


def scale_to_layers(measured_s: float, fixed_s: float, run_layers: int,
                    full_layers: int) -> float:
  """A prefill time of `run_layers` layers scaled to `full_layers`.

  measured = fixed + run_layers * per_layer, with `fixed` the embedding and
  logits; returns fixed + full_layers * per_layer.

  Raises:
    ValueError: non-positive layer counts, or fixed > measured.
  """
  if run_layers < 1 or full_layers < 1:
    raise ValueError("layer counts must be >= 1")
  if fixed_s > measured_s:
    raise ValueError(f"fixed part {fixed_s} s exceeds the measured"
                     f" {measured_s} s")
  return fixed_s + (measured_s - fixed_s) * full_layers / run_layers


# ----------------------------------------------------------------- memory
def device_memory(device=None) -> dict | None:
  """The device's allocator statistics, or None where the backend keeps
  none (the CPU backend returns None)."""
  device = device or jax.devices()[0]
  try:
    stats = device.memory_stats()
  except (NotImplementedError, RuntimeError):
    return None
  return dict(stats) if stats else None


def case_peak(before: dict | None, after: dict | None,
              platform: str) -> dict:
  """The measured peak of one case from allocator stats before and after.

  JAX exposes no reset of the peak, so `peak_bytes_in_use` is the process's
  peak: it is this case's peak exactly when it rose during the case (the
  runner orders cases by estimated memory so that most do); otherwise the
  case's peak is at most that value.

  Returns:
    {"peak_gib": float | None, "peak_exact": bool, "peak_at_most_gib",
    "in_use_before_gib", "note"}.
  """
  if before is None or after is None:
    return dict(peak_gib=None, peak_exact=False, peak_at_most_gib=None,
                in_use_before_gib=None,
                note=f"the {platform} backend reports no memory statistics"
                " (device.memory_stats() is None); only the estimate and"
                " XLA's buffer sizes are given")
  peak = after.get("peak_bytes_in_use", 0)
  rose = peak > before.get("peak_bytes_in_use", 0)
  return dict(peak_gib=peak / GIB if rose else None, peak_exact=rose,
              peak_at_most_gib=peak / GIB,
              in_use_before_gib=before.get("bytes_in_use", 0) / GIB,
              note="" if rose else "an earlier case set the process peak;"
              " this case's peak is at most peak_at_most_gib")


def xla_predicted_peak(weights_bytes: int, step: dict | None,
                       step_param_bytes: int, kept_kv_bytes: int) -> int | None:
  """Device bytes XLA's buffer assignment implies for a run.

  All weights + the largest executable's arguments besides its layer
  weights, temporaries and outputs not aliased to inputs + KV kept on the
  device by earlier layers.
  """
  if step is None:
    return None
  live = (step["argument"] - step_param_bytes + step["temp"]
          + step["output"] - step["alias"] - step.get("host_output", 0))
  return int(weights_bytes + max(live, 0) + kept_kv_bytes)


# -------------------------------------------------------------- crossover
def crossover(rows: list[dict], sparse_key: str, dense_key: str,
              value: str) -> dict:
  """Smallest length from which sparse beats dense at every larger length.

  Args:
    rows: result rows with "T", "case", `value` (seconds, lower better)
      and the `by` fields.
    sparse_key, dense_key: row filters, "case" labels of the sparse and the
      dense rows (rows are matched by T).
    value: the row field compared (e.g. "model_s", "attention_layer_s").

  Returns:
    {"crossover_T": int | None, "speedup": {T: dense / sparse}}.
  """
  dense = {r["T"]: r[value] for r in rows
           if r.get("case") == dense_key and r.get(value)}
  speed = {r["T"]: dense[r["T"]] / r[value] for r in rows
           if r.get("case") == sparse_key and r.get(value)
           and r["T"] in dense}
  lens = sorted(speed)
  cross = next((t for t in lens if all(speed[u] > 1.0 for u in lens
                                       if u >= t)), None)
  return dict(crossover_T=cross, speedup={int(t): round(speed[t], 4)
                                          for t in lens})
