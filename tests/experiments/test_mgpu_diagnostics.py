"""The GPU diagnostics' CPU parts: the profiler trace summary
(`experiments/gpu_mgpu_profile.py`), the profiling knobs of the Mosaic GPU
`Config`, and the harness's layout statistics
(`experiments/gpu_vs_mgpu_variants.layout_stats`). The profiled kernel
itself runs on a GPU only: its trace is written by a host callback that
needs a GPU backend even to lower."""

import collections

import numpy as np
import pytest

import kernel_test_utils as ktu
from experiments import gpu_mgpu_profile as prof
from experiments import gpu_vs_mgpu_variants as variants
from pallas_kernels.mosaic_gpu_core import Config


def _random_trace(rng, n_ctas, compute_wgs, warpgroups, names):
  """Events of random back-to-back regions with random gaps (one nested
  region inside some), and what they sum to per role."""
  events = []
  want = collections.defaultdict(lambda: collections.defaultdict(float))
  calls = collections.defaultdict(lambda: collections.defaultdict(int))
  span = collections.defaultdict(float)
  covered = collections.defaultdict(float)
  for tid in range(1, n_ctas * warpgroups + 1):
    role = ("compute" if (tid - 1) % warpgroups < compute_wgs
            else "producer")
    ts = float(rng.uniform(0, 100))
    t0 = None  # a warpgroup's time runs from its first event to its last
    for _ in range(int(rng.integers(1, 6))):
      ts += float(rng.uniform(0, 2))  # a gap: no region
      t0 = ts if t0 is None else t0
      name = names[int(rng.integers(len(names)))]
      length = float(rng.uniform(0.1, 5))
      events.append(dict(name=name, ph="B", ts=ts, tid=tid))
      if rng.random() < 0.3:  # a nested region inside this one
        events.append(dict(name="inner", ph="B", ts=ts + 0.01 * length,
                           tid=tid))
        events.append(dict(name="inner", ph="E", ts=ts + 0.02 * length,
                           tid=tid))
        want[role]["inner"] += 0.01 * length
        calls[role]["inner"] += 1
      events.append(dict(name=name, ph="E", ts=ts + length, tid=tid))
      want[role][name] += length
      calls[role][name] += 1
      covered[role] += length
      ts += length
    span[role] += ts - t0
  rng.shuffle(events)  # the summary sorts each warpgroup's events
  return events, want, calls, span, covered


def test_summarize_trace_sums_regions_per_role():
  rng, seed = ktu.fresh_rng()
  compute_wgs, warpgroups = 2, 4
  events, want, calls, span, covered = _random_trace(
      rng, 3, compute_wgs, warpgroups, ["qk", "softmax", "wait_v"])
  got = prof.summarize_trace(events, compute_wgs, warpgroups)
  assert set(got) == set(span), seed
  for role, regions in got.items():
    for name, total in want[role].items():
      np.testing.assert_allclose(regions[name]["total_us"], total,
                                 rtol=1e-9, err_msg=f"seed={seed}")
      np.testing.assert_allclose(regions[name]["share"], total / span[role],
                                 rtol=1e-9, err_msg=f"seed={seed}")
      assert regions[name]["calls"] == calls[role][name], seed
    np.testing.assert_allclose(regions["other"]["total_us"],
                               span[role] - covered[role], rtol=1e-9,
                               atol=1e-9, err_msg=f"seed={seed}")
    totals = [r["total_us"] for r in regions.values()]
    assert totals == sorted(totals, reverse=True), "largest region first"


def test_summarize_trace_rejects_bad_input():
  events = [dict(name="qk", ph="B", ts=0.0, tid=1),
            dict(name="mask", ph="E", ts=1.0, tid=1)]
  with pytest.raises(ValueError, match="unbalanced"):
    prof.summarize_trace(events, 2, 3)
  with pytest.raises(ValueError, match="compute_wgs"):
    prof.summarize_trace([], 2, 2)


def test_profile_knobs_are_checked_and_take_smem():
  with pytest.raises(ValueError, match="profile_space and profile_dir"):
    Config(profile_space=64)
  with pytest.raises(ValueError, match="profile_space and profile_dir"):
    Config(profile_dir="traces")
  with pytest.raises(ValueError, match="profile_space"):
    Config(profile_space=-1, profile_dir="traces")
  for base in (Config(), Config(ring_producers=True),
               Config(compute_wgs=1)):
    profiled = Config(compute_wgs=base.compute_wgs,
                      ring_producers=base.ring_producers, profile_space=64,
                      profile_dir="traces")
    warpgroups = base.compute_wgs + base.producers
    assert (profiled.smem_bytes(128) - base.smem_bytes(128)
            == warpgroups * 64 * 16)


def test_layout_stats_match_a_count_by_hand():
  rng, seed = ktu.fresh_rng()
  t, n = 1280, 3
  layout = ktu.random_vs_layout(rng, 1, n, t, 12, 20)
  got = variants.layout_stats(layout, t, interpret=True)
  cnt = np.asarray(layout.block_count)
  off = np.asarray(layout.block_offset)
  runs, misaligned, tails = [], [], []
  for b, h, m in np.ndindex(cnt.shape):
    o = off[b, h, m, :cnt[b, h, m]]
    starts = [j for j in range(len(o)) if j == 0 or o[j] != o[j - 1] + 64]
    runs.append(len(starts))
    misaligned.append(sum(o[j] % 8 != 0 for j in starts))
    # A run's last window leaves a tail when its end (clipped to T) is
    # not 8-aligned; 8 tails make one gathered tile.
    ends = [j for j in range(len(o)) if j + 1 == len(o)
            or o[j + 1] != o[j] + 64]
    n_tails = sum(min(o[j] + 64, t) % 8 != 0 for j in ends)
    tails.append(-(-n_tails // 8))
  want = dict(windows=cnt.mean(), runs=np.mean(runs),
              misaligned_runs=np.mean(misaligned), gathered=np.mean(tails),
              columns=np.asarray(layout.column_count).mean())
  for name, value in want.items():
    np.testing.assert_allclose(got[name], value, rtol=1e-6,
                               err_msg=f"{name} (seed={seed})")
  assert got["runs"] > 0 and got["misaligned_runs"] > 0, seed


def test_layout_source_is_checked():
  for cfg_cls in (variants.Cfg, prof.Cfg):
    with pytest.raises(ValueError, match="layout_source"):
      cfg_cls(layout_source="random")
