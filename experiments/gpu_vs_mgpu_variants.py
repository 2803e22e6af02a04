"""Where the Mosaic GPU Vertical-Slash window launch spends its time.

Run on an H100/H200 from the repo root:
  PYTHONPATH=. python3 -m experiments.gpu_vs_mgpu_variants [out_dir=DIR]
      ["lens=[131072]"] [budget_s=1] [max_repeats=5]

Times the window launch alone (`mosaic_gpu_core.tile_list_attention`, no
seed) over the same windows (the index builder's layout of clustered lines,
as in `gpu_mgpu_kernels`; N=32, K=8, D=128, bf16, 1000 vertical / 6096
slash) with different tile plans:
- `k80_masked`: an earlier kernel: 80-row tiles at floor8(o) (32-byte
  swizzle), every tile masked to its window (offset read in the compute
  warpgroup);
- `k64_cond`: the previous kernel's window launch (`tails="seed"`):
  64-row tiles at floor8(o) (128-byte swizzle), masked only where a pair is
  dropped (`core.CondMask`), no run tails;
- `k64_masked`: the same tiles, every tile masked (the cost of the masks);
- `k64_free`: the same tiles, no mask at all (not the layout's key set: the
  ceiling of the tile loop); `k64_free_s1`: with a one-slot K/V ring;
- `k128_free_s1` (`_s1_pingpong`, `_w1s2`): 128-key steps, no mask: the
  128-row tile at floor8 of every other window (ceil(count / 2) steps, at
  least the windows' pairs; TFLOP/s count the windows' pairs), one K/V
  slot per warpgroup (two warpgroups; with FA3's ping-pong), or two slots
  for one warpgroup;
- `stream_windows_tails`: the current Mosaic GPU launch alone: the windows'
  64-row tiles plus the run tails in gathered tiles (`_StreamPlan`, with
  the kernel that counts each block's tiles, `tile_steps_pass` alone,
  checked equal to its XLA reference pass, `tile_steps_xla`, on each
  layout); `_s1` with a one-slot ring;
- `stream_windows_tails_k128`: the same launch with paired (128-key) steps
  (`vs_mgpu.default_config(128, 128)`: one slot per warpgroup, one producer
  warpgroup per ring with 40 registers, each a step ahead);
  `_one_producer`: the eighth session's default (one producer for both
  rings, 72 registers); `_ring_by_ring`: that producer ring by ring with
  40 (no `Config.plan_ahead`); `_no_plan_ahead`: two producers without
  it; `_pingpong`; `_r24`, `_r56`:
  other producer registers; `stream_k128_free_windows` /
  `stream_free_windows`: paired / 64-key steps with no mask on the window
  tiles (their masks' cost, not the key set); `stream_windows_tails_2prod`,
  `k128_free_s1_2prod`: 64-key steps and the mask-free 128-key loop with
  one producer per ring (the tenth session's rows `_split_masks`,
  `_eager_masks` and `_k128_skip_unmasked`, all slower than the current
  stream, are in commit d70028e);
plus the whole kernel (`mgpu_full`: the column seed launch + the Mosaic GPU
launch with the run tails; `mgpu_full_seed_tails`: the previous kernel,
`_fwd(..., tails="seed")`, the run tails in the Triton seed launch), the seed
launches alone (`seed_only`: columns + run tails, the previous one;
`seed_columns_only`: the columns, the current one) and the Pallas-Triton
Vertical-Slash kernel; `mgpu_full_pingpong` is the whole kernel with FA3's
ping-pong schedule, `mgpu_full_k128` (`_one_producer`, `_ring_by_ring`)
with paired steps, `mgpu_full_2prod` 64-key steps with one producer per
ring, and `seed_configs=[BC-W-S,...]` adds the column launch alone and the whole
kernel under other Triton knobs (block_c, warps, stages). Effective
TFLOP/s count 64 x 64 pairs per window (and 64 per column for the whole
kernels), as `gpu_mgpu_kernels` does. `layout_source=synthetic` times
the builder's layout from `experiments.synthetic` q/k (bench_kernels'
"index builder" rows) instead of clustered lines; a `layout` row per T
gives the mean windows, runs, misaligned runs, gathered tiles and columns
per query block.

Before timing (`check=true`), the whole kernel (default config: two compute
warpgroups, which the interpret-mode tests do not run), with the run tails
in gathered tiles and in the seed launch (and with the gathered tails: the
ping-pong config, paired steps in their default, one-producer,
ring-by-ring and ping-pong configs, and 64-key steps with one producer
per ring, `CHECK_EXTRA`), is checked against the dense f32
reference on the tests' random layouts (misaligned runs, runs of one
window, runs crossing the diagonal, windows at the sequence end, inactive
heads, GQA) and the tests' hand-made runs and many-tails layout.

Writes `gpu_vs_mgpu_variants.json` / `.md` to out_dir ($OUT if set).
"""

import dataclasses
import functools
import json
import os
import sys
import traceback
import warnings

import jax
import jax.numpy as jnp
from jax import lax
from jax.experimental import pallas as pl

from experiments import bench_common as bc
from experiments.gpu_mgpu_kernels import Cfg as KernelsCfg
from experiments.gpu_mgpu_kernels import _dims, _vs_builder
from pallas_kernels import mosaic_gpu_core as core
from pallas_kernels import vertical_slash
from pallas_kernels.mosaic_gpu_core import BLOCK, Config
from pallas_kernels.vertical_slash import pallas_mosaic_gpu as vs_mgpu
from pallas_kernels.vertical_slash import tile_steps
from pallas_kernels.vertical_slash.base import Config as TritonConfig

warnings.filterwarnings("ignore", message="The Pallas Triton backend")


@dataclasses.dataclass(frozen=True)
class Cfg:
  out_dir: str = os.environ.get("OUT", "outputs")
  lens: tuple[int, ...] = (131072,)
  num_heads: int = 32
  num_kv_heads: int = 8
  head_dim: int = 128
  vs_budget: tuple[int, int] = (1000, 6096)
  seed: int = 0
  max_repeats: int = 5
  budget_s: float = 1.0
  check: bool = True
  # "clustered": the index builder's layout of clustered lines (gaussian
  # q/k/v); "synthetic": the builder's estimate on `minference_jax.
  # synthetic` q/k (bench_kernels' "index builder" rows: far more windows,
  # mostly short runs).
  layout_source: str = "clustered"
  check_tails: tuple[str, ...] = vs_mgpu.TAILS_KINDS  # paths to check
  kernels: tuple[str, ...] = ()  # a subset of the kernels to time (all)
  tail_chunks: tuple[int, ...] = ()  # extra TAIL_CHUNK values to time
  # Column-launch knobs to time ("BC-W-S": block_c, warps, stages), each
  # alone (`seed_columns_only@BC-W-S`) and in the whole kernel
  # (`mgpu_full@BC-W-S`); they run even if `kernels` leaves them out.
  seed_configs: tuple[str, ...] = ()

  def __post_init__(self):
    check_layout_source(self.layout_source)


class _Plan80(vs_mgpu._Plan):
  """The previous kernel's plan: window [o, o + 64) as the 80-row tile at
  min(floor8(o), T - 80), masked to its own causal columns on every step."""

  def key_start(self, m, i):
    start = lax.div(self._offset(m, i), jnp.int32(8)) * 8
    return pl.multiple_of(jnp.minimum(start, self.t - 80), 8)

  def segments(self, m):
    def window(i, rows, cols):
      o = self._offset(m, i)
      return (cols >= o) & (cols < o + BLOCK) & (cols <= rows)

    return (core.Segment(self.count(m), window),)


class _Plan64(vs_mgpu._Plan):
  """The current plan with its mask always on (`masked`) or off (`free`)."""

  mode = "masked"

  def segments(self, m):
    (seg,) = super().segments(m)
    if self.mode == "free":
      return (core.Segment(seg.end, None),)
    always = lambda i, x: jnp.bool_(True)
    return (core.Segment(seg.end, seg.mask._replace(need=always)),)


class _Plan64Free(_Plan64):
  mode = "free"


class _Plan128Free(vs_mgpu._Plan):
  """128-key steps, no mask (a tile-loop ceiling, not the layout's key
  set): step i reads the 128-row tile at floor8 of window 2i, clamped to
  T - 128; ceil(count / 2) steps, at least the windows' pairs."""

  def count(self, m):
    return lax.div(self.cnt_ref[self.bb, self.h, m] + 1, 2)

  def key_start(self, m, i):
    o = self._offset(m, 2 * i)
    start = jnp.minimum(o - lax.rem(o, jnp.int32(8)), self.t - 2 * BLOCK)
    return pl.multiple_of(start, 8)

  def segments(self, m):
    return (core.Segment(self.count(m), None),)


def _windows_fn(plan_cls, key_rows=BLOCK, config=None):
  """The window launch alone over `plan_cls`'s tiles ([key_rows, D]; the
  default config if None)."""
  def fn(q, k, v, layout):
    dims = _dims(q, k)
    return core.tile_list_attention(
        q, k, v, (layout.block_count, layout.block_offset),
        plan_fn=lambda refs, bb, h: plan_cls(*refs, bb, h, dims.t),
        config=config or Config.get_default(dims.d), dims=dims,
        interpret=None, name=f"vs_variant_{plan_cls.__name__}",
        key_rows=key_rows)
  return fn


def _with_tail_chunk(fn, cw):
  """fn traced with vertical_slash.pallas_mosaic_gpu.TAIL_CHUNK = cw."""
  def traced(*args):
    old, vs_mgpu.TAIL_CHUNK = vs_mgpu.TAIL_CHUNK, cw
    try:
      return fn(*args)
    finally:
      vs_mgpu.TAIL_CHUNK = old
  return traced


# FA3's ping-pong schedule between the two compute warpgroups.
PINGPONG = Config(compute_wgs=2, max_concurrent_steps=2,
                  use_schedule_barrier=True)


# 128-key tiles at D = 128: one K/V slot per warpgroup for two warpgroups
# (2 x (16 + 64) KiB of SMEM), or two slots for one warpgroup.
W2S1 = Config(compute_wgs=2, max_concurrent_steps=1)
W2S1P = Config(compute_wgs=2, max_concurrent_steps=1,
               use_schedule_barrier=True)
W1S2 = Config(compute_wgs=1, max_concurrent_steps=2)
# Paired steps at D = 128: the default (`vs_mgpu.default_config(128, 128)`:
# one slot, one producer warpgroup per ring with 40 registers, each a step
# ahead), the eighth session's default (one producer for both rings, 72
# registers), that producer ring by ring with 40, and the ping-pong.
PAIRED = vs_mgpu.default_config(128, 2 * BLOCK)
PAIRED_ONE_PRODUCER = dataclasses.replace(PAIRED, ring_producers=False,
                                          producer_registers=72)
PAIRED_RING_BY_RING = dataclasses.replace(PAIRED, plan_ahead=False,
                                          ring_producers=False,
                                          producer_registers=40)
PAIRED_PINGPONG = dataclasses.replace(PAIRED, use_schedule_barrier=True)
# 64-key steps and the mask-free 128-key loop with one producer per ring.
TWO_PRODUCERS = dataclasses.replace(Config.get_default(128),
                                    ring_producers=True)
W2S1_2PROD = dataclasses.replace(W2S1, ring_producers=True)


# (config, keys per step) of the checked kernels (None: the default config
# for those keys per step); CHECK_EXTRA are checked besides the default and
# ping-pong ones, with the run tails gathered.
CHECK_CONFIGS = {
    "default_config": (None, BLOCK),
    "pingpong": (PINGPONG, BLOCK),
    "k128": (None, 2 * BLOCK),
    "k128_ring_by_ring": (PAIRED_RING_BY_RING, 2 * BLOCK),
    "k128_pingpong": (PAIRED_PINGPONG, 2 * BLOCK),
    "k128_one_producer": (PAIRED_ONE_PRODUCER, 2 * BLOCK),
    "2prod": (TWO_PRODUCERS, BLOCK),
}
CHECK_EXTRA = ("k128", "k128_ring_by_ring", "k128_pingpong",
               "k128_one_producer", "2prod")


def _full(tails, seed_config=None, config=None, step_keys=BLOCK):
  """The whole kernel with the run tails where `tails` says (and the column
  launch's Triton knobs `seed_config`, the Mosaic launch's `config`;
  defaults if None) at `step_keys` keys per Mosaic GPU step (64 with the
  run tails in the seed)."""
  def fn(q, k, v, lay):
    keys = BLOCK if tails == "seed" else step_keys
    return vs_mgpu._fwd(q, k, v, lay.block_count, lay.block_offset,
                        lay.column_count, lay.column_index,
                        block_size=lay.block_size,
                        config=config or vs_mgpu.default_config(
                            q.shape[-1], keys),
                        interpret=None, tails=tails, seed_config=seed_config,
                        step_keys=keys)
  return fn


def seed_config(name: str) -> TritonConfig:
  """"BC-W-S" (e.g. "64-4-3"): the column launch's block_c, warps, stages."""
  try:
    block_c, warps, stages = (int(x) for x in name.split("-"))
  except ValueError:
    raise ValueError(
        f"seed config {name!r} is not BC-W-S, e.g. 64-4-3") from None
  return TritonConfig(block_c=block_c, num_warps=warps, num_stages=stages)


class _StreamPlanFreeWindows(vs_mgpu._StreamPlan):
  """The stream with no mask on its window tiles (gathered ones still
  masked): the cost of the window masks, not the layout's key set."""

  @staticmethod
  def _kind(header):
    return header * 0


def _stream_windows_fn(step_keys=BLOCK, plan_cls=vs_mgpu._StreamPlan,
                       config=None, interpret=None):
  """The current Mosaic GPU launch alone (no seed): windows + run tails,
  with the kernel that counts the tiles, at `step_keys` keys per step (the
  default config for them if `config` is None); `interpret`: None (GPU) or
  `plgpu.InterpretGPUParams` (tests)."""
  def fn(q, k, v, lay):
    dims = _dims(q, k)
    steps = tile_steps.tile_steps(lay.block_count, lay.block_offset,
                                  t=dims.t, interpret=interpret is not None)
    return core.tile_list_attention(
        q, k, v, (steps, lay.block_count, lay.block_offset),
        plan_fn=lambda refs, bb, h: plan_cls.of(refs, bb, h, dims.t),
        config=config or vs_mgpu.default_config(dims.d, step_keys),
        dims=dims, interpret=interpret, name="vs_variant_stream",
        stream=True, key_rows=step_keys)
  return fn


_stream_windows = _stream_windows_fn()


def _columns(q, k, v, lay, config=None):
  """The column launch alone (the current kernel's step 1)."""
  return vs_mgpu._seed(q, k, v, lay.column_count, lay.column_index,
                       lay.block_count, lay.block_offset, _dims(q, k),
                       interpret=False, tails=False, config=config)


def _impls(tail_chunks=(), seed_configs=()):
  full = _full("gathered")
  seed = lambda q, k, v, lay: vs_mgpu._seed(
      q, k, v, lay.column_count, lay.column_index, lay.block_count,
      lay.block_offset, _dims(q, k), interpret=False)
  steps = lambda q, k, v, lay: tile_steps.tile_steps(
      lay.block_count, lay.block_offset, t=q.shape[1])
  steps_xla = lambda q, k, v, lay: tile_steps.tile_steps_reference(
      lay.block_count, lay.block_offset, q.shape[1])
  triton = lambda q, k, v, lay: vertical_slash.vertical_slash_attention(
      q, k, v, lay)
  paired = 2 * BLOCK
  return [("triton_vertical_slash", triton, "all"),
          ("mgpu_full", full, "all"),
          ("mgpu_full_seed_tails", _full("seed"), "all"),
          ("mgpu_full_pingpong", _full("gathered", config=PINGPONG), "all"),
          ("mgpu_full_k128", _full("gathered", step_keys=paired), "all"),
          ("mgpu_full_k128_one_producer",
           _full("gathered", config=PAIRED_ONE_PRODUCER, step_keys=paired),
           "all"),
          ("mgpu_full_2prod", _full("gathered", config=TWO_PRODUCERS), "all"),
          ("mgpu_full_k128_ring_by_ring",
           _full("gathered", config=PAIRED_RING_BY_RING, step_keys=paired),
           "all"),
          ("seed_only", seed, "columns"),
          ("seed_columns_only", _columns, "columns"),
          ("stream_windows_tails", _stream_windows, "windows"),
          ("stream_windows_tails_k128", _stream_windows_fn(paired),
           "windows"),
          ("stream_windows_tails_k128_one_producer",
           _stream_windows_fn(paired, config=PAIRED_ONE_PRODUCER), "windows"),
          ("stream_windows_tails_k128_no_plan_ahead",
           _stream_windows_fn(paired, config=dataclasses.replace(
               PAIRED, plan_ahead=False)), "windows"),
          ("stream_windows_tails_2prod",
           _stream_windows_fn(config=TWO_PRODUCERS), "windows"),
          ("stream_windows_tails_k128_ring_by_ring",
           _stream_windows_fn(paired, config=PAIRED_RING_BY_RING),
           "windows"),
          ("stream_windows_tails_k128_pingpong",
           _stream_windows_fn(paired, config=PAIRED_PINGPONG), "windows"),
          ("stream_k128_free_windows",
           _stream_windows_fn(paired, _StreamPlanFreeWindows), "windows"),
          ("stream_free_windows",
           _stream_windows_fn(BLOCK, _StreamPlanFreeWindows), "windows"),
          ("stream_windows_tails_s1", _stream_windows_fn(config=W2S1),
           "windows"),
          ("tile_steps_pass", steps, None),
          ("tile_steps_xla", steps_xla, None),
          ("k80_masked", _windows_fn(_Plan80, 80), "windows"),
          ("k64_cond", _windows_fn(vs_mgpu._Plan), "windows"),
          ("k64_masked", _windows_fn(_Plan64), "windows"),
          ("k64_free", _windows_fn(_Plan64Free), "windows"),
          ("k64_free_s1", _windows_fn(_Plan64Free, config=W2S1), "windows"),
          ("k128_free_s1", _windows_fn(_Plan128Free, 2 * BLOCK, W2S1),
           "windows"),
          ("k128_free_s1_2prod",
           _windows_fn(_Plan128Free, 2 * BLOCK, W2S1_2PROD), "windows"),
          ("k128_free_s1_pingpong",
           _windows_fn(_Plan128Free, 2 * BLOCK, W2S1P), "windows"),
          ("k128_free_w1s2", _windows_fn(_Plan128Free, 2 * BLOCK, W1S2),
           "windows")] + [
              (f"stream_windows_tails_k128_r{regs}", _stream_windows_fn(
                  paired, config=dataclasses.replace(
                      PAIRED, producer_registers=regs)), "windows")
              for regs in (24, 56)] + [
              (f"{name}_cw{cw}", _with_tail_chunk(fn, cw), what)
              for cw in tail_chunks
              for name, fn, what in (("mgpu_full_seed_tails", _full("seed"),
                                      "all"),
                                     ("seed_only", seed, "columns"))] + [
              row for name in seed_configs for row in (
                  (f"seed_columns_only@{name}", functools.partial(
                      _columns, config=seed_config(name)), "columns"),
                  (f"mgpu_full@{name}",
                   _full("gathered", seed_config(name)), "all"))]


LAYOUT_SOURCES = ("clustered", "synthetic")


def check_layout_source(source: str):
  if source not in LAYOUT_SOURCES:
    raise ValueError(f"layout_source={source!r} must be one of"
                     f" {LAYOUT_SOURCES}")


def layout_stats(layout, t: int, interpret: bool = False) -> dict:
  """Means over all query blocks and heads of: windows, runs of contiguous
  windows, runs at misaligned starts, gathered tiles (from `tile_steps`;
  `interpret` runs it in interpret mode) and columns, on the device."""
  cnt, off = layout.block_count, layout.block_offset
  i = lax.broadcasted_iota(jnp.int32, off.shape, 3)
  live = i < cnt[..., None]
  prev = jnp.concatenate([jnp.full_like(off[..., :1], -2 * BLOCK),
                          off[..., :-1]], axis=-1)
  first = live & (off != prev + BLOCK)  # a run starts here
  steps = tile_steps.tile_steps(cnt, off, t=t, interpret=interpret)
  mean = lambda x: float(jnp.mean(x.astype(jnp.float32)))
  runs = jnp.sum(first, axis=-1)
  return dict(windows=mean(cnt), runs=mean(runs),
              misaligned_runs=mean(jnp.sum(first & (off % 8 != 0), axis=-1)),
              gathered=mean(steps - cnt), columns=mean(layout.column_count))


def build_inputs(cfg, t):
  """(q, k, v, layout, source) at length t for `cfg.layout_source` (cfg
  also gives seed, num_heads, num_kv_heads, head_dim, vs_budget):
  "clustered" is gaussian q/k/v with the index builder's layout of
  clustered lines, "synthetic" `_synthetic_layout`."""
  if cfg.layout_source == "synthetic":
    return _synthetic_layout(cfg, t)
  q, k, v = bc.gaussian_qkv(jax.random.key(cfg.seed + t), 1, t,
                            cfg.num_heads, cfg.num_kv_heads, cfg.head_dim,
                            jnp.bfloat16)
  layout, source = _vs_builder(KernelsCfg(vs_budget=cfg.vs_budget),
                               jax.random.key(cfg.seed + t + 1),
                               cfg.num_heads, t)
  return q, k, v, layout, source


def _synthetic_layout(cfg, t):
  """(q, k, v, layout, source): structured synthetic q/k/v and the index
  builder's layout from its estimate on them, as bench_kernels builds it."""
  from experiments import synthetic
  from minference_jax import index  # noqa: PLC0415
  s = synthetic.synthetic_qkv(cfg.seed + t, batch=1, seq_len=t,
                              num_heads=cfg.num_heads,
                              num_kv_heads=cfg.num_kv_heads,
                              head_dim=cfg.head_dim, dtype=jnp.bfloat16)
  nv, ns = cfg.vs_budget
  layout = index.vertical_slash_layout(
      index.vertical_slash_indices(s.q, s.k, nv, ns, scores="pallas"), t)
  return (s.q, s.k, s.v, jax.block_until_ready(layout),
          "index builder (synthetic q/k)")


def check(rows, tails_kinds=vs_mgpu.TAILS_KINDS):
  """The kernel (default config; and with the run tails gathered, the
  ping-pong config and `CHECK_EXTRA`) vs the f32 reference on random and
  the tests' hand-made layouts."""
  sys.path.insert(0, "tests")
  import kernel_test_utils as ktu  # noqa: PLC0415
  import test_kernels_vertical_slash_mgpu as tvs  # noqa: PLC0415
  from pallas_kernels.reference import vertical_slash_mask  # noqa: PLC0415

  import numpy as np  # noqa: PLC0415
  cases = [("random", 2048, 8, 2, 24, 40, s) for s in range(3)]
  cases += [("random", 1024, 4, 4, 6, 0, 3), ("runs", 448, 2, 1, 0, 0, 4),
            ("many_tails", tvs.MANY_TAILS_T, 2, 1, 0, 0, 5)]
  hand_made = dict(runs=tvs._run_layout, many_tails=tvs._many_tails_layout)
  runs = [(c, tails, "default_config") for c in cases for tails in tails_kinds]
  if "gathered" in tails_kinds:
    runs += [(c, "gathered", name) for c in cases
             for name in ("pingpong", *CHECK_EXTRA)]
  for (kind, t, n, kv, n_slash, n_vert, seed), tails, name in runs:
    config, step_keys = CHECK_CONFIGS[name]
    row = dict(kernel=f"check_{name}_{tails}", check=kind, T=t)
    try:
      rng = np.random.default_rng(seed)
      q, k, v = ktu.random_qkv(rng, 1, t, n, kv, 128, jnp.bfloat16)
      layout = (hand_made[kind]() if kind in hand_made else
                ktu.random_vs_layout(rng, 1, n, t, n_slash, n_vert,
                                     inactive=(1,)))
      out = np.asarray(_full(tails, config=config, step_keys=step_keys)(
          q, k, v, layout).astype(jnp.float32))
      want = ktu.reference(q, k, v, vertical_slash_mask(layout, t, t))
      rel = float(np.linalg.norm(out - want) / np.linalg.norm(want))
      inactive_ok = kind in hand_made or not out[:, :, 1].any()
      row.update(rel_ref=rel, ok=bool(np.isfinite(out).all() and rel < 1e-2
                                      and inactive_ok))
    except Exception as e:  # noqa: BLE001
      row.update(error=f"{type(e).__name__}: {str(e)[:300]}", ok=False)
      traceback.print_exc()
    rows.append(row)
    print(json.dumps(row), flush=True)


def main(argv):
  cfg, _ = bc.parse_cli(Cfg, argv, None)
  meta = dict(bc.environment(), config=bc.as_dict(cfg))
  print(json.dumps(meta, default=str), flush=True)
  rows = []
  if cfg.check:
    check(rows, cfg.check_tails)
  d = cfg.head_dim
  for t in cfg.lens:
    q, k, v, layout, source = build_inputs(cfg, t)
    row = dict(kernel="layout", T=t, source=source,
               **layout_stats(layout, t))
    rows.append(row)
    print(json.dumps(row), flush=True)
    windows = float(jnp.sum(layout.block_count, dtype=jnp.float32))
    columns = float(jnp.sum(layout.column_count, dtype=jnp.float32))
    pairs = dict(windows=windows * BLOCK * BLOCK, columns=columns * BLOCK)
    pairs["all"] = pairs["windows"] + pairs["columns"]
    if not cfg.kernels or "tile_steps_pass" in cfg.kernels:
      # The steps kernel against its XLA reference on this layout.
      got = tile_steps.tile_steps(layout.block_count, layout.block_offset,
                                  t=t)
      want = tile_steps.tile_steps_reference(layout.block_count,
                                             layout.block_offset, t)
      row = dict(kernel="tile_steps_pass", check="equals_xla_pass", T=t,
                 ok=bool(jnp.array_equal(got, want)))
      rows.append(row)
      print(json.dumps(row), flush=True)
      del got, want
    for name, fn, what in _impls(cfg.tail_chunks, cfg.seed_configs):
      if cfg.kernels and name not in cfg.kernels and "@" not in name:
        continue
      row = dict(kernel=name, T=t, source=source, pairs=what)
      try:
        tm = bc.time_jitted(fn, (q, k, v, layout), warmup=1, min_repeats=2,
                            max_repeats=cfg.max_repeats,
                            budget_s=cfg.budget_s)
        tm.pop("output", None)
        row.update(ms=tm["median_ms"], compile_s=tm["compile_s"])
        if what is not None:
          row["tflops"] = (bc.attention_flops(pairs[what], d)
                           / tm["median_ms"] / 1e9)
      except Exception as e:  # noqa: BLE001
        row["error"] = f"{type(e).__name__}: {str(e)[:300]}"
        traceback.print_exc()
      rows.append(row)
      print(json.dumps(row), flush=True)
    del q, k, v, layout
  cols = [(c, c) for c in ("kernel", "check", "T", "rel_ref", "ok", "pairs",
                           "ms", "tflops", "compile_s", "windows", "runs",
                           "misaligned_runs", "gathered", "columns",
                           "source", "error")]
  print("wrote", *bc.write_results(cfg.out_dir, "gpu_vs_mgpu_variants", meta,
                                   rows, cols), flush=True)


if __name__ == "__main__":
  main(sys.argv[1:])
