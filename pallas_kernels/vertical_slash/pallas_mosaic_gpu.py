"""Mosaic GPU (Hopper) Vertical-Slash attention over a VerticalSlashLayout.

MInference's Vertical-Slash pattern (Jiang et al. 2024): per 64-row query
block, 64-key windows at arbitrary starts (the slash lines) and single key
columns left of the block (the vertical lines). Two launches:
1. a small Pallas-Triton kernel (one program per 64-row query block) attends
   to the gathered key columns (`column_index[:column_count]`, all left of
   the query block; gathered into dense tiles as PIT, Zheng et al. 2023, does,
   with the Triton Vertical-Slash kernel's `phases.column_phase`) and writes
   each row's (output, base-2 log-sum-exp); it runs only if the layout has a
   column budget;
2. the key windows (`block_offset[:block_count]`) and their run tails (below)
   are a stream plan for the warp-specialised pipeline of
   `pallas_kernels._mosaic_gpu` (FlashAttention-3, Shah et al. 2024: TMA
   copies into SMEM rings, wgmma), which merges step 1's (output,
   log-sum-exp) into its softmax state: the result is attention over windows
   + columns.

Mosaic GPU's TMA into the tiled SMEM that wgmma reads takes only 8-aligned
rows, so window [o, o + 64) is read as the 64-row tile at f = o - o % 8
(128-byte swizzle). The windows of a query block come in runs of contiguous
windows (window i + 1 at o_i + 64), and 64 is a multiple of 8, so the tiles
of a run at a cover [a - a % 8, a + 64 L - a % 8) without gap or overlap:
only a run's first tile drops pairs (its a % 8 keys below a), and a run's
last a % 8 keys, the run tail (at most 7 keys in the 8-aligned chunk after
the last tile), are left out. The producer warpgroup walks the windows in
order (`_WindowStream`): it decides each tile's mask (masked only where it
drops a pair: a misaligned run's first window, the causal diagonal, a start
clamped to T - 64 at the sequence end) and writes it as a header word into
SMEM for the consumer, and it collects the run tails as 8-row chunks; every
8 tails (and the last ones after the last window) become one gathered 64-row
tile, eight 8-row TMA copies, attended as one more step with a mask per
8-column group (tail j keeps its first length_j keys, causal: the tail of a
run that crosses the diagonal lies right of some rows). The number of steps
per query block (windows + gathered tiles) comes from a small Pallas-Triton
kernel that reads each row's windows (`tile_steps.tile_steps`). Hopper has
no TMA gather and one TMA per gathered row would need single-row boxes,
which the tiled SMEM does not take, so the columns stay on Triton.

Paired steps (`step_keys=128`; the default at D = 128 up to T = 128K,
`auto_step_keys`): each Mosaic GPU step takes two of the stream's 64-row
tiles into the two halves of a 128-row ring slot (one K/V slot per
warpgroup at D = 128, one producer warpgroup per ring), masks each half as
above and runs one online-softmax rescale per 128 keys. Above 128K the runs
of the layouts the index builder makes get short and mostly misaligned, the
paired masks cost more than the rescales they save, and 64-key steps are the
default. (docs/kernels.md has the measurements behind both defaults.)

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
from jaxtyping import Array, Float, jaxtyped

from pallas_kernels import common
from pallas_kernels._mosaic_gpu import config as mgpu
from pallas_kernels._mosaic_gpu.config import BLOCK, Config, Dims, Profile
from pallas_kernels._mosaic_gpu.pipeline import tile_list_attention
from pallas_kernels._mosaic_gpu.plans import Segment
from pallas_kernels._mosaic_gpu.stream import GATHER, StreamMask, StreamStep
from pallas_kernels.layouts import VerticalSlashLayout
from pallas_kernels.vertical_slash import phases
from pallas_kernels.vertical_slash.base import Config as TritonConfig
from pallas_kernels.vertical_slash.tile_steps import (
    ends_run_with_tail,
    tile_steps,
)

__all__ = ["Config", "MAX_T", "Profile", "auto_step_keys", "default_config",
           "unsupported_reason", "vertical_slash_attention_mgpu"]

MAX_T = 1 << 24  # stream tile headers: start / 8 in 21 bits (header < 2**29)
# Keys per step of the Mosaic GPU launch: 64 (one of the stream's 64-row
# tiles per step), or 128 (paired steps: two tiles per 128-row ring slot,
# one online-softmax rescale per 128 keys; see the module doc).
STEP_KEYS = BLOCK
STEP_KEYS_CHOICES = (BLOCK, 2 * BLOCK)
# `auto_step_keys`: paired steps at D = 128 up to this T (see the module
# doc).
PAIRED_MAX_T = 1 << 17
# The previous window's start before a query block's first window: no run to
# continue.
_NO_WINDOW = -2 * BLOCK


def auto_step_keys(t: int, head_dim: int) -> int:
  """The keys per step the default config takes at sequence length t:
  128 at D = 128 up to `PAIRED_MAX_T`, else 64."""
  return 2 * BLOCK if head_dim == 128 and t <= PAIRED_MAX_T else BLOCK


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
  ring with 40 registers, each a step ahead (`plan_ahead`); two slots and
  one producer (72 registers) at D = 64; one warpgroup with one slot at
  D = 256.
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


# ----------------------------------------- launch 1: the columns (Triton)


def _columns_kernel(count_ref, index_ref, q_ref, k_ref, v_ref, o_ref,
                    lse_ref, *, d, d_pad, block_c, scale, precision):
  """One program: the gathered columns of one 64-row query block.

  Refs: count [1], index [NV], q/o [64, D], k/v [S, D], lse [64] f32.
  """
  q = common.load_q(q_ref, BLOCK, d, d_pad, scale, None)  # [64, Dp]
  state = common.init_state(BLOCK, d_pad)
  state = phases.column_phase(
      state, q, k_ref, v_ref, index_ref, count_ref[0], d=d, d_pad=d_pad,
      bs=BLOCK, block_c=block_c, precision=precision)
  common.store_out(o_ref, common.finish(state), d, None)
  has_keys = state.l > 0.0
  log2_l = jnp.log(jnp.where(has_keys, state.l, 1.0)) * common.LOG2E
  lse_ref[...] = jnp.where(has_keys, state.m + log2_l, -jnp.inf)


def _columns(q, k, v, column_count, column_index, dims: Dims,
             interpret: bool):
  """(o [B, T, N, D] in q's dtype, lse [B, N, T] f32) over the columns
  (launch 1), with the Triton kernel's default launch knobs for D."""
  b, t, n, g, d, tb = dims
  cfg = TritonConfig.get_default(d)
  column_index = phases.at_least(column_index, cfg.block_c)
  n_vert = column_index.shape[-1]
  kernel = functools.partial(
      _columns_kernel, d=d, d_pad=common.padded_head_dim(d),
      block_c=cfg.block_c, scale=d**-0.5,
      precision=common.dot_precision(q.dtype))

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
      in_specs=[count_spec, row_spec(n_vert), q_spec, kv_spec, kv_spec],
      out_specs=(q_spec, pl.BlockSpec((None, None, BLOCK), row_map)),
      compiler_params=common.compiler_params(cfg.num_warps, cfg.num_stages),
      interpret=interpret,
      name=f"minf_vertical_slash_seed_bc{cfg.block_c}_d{d}_columns",
  )(column_count, column_index, q, k, v)


# --------------------- launch 2: windows and run tails (Mosaic GPU stream)


@dataclasses.dataclass(frozen=True)
class _WindowStream:
  """The windows and their run tails of one (batch, head) as a
  `_mosaic_gpu.stream.StreamPlan`: refs steps [B, N, Tb] (`tile_steps`),
  count [B, N, Tb], offset [B, N, Tb, NS]; t the sequence length.

  The primary tiles are the windows' 64-row tiles at floor8(o), clamped to
  T - 64, masked to the columns >= lo (lo = o on a run's first window,
  floor8(o) on the others: above the clamped start at the sequence end) and
  causal, only where that drops a pair. The producer decides the mask and
  packs it into the step's header: (start / 8) << 8 | (lo - start) << 2 |
  kind, kind 1 = masked (lo - start < 64: lo <= o < start + 64). A window
  that ends a misaligned run leaves its run tail as a chunk to gather:
  chunk word min(o + 64, T), i.e. the tail's 8-aligned row floor8(o + 64)
  plus its length (o + 64) % 8 in 1..7; a gathered tile keeps, in 8-column
  group j, the first length_j keys of chunk j (causal).
  """

  steps_ref: object
  cnt_ref: object
  off_ref: object
  bb: jax.Array
  h: jax.Array
  t: int

  def _offset(self, m, i):
    return self.off_ref[self.bb, self.h, m, i]

  def count(self, m):
    return self.steps_ref[self.bb, self.h, m]

  def primary_count(self, m):
    return self.cnt_ref[self.bb, self.h, m]

  def _start(self, o):
    """The tile start of the window at o: floor8(o), clamped to T - 64."""
    return jnp.minimum(o - lax.rem(o, jnp.int32(8)), self.t - BLOCK)

  @staticmethod
  def _lo(o, prev):
    """The first key column the tile of window o keeps (before the causal
    mask): o on a run's first window (the previous one, at prev, does not
    end at o), else floor8(o) (the keys below o are the previous window's,
    which its own tile ends before)."""
    return jnp.where(prev + BLOCK != o, o, o - lax.rem(o, jnp.int32(8)))

  def _tile(self, o, prev, r0):
    """(start, lo, need) of the tile of window o (the previous window at
    prev) for query rows from r0: need = whether it drops a pair (a run's
    misaligned first window, a start clamped at the sequence end, or keys
    right of row r0)."""
    start, lo = self._start(o), self._lo(o, prev)
    return start, lo, (lo > start) | (start + BLOCK - 1 > r0)

  def stream_init(self, m):
    """(o of window 0, o of the window before it: none, the window count,
    read once: carried rather than re-read from GMEM on every tile)."""
    return (self._offset(m, 0), jnp.int32(_NO_WINDOW), self.primary_count(m))

  def stream_next(self, m, p, state):
    o, prev, n_windows = state
    n_slash = self.off_ref.shape[-1]
    o_next = jnp.where(p + 1 < n_windows,
                       self._offset(m, jnp.minimum(p + 1, n_slash - 1)), -1)
    start, lo, need = self._tile(o, prev, m * BLOCK)
    header = (lax.shift_left(lax.div(start, jnp.int32(8)), 8)
              | lax.shift_left(lo - start, 2) | need.astype(jnp.int32))
    return StreamStep(
        start=start, header=header,
        has_chunk=ends_run_with_tail(o, o_next, self.t),
        chunk=jnp.minimum(o + BLOCK, self.t)), (o_next, o, n_windows)

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
    for j in range(1, GATHER):
      word = jnp.where(group == j, chunks[j], word)
    length = word & 7
    return (lane < length) & (word - length + lane <= rows)

  def segments(self, m):
    return (Segment(self.count(m), StreamMask(
        self._kind, (self._window_keep,), self._tail_keep)),)


def _check(q, k, v, layout_arrays, block_size, config, seeded, key_rows,
           profile):
  op = "vertical_slash_attention_mgpu"
  if block_size != BLOCK:
    common.check_qkv(q, k, v, op)
    raise ValueError(f"{op}: VerticalSlashLayout.block_size={block_size}"
                     f" must be {BLOCK}")
  dims = mgpu.check_inputs(q, k, v, op, config, seeded=seeded,
                           key_rows=key_rows, copy_rows=BLOCK,
                           profile=profile)
  names = (("block_count", 3), ("block_offset", 4), ("column_count", 3),
           ("column_index", 4))
  for (name, ndim), arr in zip(names, layout_arrays):
    common.check_index_array(f"VerticalSlashLayout.{name}", arr,
                             (dims.b, dims.n, dims.tb), ndim)
  if dims.t > MAX_T:
    raise ValueError(f"{op}: T={dims.t} > {MAX_T} (the tile headers'"
                     " packing)")
  return dims


@functools.partial(jax.jit, static_argnames=("block_size", "config",
                                             "interpret", "step_keys",
                                             "profile"))
def _fwd(q, k, v, block_count, block_offset, column_count, column_index, *,
         block_size: int, config: Config, interpret, step_keys: int,
         profile: Profile | None):
  _check_step_keys(step_keys)
  seeded = column_index.shape[-1] > 0  # launch 1 runs for a column budget
  dims = _check(q, k, v, (block_count, block_offset, column_count,
                          column_index), block_size, config, seeded,
                step_keys, profile)
  block_offset = phases.at_least(block_offset, 1)  # NS == 0: never read
  seed = (_columns(q, k, v, column_count, column_index, dims,
                   interpret=interpret is not None)
          if seeded else None)
  steps = tile_steps(block_count, block_offset, t=dims.t,
                     interpret=interpret is not None)
  return tile_list_attention(
      q, k, v, (steps, block_count, block_offset),
      plan_fn=lambda refs, bb, h: _WindowStream(*refs, bb, h, dims.t),
      config=config, dims=dims, interpret=interpret,
      name="minf_vertical_slash_mgpu", seed=seed, key_rows=step_keys,
      stream=True, profile=profile)


def unsupported_reason(q, *, interpret: bool = False) -> str | None:
  """Why `vertical_slash_attention_mgpu` cannot run on q here (None if it can):
  the implementation's "not supported here" test for op dispatch."""
  return mgpu.unsupported_reason(q, interpret=interpret, max_t=MAX_T)


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
    profile: Profile | None = None,
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
      None (the column launch uses the Triton kernel's default config).
    step_keys: keys per Mosaic GPU step, 64 or 128 (paired steps; needs a
      config whose 128-row slots fit in SMEM, e.g. one slot per warpgroup
      at D = 128). None: `auto_step_keys(T, D)` without a config, 64 with
      one.
    interpret: False (compile for the GPU), or True /
      `plgpu.InterpretGPUParams(...)` to run both launches in interpret mode
      on CPU (tests).
    profile: None, or Mosaic GPU's profiler over the Mosaic GPU launch's
      named regions (a diagnostic; GPU only).

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
              interpret=interpret or None, step_keys=step_keys,
              profile=profile)
