"""Mosaic GPU (Hopper) Vertical-Slash attention over a VerticalSlashLayout.

Two launches, one code path:
1. a small Pallas-Triton kernel (one program per 64-row query block) attends
   to the gathered key columns (`column_index[:column_count]`, all left of
   the query block: the Triton Vertical-Slash kernel's column phase,
   `phases.column_phase`) and writes each row's (output, base-2
   log-sum-exp); it runs only if the layout has a column budget;
2. the key windows (`block_offset[:block_count]`, 64 keys each at arbitrary
   starts) and their run tails (below) are a stream plan for
   `pallas_kernels.mosaic_gpu_core.tile_list_attention`
   (FlashAttention-3-style: warp-specialised, TMA copies into SMEM rings,
   wgmma), which merges step 1's (output, log-sum-exp) into its softmax
   state: the result is attention over windows + columns.

Mosaic GPU's TMA into the tiled SMEM that wgmma reads takes only 8-aligned
rows, so window [o, o + 64) is read as the 64-row tile at f = o - o % 8
(128-byte swizzle, as Block-Sparse and A-shape). The windows of a query
block come in runs of contiguous windows (window i + 1 at o_i + 64), and
64 is a multiple of 8, so the tiles of a run at a cover [a - a % 8,
a + 64 L - a % 8) without gap or overlap: only a run's first tile drops
pairs (its a % 8 keys below a), and a run's last a % 8 keys, the run tail
(at most 7 keys in the 8-aligned chunk after the last tile), are left out.
The producer warpgroup walks the windows in order (`_StreamPlan`): it
decides each tile's mask (masked only where it drops a pair: a misaligned
run's first window, the causal diagonal, a start clamped to T - 64 at the
sequence end) and writes it as a header word into SMEM for the consumer,
and it collects the run tails as 8-row chunks; every 8 tails (and the last
ones after the last window) become one gathered 64-row tile, eight 8-row
TMA copies, attended as one more step with a mask per 8-column group (tail
j keeps its first length_j keys, causal: the tail of a run that crosses
the diagonal lies right of some rows). The number of steps per query block
(windows + gathered tiles) comes from a small Pallas-Triton kernel that
reads each row's windows (`tile_steps.tile_steps`, 0.19 / 0.33 ms at 128K
/ 1M; until the sixth session an XLA pass over the whole block_offset,
0.68-0.75 / 3.5 ms). `_fwd(..., tails="seed")` is the previous kernel, which
attended the run tails in the Triton launch (a scan of each block's
windows, gathered 8 tails at a time) and the windows with a `core.CondMask`
on scalars the compute warpgroup read from GMEM. Hopper has no TMA gather
and one TMA per gathered row would need single-row boxes, which the tiled
SMEM does not take, so the columns stay on Triton (about 1000 of the ~7000
keys per row at MInference's default budget).

Speed (H200, bf16, N=32, K=8, D=128, 1000 vertical / 6096 slash from the
index builder over clustered lines, `experiments/gpu_vs_mgpu_variants.py`,
results in `experiments/results/gpu_vs_mgpu_tails_h200.md`; effective
TFLOP/s of 64 x 64 pairs per window and 64 per column; the previous kernel
timed in the same run): 10.6 ms / 448 TFLOP/s at 32K (previous 11.5 ms:
1.08x), 54.8 ms / 422 TFLOP/s at 128K (58.7 ms: 1.07x), 240 ms / 413
TFLOP/s at 512K (259 ms: 1.08x); the Pallas-Triton kernel took 13.0 ms /
62.5 ms at 32K / 128K in an earlier run. At 128K the Mosaic GPU launch
alone takes 52.2 ms with the tails and the steps pass (0.75 ms; 0.22 at
32K, 1.9 at 512K), against 49.5 ms for the previous window launch without
tails, and the column launch 4.6 ms (the previous columns + tails launch
10.4 ms). A variant whose consumer read the chunk words only on the
gathered path and learnt that a step is gathered from the previous step's
word (the words written before the producer's slot wait, a 2 * depth words
ring) was not faster (1.00x / 1.04x the previous kernel at 32K / 128K in
its run, `gpu_vs_mgpu_tails_h200_lazy_words.md`). With the steps-count
kernel (sixth session, `gpu_vs_mgpu_tile_steps_h200*.md`): 54.5 ms / 424
TFLOP/s at 128K and 480 ms / 414 TFLOP/s at 1M, 1.06x / 1.08x the previous
kernel beside it (55.5 / 490 ms on another machine start). Next
step: the columns (4.6 of the 54.5 ms at 128K, at ~200 TFLOP/s).

Paired steps (`step_keys=128`; the default at D = 128 up to T = 128K,
`auto_step_keys`): each Mosaic GPU step takes two of the stream's 64-row
tiles into the two halves of a 128-row ring slot (one K/V slot per
warpgroup at D = 128, one producer warpgroup per ring), masks each half as
before and runs one online-softmax rescale per 128 keys. A mask-free
128-key loop is 1.14x the 64-key one (`gpu_mgpu_key128_h200.md`). The first
paired kernel (seventh session) was wrong where a step's second half
gathers the run tail its first half left; its reworked producer (eighth
session: a gathered half's chunks read only where copied, the chunks an
earlier half left passed on in registers, new ones stored after the step's
copies) passes every GPU check (`gpu_vs_paired_steps_h200_s8.md`). In the
ninth session (`gpu_vs_paired_steps_h200_s9.md`, H200) the whole kernel
with paired steps and two producers took 53.2 ms / 434 TFLOP/s at 128K on
clustered lines against 56.0 / 413 for 64-key steps (1.05x), 1.03x / 1.05x
at 512K / 1M there, and 1.03-1.045x at 32K-128K on the builder's sets from
synthetic q/k; on those sets it lost at 512K / 1M (0.985x / 0.915x),
where runs of 2.4 windows, mostly misaligned, mask about a third of the
tiles and the paired masks cost 7.6%: hence the 128K limit.

Restrictions (the Pallas-Triton `vertical_slash_attention` is the general
path): bf16/fp16, D in {64, 128, 256}, T == S a multiple of 64 and at most
2**24, block size 64, Hopper (sm_90a) GPUs.
"""

import dataclasses
import functools

import jax
import jax.numpy as jnp
from beartype import beartype
from jax import lax
from jax.experimental import pallas as pl
from jax.experimental.pallas import mosaic_gpu as plgpu
from jax.experimental.pallas import triton as plt
from jaxtyping import Array, Float, jaxtyped

from pallas_kernels import common
from pallas_kernels import mosaic_gpu_core as core
from pallas_kernels.layouts import VerticalSlashLayout
from pallas_kernels.mosaic_gpu_core import BLOCK, Config
from pallas_kernels.vertical_slash import phases
from pallas_kernels.vertical_slash.base import Config as TritonConfig
from pallas_kernels.vertical_slash.tile_steps import (
    ends_run_with_tail,
    tile_steps,
)

__all__ = ["Config", "auto_step_keys", "default_config",
           "vertical_slash_attention_mgpu"]


# ---------------- step 1: columns (and, with tails="seed", run tails)


# Where `_fwd` attends the run tails: "gathered" (gathered 64-row tiles of
# the Mosaic GPU launch, `_StreamPlan`; the public function's path) or
# "seed" (the previous kernel: the Triton seed launch scans and gathers
# them, `_tail_phase`; kept for side-by-side timings and its tests).
TAILS_KINDS = ("gathered", "seed")
# The previous window's start before a query block's first window: no run to
# continue.
_NO_WINDOW = -2 * BLOCK
MAX_T = 1 << 24  # stream tile headers: start / 8 in 21 bits (header < 2**29)

# Keys per step of the Mosaic GPU launch: 64 (one of the stream's 64-row
# tiles per step), or 128 (paired steps: two tiles per 128-row ring slot,
# one online-softmax rescale per 128 keys; see the module doc).
STEP_KEYS = BLOCK
STEP_KEYS_CHOICES = (BLOCK, 2 * BLOCK)
# `auto_step_keys`: paired steps at D = 128 up to this T. On an H200 (ninth
# session, `experiments/results/gpu_vs_paired_steps_h200_s9.md`) they were
# 1.04-1.05x the 64-key kernel at 32K-128K on all three layouts timed, and
# above 128K they depend on the layout: 1.03-1.05x at 512K-1M on clustered
# lines, 0.98x / 0.92x at 512K / 1M on the builder's sets from synthetic
# q/k (short runs, most of them misaligned: masked first tiles).
PAIRED_MAX_T = 1 << 17


def auto_step_keys(t: int, head_dim: int) -> int:
  """The keys per step the default config takes at sequence length t:
  128 at D = 128 up to `PAIRED_MAX_T`, else 64."""
  return 2 * BLOCK if head_dim == 128 and t <= PAIRED_MAX_T else BLOCK

TAIL_CHUNK = 64  # windows scanned at a time for run tails
TAIL_GROUP = 8  # run tails gathered at a time (8 keys each: 64 gathered keys)


def _run_tails(o, o_next, valid, t: int):
  """The run tails of a chunk of windows: keys of a window that step 2's
  64-row tile at floor8 misses.

  o, o_next: int32 [CW] window starts and the next window's start (-1 past
  the count); valid: bool [CW] (window < count). A window that ends a run of
  contiguous windows (o_next != o + 64) has the tail [f + 64, min(o + 64,
  T)), f = o - o % 8: at most 7 keys inside the 8-aligned chunk at f + 64.
  Returns (has_tail bool [CW], tail start int32 [CW], tail length int32
  [CW]).
  """
  f = o - lax.rem(o, jnp.int32(8))
  tail_len = jnp.minimum(o + BLOCK, t) - (f + BLOCK)
  has = valid & (o_next != o + BLOCK) & (tail_len > 0)
  return has, f + BLOCK, tail_len


def _gather_tails(has, tail_start, tail_len, group):
  """Keys of the `group`-th TAIL_GROUP tails among `has` (compacted in
  order): (key int32 [64], keep bool [64]); slot p holds lane p % 8 of tail
  group * 8 + p // 8.

  The compaction is a rank (cumsum) and one [64, CW] select-and-sum of
  start * 8 + length (length < 8), which Triton lowers where an in-register
  scatter would not.
  """
  rank = jnp.cumsum(has.astype(jnp.int32)) - 1  # [CW] among the tails
  slots = TAIL_GROUP * 8
  p = common.iota(slots)
  want = group * TAIL_GROUP + lax.div(p, jnp.int32(8))  # [64] tail of slot
  sel = has[None, :] & (rank[None, :] == want[:, None])  # [64, CW]
  packed = jnp.sum(jnp.where(sel, (tail_start * 8 + tail_len)[None, :], 0),
                   axis=1)  # [64]; 0 on slots past the tails
  lane = lax.rem(p, jnp.int32(8))
  keep = lane < lax.rem(packed, jnp.int32(8))
  return jnp.where(keep, lax.div(packed, jnp.int32(8)) + lane, 0), keep


def _tail_phase(state, q, k_ref, v_ref, off_ref, n_win, r0, *, t, d, d_pad,
                precision):
  """Attends to the run tails of the windows off_ref[:n_win] (causal: a
  tail of the run that crosses the diagonal may lie right of some rows)."""
  rows = r0 + common.iota(BLOCK)

  def chunk(c, st):
    start = c * TAIL_CHUNK
    j = start + common.iota(TAIL_CHUNK)
    valid = j < n_win
    o = plt.load(off_ref.at[pl.ds(start, TAIL_CHUNK)], mask=valid, other=0)
    o_next = plt.load(off_ref.at[pl.ds(start + 1, TAIL_CHUNK)],
                      mask=j + 1 < n_win, other=-1)
    has, tail_start, tail_len = _run_tails(o, o_next, valid, t)
    n_tails = jnp.sum(has.astype(jnp.int32))

    def group(g, st):
      key, keep = _gather_tails(has, tail_start, tail_len, g)
      k = common.gather_rows(k_ref, key, d, d_pad)
      v = common.gather_rows(v_ref, key, d, d_pad)
      mask = keep[None, :] & (key[None, :] <= rows[:, None])
      return common.attend(st, q, k, v, mask, precision)

    return lax.fori_loop(0, common.cdiv(n_tails, TAIL_GROUP), group, st)

  return lax.fori_loop(0, common.cdiv(n_win, TAIL_CHUNK), chunk, state)


def _seed_kernel(count_ref, index_ref, wcount_ref, offset_ref, q_ref, k_ref,
                 v_ref, o_ref, lse_ref, *, t, d, d_pad, block_c, scale,
                 precision, columns: bool, tails: bool):
  """One program: the gathered columns (if `columns`) and the run tails (if
  `tails`) of one 64-row query block.

  Refs: count [1], index [NV], wcount [1], offset [NS], q/o [64, D], k/v
  [S, D], lse [64] f32.
  """
  r0 = (t // BLOCK - 1 - pl.program_id(0)) * BLOCK  # see `_seed`'s row_map
  q = common.load_q(q_ref, BLOCK, d, d_pad, scale, None)  # [64, Dp]
  state = common.init_state(BLOCK, d_pad)
  if columns:
    state = phases.column_phase(
        state, q, k_ref, v_ref, index_ref, count_ref[0], d=d, d_pad=d_pad,
        bs=BLOCK, block_c=block_c, precision=precision)
  if tails:
    state = _tail_phase(state, q, k_ref, v_ref, offset_ref, wcount_ref[0],
                        r0, t=t, d=d, d_pad=d_pad, precision=precision)
  common.store_out(o_ref, common.finish(state), d, None)
  has_keys = state.l > 0.0
  log2_l = jnp.log(jnp.where(has_keys, state.l, 1.0)) * common.LOG2E
  lse_ref[...] = jnp.where(has_keys, state.m + log2_l, -jnp.inf)


def _seed(q, k, v, column_count, column_index, block_count, block_offset,
          dims: core.Dims, interpret: bool, tails: bool = True,
          config: TritonConfig | None = None):
  """(o [B, T, N, D] in q's dtype, lse [B, N, T] f32) over the columns and,
  if `tails`, the run tails (step 1); `config`: its Triton launch knobs
  (block_c, warps, stages; `TritonConfig.get_default(D)` if None)."""
  b, t, n, g, d, tb = dims
  cfg = config or TritonConfig.get_default(d)
  columns = column_index.shape[-1] > 0
  column_index = phases.at_least(column_index, cfg.block_c)
  if tails:  # the tail scan loads TAIL_CHUNK starts from 0 and 1 (masked)
    block_offset = phases.at_least(block_offset, TAIL_CHUNK + 1)
  else:  # not read
    block_count, block_offset = column_count, column_index[..., :1]
  n_vert = column_index.shape[-1]
  n_slash = block_offset.shape[-1]
  kernel = functools.partial(
      _seed_kernel, t=t, d=d, d_pad=common.padded_head_dim(d),
      block_c=cfg.block_c, scale=d**-0.5,
      precision=common.dot_precision(q.dtype), columns=columns, tails=tails)

  def row_map(i, h, bb):  # heavy rows first
    return (bb, h, tb - 1 - i)

  def row_spec(width):
    return pl.BlockSpec((None, None, None, width),
                        lambda i, h, bb: (*row_map(i, h, bb), 0))

  count_spec = pl.BlockSpec((None, None, 1), row_map)
  q_spec = common.q_block_spec(BLOCK, tb, d)
  kv_spec = common.kv_head_spec(t, d, g)
  return pl.pallas_call(
      kernel,
      out_shape=(jax.ShapeDtypeStruct(q.shape, q.dtype),
                 jax.ShapeDtypeStruct((b, n, t), jnp.float32)),
      grid=(tb, n, b),
      in_specs=[count_spec, row_spec(n_vert), count_spec, row_spec(n_slash),
                q_spec, kv_spec, kv_spec],
      out_specs=(q_spec, pl.BlockSpec((None, None, BLOCK), row_map)),
      compiler_params=common.compiler_params(cfg.num_warps, cfg.num_stages),
      interpret=interpret,
      name=(f"minf_vertical_slash_seed_bc{cfg.block_c}_d{d}"
            f"{'' if tails else '_columns'}"),
  )(column_count, column_index, block_count, block_offset, q, k, v)


# ------------------------------- step 2: windows, run tails (Mosaic GPU)


@dataclasses.dataclass(frozen=True)
class _Plan:
  """Vertical-Slash windows of one (batch, head) for `_fwd(...,
  tails="seed")` (the previous kernel; `_StreamPlan` is the current one):
  refs count [B, N, Tb], offset [B, N, Tb, NS]; t the sequence length.

  Window i, [o, o + 64), is read as the 64-row tile at f = o - o % 8 (the
  8-aligned rows Mosaic GPU's TMA into wgmma's tiled SMEM takes), clamped to
  T - 64. The tiles of a run of contiguous windows starting at a cover
  [a - a % 8, a + 64 L - a % 8): the run's first tile keeps the columns >= a
  (its first a % 8 belong to no window), the run's last a % 8 keys are
  step 1's run tails. A tile keeps the columns >= lo (lo = o on a run's
  first window, f on the others: above the clamped start at the sequence
  end) and the causal ones; only the tiles where that drops a pair take the
  masked path (`core.CondMask`).
  """

  cnt_ref: object
  off_ref: object
  bb: jax.Array
  h: jax.Array
  t: int

  def _offset(self, m, i):
    return self.off_ref[self.bb, self.h, m, i]

  def count(self, m):
    return self.cnt_ref[self.bb, self.h, m]

  def _start(self, o):
    """The tile start of the window at o: floor8(o), clamped to T - 64."""
    return jnp.minimum(o - lax.rem(o, jnp.int32(8)), self.t - BLOCK)

  def key_start(self, m, i):
    return pl.multiple_of(self._start(self._offset(m, i)), 8)

  def _tile(self, o, prev, r0):
    """(start, lo, need) of the tile of window o (the previous window at
    prev) for query rows from r0: need = whether it drops a pair (a run's
    misaligned first window, a start clamped at the sequence end, or keys
    right of row r0)."""
    start, lo = self._start(o), self._lo(o, prev)
    return start, lo, (lo > start) | (start + BLOCK - 1 > r0)

  @staticmethod
  def _lo(o, prev):
    """The first key column the tile of window o keeps (before the causal
    mask): o on a run's first window (the previous one, at prev, does not
    end at o), else floor8(o) (the keys below o are the previous window's,
    which its own tile ends before)."""
    return jnp.where(prev + BLOCK != o, o, o - lax.rem(o, jnp.int32(8)))

  def segments(self, m):
    r0 = m * BLOCK

    def scalars(i, prev):
      """(o_i, o_{i-1}); o_i passed on to step i + 1."""
      o = self._offset(m, i)
      return (o, prev), o

    def need(i, x):
      return self._tile(*x, r0)[2]

    def keep(i, x, rows, cols):
      return (cols >= self._lo(*x)) & (cols <= rows)

    return (core.Segment(self.count(m), core.CondMask(
        scalars, jnp.int32(_NO_WINDOW), need, keep)),)


@dataclasses.dataclass(frozen=True)
class _StreamPlan:
  """The windows and their run tails of one (batch, head) as a
  `core.StreamPlan`: refs steps [B, N, Tb] (`tile_steps`), count
  [B, N, Tb], offset [B, N, Tb, NS]; t the sequence length.

  The primary tiles are the windows' 64-row tiles at floor8(o), as `_Plan`
  reads them (clamped to T - 64; masked to the columns >= lo and causal,
  only where that drops a pair); the producer decides the mask and packs
  it into the step's header: (start / 8) << 8 | (lo - start) << 2 | kind,
  kind 1 = masked (lo - start < 64: lo <= o < start + 64). A window that
  ends a misaligned run leaves its run tail as a chunk to gather: chunk
  word min(o + 64, T), i.e. the tail's 8-aligned row floor8(o + 64) plus
  its length (o + 64) % 8 in 1..7; a gathered tile keeps, in 8-column
  group j, the first length_j keys of chunk j (causal).
  """

  steps_ref: object
  windows: _Plan  # the windows' tiles, read as `_Plan` reads them

  @classmethod
  def of(cls, refs, bb, h, t: int) -> "_StreamPlan":
    """From `tile_list_attention`'s index refs (steps, count, offset)."""
    steps_ref, cnt_ref, off_ref = refs
    return cls(steps_ref, _Plan(cnt_ref, off_ref, bb, h, t))

  def count(self, m):
    return self.steps_ref[self.windows.bb, self.windows.h, m]

  def primary_count(self, m):
    return self.windows.count(m)

  def stream_init(self, m):
    """(o of window 0, o of the window before it: none, the window count,
    read once: carried rather than re-read from GMEM on every tile)."""
    return (self.windows._offset(m, 0), jnp.int32(_NO_WINDOW),
            self.primary_count(m))

  def stream_next(self, m, p, state):
    o, prev, n_windows = state
    w = self.windows
    n_slash = w.off_ref.shape[-1]
    o_next = jnp.where(p + 1 < n_windows,
                       w._offset(m, jnp.minimum(p + 1, n_slash - 1)), -1)
    start, lo, need = w._tile(o, prev, m * BLOCK)
    header = (lax.shift_left(lax.div(start, jnp.int32(8)), 8)
              | lax.shift_left(lo - start, 2) | need.astype(jnp.int32))
    return core.StreamStep(
        start=start, header=header,
        has_chunk=ends_run_with_tail(o, o_next, w.t),
        chunk=jnp.minimum(o + BLOCK, w.t)), (o_next, o, n_windows)

  def key_start(self, m, i):
    raise NotImplementedError("a stream plan's producer reads stream_next")

  @staticmethod
  def _kind(header):
    return header & 3

  @staticmethod
  def _window_keep(header, rows, cols):
    """Tile-local columns >= lo - start, causal."""
    start = lax.shift_left(lax.shift_right_logical(header, 8), 3)
    lo_off = lax.shift_right_logical(header, 2) & 63
    return (cols >= lo_off) & (cols + start <= rows)

  @staticmethod
  def _tail_keep(chunks, rows, cols):
    """Column group j keeps lanes < chunk j's length, causal."""
    group = lax.shift_right_logical(cols, 3)
    lane = cols & 7
    word = cols * 0 + chunks[0]
    for j in range(1, core.GATHER):
      word = jnp.where(group == j, chunks[j], word)
    length = word & 7
    return (lane < length) & (word - length + lane <= rows)

  def segments(self, m):
    return (core.Segment(self.count(m), core.StreamMask(
        self._kind, (self._window_keep,), self._tail_keep)),)


def _check_step_keys(step_keys: int):
  if step_keys not in STEP_KEYS_CHOICES:
    raise ValueError(f"step_keys={step_keys} must be one of"
                     f" {STEP_KEYS_CHOICES}")


def default_config(head_dim: int = 128, step_keys: int = STEP_KEYS
                   ) -> Config:
  """The launch knobs for `step_keys` keys per step.

  64: `Config.get_default`. 128 (paired steps): two compute warpgroups
  with one K/V slot each at D = 128 (2 x (q 16 KiB + K/V 64 KiB) = 160 KiB
  of SMEM; two slots would need 288), fed by one producer warpgroup per
  ring with 40 registers, each a step ahead (the window launch on an H200
  at D = 128, 128K, same run: 49.2 ms against 50.3 with one producer of 72
  registers and 51.6 for 64-key steps,
  `experiments/results/gpu_vs_paired_steps_h200_s9.md`); two slots and
  one producer (72 registers) at D = 64; one warpgroup with one slot at
  D = 256. D = 64 is checked on an H200 but not timed, D = 256 only
  checked in interpret mode.
  """
  _check_step_keys(step_keys)
  if step_keys == BLOCK:
    return Config.get_default(head_dim)
  if head_dim <= 64:
    return Config(compute_wgs=2, max_concurrent_steps=2, plan_ahead=True,
                  producer_registers=72)
  if head_dim <= 128:
    return Config(compute_wgs=2, max_concurrent_steps=1, plan_ahead=True,
                  ring_producers=True, producer_registers=40)
  return Config(compute_wgs=1, max_concurrent_steps=1, plan_ahead=True)


def _check(q, k, v, layout_arrays, block_size, config, seeded, key_rows):
  op = "vertical_slash_attention_mgpu"
  if block_size != BLOCK:
    common.check_qkv(q, k, v, op)
    raise ValueError(f"{op}: VerticalSlashLayout.block_size={block_size}"
                     f" must be {BLOCK}")
  dims = core.check_inputs(q, k, v, op, config, seeded=seeded,
                           key_rows=key_rows, copy_rows=BLOCK)
  names = (("block_count", 3), ("block_offset", 4), ("column_count", 3),
           ("column_index", 4))
  for (name, ndim), arr in zip(names, layout_arrays):
    common.check_index_array(f"VerticalSlashLayout.{name}", arr,
                             (dims.b, dims.n, dims.tb), ndim)
  return dims


@functools.partial(jax.jit, static_argnames=("block_size", "config",
                                             "interpret", "tails",
                                             "seed_config", "step_keys"))
def _fwd(q, k, v, block_count, block_offset, column_count, column_index, *,
         block_size: int, config: Config, interpret, tails: str = "gathered",
         seed_config: TritonConfig | None = None, step_keys: int = STEP_KEYS):
  if tails not in TAILS_KINDS:
    raise ValueError(f"tails={tails!r} must be one of {TAILS_KINDS}")
  _check_step_keys(step_keys)
  in_seed = tails == "seed"
  # Step 1 runs for the columns (and the run tails, if in the seed), unless
  # there is no such budget.
  seeded = column_index.shape[-1] > 0 or (in_seed
                                          and block_offset.shape[-1] > 0)
  key_rows = BLOCK if in_seed else step_keys  # the seed path: 64-key steps
  dims = _check(q, k, v, (block_count, block_offset, column_count,
                          column_index), block_size, config, seeded, key_rows)
  if dims.t > MAX_T:
    raise ValueError(f"vertical_slash_attention_mgpu: T={dims.t} >"
                     f" {MAX_T} (the tile headers' packing)")
  block_offset = phases.at_least(block_offset, 1)  # NS == 0: never read
  seed = (_seed(q, k, v, column_count, column_index, block_count,
                block_offset, dims, interpret=interpret is not None,
                tails=in_seed, config=seed_config)
          if seeded else None)
  common_args = dict(config=config, dims=dims, interpret=interpret,
                     name="minf_vertical_slash_mgpu", seed=seed)
  if in_seed:
    return core.tile_list_attention(
        q, k, v, (block_count, block_offset),
        plan_fn=lambda refs, bb, h: _Plan(*refs, bb, h, dims.t),
        **common_args)
  steps = tile_steps(block_count, block_offset, t=dims.t,
                     interpret=interpret is not None)
  return core.tile_list_attention(
      q, k, v, (steps, block_count, block_offset),
      plan_fn=lambda refs, bb, h: _StreamPlan.of(refs, bb, h, dims.t),
      stream=True, key_rows=key_rows, **common_args)


def unsupported_reason(q, *, interpret: bool = False) -> str | None:
  """Why `vertical_slash_attention_mgpu` cannot run on q here (None if it can):
  the implementation's "not supported here" test for op dispatch."""
  return core.unsupported_reason(q, interpret=interpret, max_t=MAX_T)


@jaxtyped(typechecker=beartype)
def vertical_slash_attention_mgpu(
    q: Float[Array, "B T N D"],
    k: Float[Array, "B S K D"],
    v: Float[Array, "B S K D"],
    layout: VerticalSlashLayout,
    *,
    config: Config | None = None,
    step_keys: int | None = None,
    interpret: bool | plgpu.InterpretGPUParams = False,
) -> Float[Array, "B T N D"]:
  """Vertical-Slash attention on Hopper: Mosaic GPU windows + Triton columns.

  Same key set and output as `pallas_kernels.vertical_slash.
  vertical_slash_attention` on a `VerticalSlashLayout`: for each 64-row
  query block, the key windows [o, o + 64) at `block_offset[:block_count]`
  (causal and sequence-end masked) and the key columns
  `column_index[:column_count]`; heads with zero counts produce zeros.
  Query head n reads KV head n // G. Softmax and accumulation in float32.

  Args:
    q: [B, T, N, D] queries (bfloat16 or float16).
    k: [B, S, K, D] keys, S == T a multiple of 64, N % K == 0.
    v: [B, S, K, D] values.
    layout: int32 arrays [B, N, T / 64, ...], block size 64.
    config: Mosaic GPU launch knobs; `default_config(D, step_keys)` if
      None (the column phase uses the Triton kernel's default config).
    step_keys: keys per Mosaic GPU step, 64 or 128 (paired steps; needs a
      config whose 128-row slots fit in SMEM, e.g. one slot per warpgroup
      at D = 128). None: `auto_step_keys(T, D)` without a config, 64 with
      one.
    interpret: False (compile for the GPU), or True /
      `plgpu.InterpretGPUParams(...)` to run both launches in interpret mode
      on CPU (tests).

  Returns:
    [B, T, N, D] attention output in q's dtype.

  Raises:
    ValueError: on shapes this kernel does not take (D not in {64, 128,
      256}, T not a multiple of 64 or above 2**24, block size != 64), bad
      layout shapes, step_keys not 64 or 128, or a config whose SMEM does
      not fit.
    TypeError: on dtypes other than bfloat16/float16 or non-int32 layouts.
  """
  if step_keys is None:
    step_keys = (auto_step_keys(q.shape[1], q.shape[-1]) if config is None
                 else STEP_KEYS)
  if config is None:
    config = default_config(q.shape[-1], step_keys)
  if interpret is True:
    interpret = plgpu.InterpretGPUParams()
  return _fwd(q, k, v, layout.block_count, layout.block_offset,
              layout.column_count, layout.column_index,
              block_size=layout.block_size, config=config,
              interpret=interpret or None, step_keys=step_keys)
