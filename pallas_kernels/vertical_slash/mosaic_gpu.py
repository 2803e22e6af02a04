"""Mosaic GPU (Hopper) Vertical-Slash attention over a VerticalSlashLayout.

Two launches, one code path:
1. a small Pallas-Triton kernel (one program per 64-row query block) attends
   to the gathered key columns (`column_index[:column_count]`, all left of
   the query block: the Triton Vertical-Slash kernel's column phase,
   `phases.column_phase`) and to the windows' run tails (below), and writes
   each row's (output, base-2 log-sum-exp);
2. the key windows (`block_offset[:block_count]`, 64 keys each at arbitrary
   starts) are a tile plan for `pallas_kernels.mosaic_gpu_core.
   tile_list_attention` (FlashAttention-3-style: warp-specialised, TMA
   copies into SMEM rings, wgmma), which merges step 1's (output,
   log-sum-exp) into its softmax state: the result is attention over
   windows + columns.

Mosaic GPU's TMA into the tiled SMEM that wgmma reads takes only 8-aligned
rows, so window [o, o + 64) is read as the 64-row tile at f = o - o % 8
(128-byte swizzle, as Block-Sparse and A-shape). The windows of a query
block come in runs of contiguous windows (window i + 1 at o_i + 64), and
64 is a multiple of 8, so the tiles of a run at a cover [a - a % 8,
a + 64 L - a % 8) without gap or overlap: only a run's first tile drops
pairs (its a % 8 keys below a), and a run's last a % 8 keys, the run tail
(at most 7 keys in the 8-aligned chunk after the last tile), are left out.
Step 1 scans each query block's windows for the tails (64 windows at a
time, compacted with a cumsum) and gathers them 8 tails (64 keys) at a
time, causal (the tail of a run that crosses the diagonal lies right of
some rows). In step 2 a tile takes the masked path only where it drops a
pair (a misaligned run's first window, the causal diagonal, a start clamped
to T - 64 at the sequence end): `core.CondMask`, a `lax.cond` per step on
scalars carried from step to step. Hopper has no TMA gather and one TMA per
gathered row would need single-row boxes, which the tiled SMEM does not
take, so the columns stay on Triton (about 1000 of the ~7000 keys per row
at MInference's default budget).

Speed (H200, bf16, N=32, K=8, D=128, 1000 vertical / 6096 slash from the
index builder over clustered lines, `experiments/gpu_mgpu_kernels.py` and
`experiments/gpu_vs_mgpu_variants.py`; effective TFLOP/s of 64 x 64 pairs
per window and 64 per column): 11.2 ms / 422 TFLOP/s at 32K (1.16x the
Pallas-Triton kernel's 13.0 ms; the previous 80-row kernel took 20.0 ms) and
57.9-58.4 ms / 396-399 TFLOP/s at 128K (1.07-1.08x Triton's 62.5-62.9 ms;
80-row kernel 94.2 ms). The window launch alone runs at 480 (32K) and 450
(128K) TFLOP/s (9.6 / 49.3 ms; 47.5 ms without any mask, 55.8 ms with every
tile masked, 89.6 ms for the 80-row tiles), so step 1 is what is left:
10.1 ms at 128K, of which the columns take 4.9 and the run-tail scan and
gathers 5.2 (8.8 ms with TAIL_CHUNK = 256, which left the whole kernel's
time unchanged within noise and is not checked on the GPU). Next steps:
a cheaper tail scan, or the tails as 8-row TMA copies into a gathered
64-row tile of step 2 (the (8, 64) SMEM tiling takes 8-row boxes).

Restrictions (the Pallas-Triton `vertical_slash_attention` is the general
path): bf16/fp16, D in {64, 128, 256}, T == S a multiple of 64, block size
64, Hopper (sm_90a) GPUs.
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

__all__ = ["Config", "vertical_slash_attention_mgpu"]


# ------------------------------ step 1: columns and run tails (Triton)


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
                 precision, columns: bool):
  """One program: the gathered columns (if `columns`) and the run tails of
  one 64-row query block.

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
  state = _tail_phase(state, q, k_ref, v_ref, offset_ref, wcount_ref[0], r0,
                      t=t, d=d, d_pad=d_pad, precision=precision)
  common.store_out(o_ref, common.finish(state), d, None)
  has_keys = state.l > 0.0
  log2_l = jnp.log(jnp.where(has_keys, state.l, 1.0)) * common.LOG2E
  lse_ref[...] = jnp.where(has_keys, state.m + log2_l, -jnp.inf)


def _seed(q, k, v, column_count, column_index, block_count, block_offset,
          dims: core.Dims, interpret: bool):
  """(o [B, T, N, D] in q's dtype, lse [B, N, T] f32) over the columns and
  the run tails (step 1)."""
  b, t, n, g, d, tb = dims
  cfg = TritonConfig.get_default(d)
  columns = column_index.shape[-1] > 0
  column_index = phases.at_least(column_index, cfg.block_c)
  # The tail scan loads TAIL_CHUNK starts from offsets 0 and 1 (masked).
  block_offset = phases.at_least(block_offset, TAIL_CHUNK + 1)
  n_vert = column_index.shape[-1]
  n_slash = block_offset.shape[-1]
  kernel = functools.partial(
      _seed_kernel, t=t, d=d, d_pad=common.padded_head_dim(d),
      block_c=cfg.block_c, scale=d**-0.5,
      precision=common.dot_precision(q.dtype), columns=columns)

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
      name=f"minf_vertical_slash_seed_bc{cfg.block_c}_d{d}",
  )(column_count, column_index, block_count, block_offset, q, k, v)


# -------------------------------------------- step 2: windows (Mosaic GPU)


@dataclasses.dataclass(frozen=True)
class _Plan:
  """Vertical-Slash windows of one (batch, head): refs count [B, N, Tb],
  offset [B, N, Tb, NS]; t the sequence length.

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
      """Whether tile i drops a pair: a run's misaligned first window, a
      start clamped at the sequence end, or keys right of row r0."""
      start = self._start(x[0])
      return (self._lo(*x) > start) | (start + BLOCK - 1 > r0)

    def keep(i, x, rows, cols):
      return (cols >= self._lo(*x)) & (cols <= rows)

    no_window = jnp.int32(-2 * BLOCK)  # before step 0: no run to continue
    return (core.Segment(self.count(m),
                         core.CondMask(scalars, no_window, need, keep)),)


def _check(q, k, v, layout_arrays, block_size, config, seeded):
  op = "vertical_slash_attention_mgpu"
  if block_size != BLOCK:
    common.check_qkv(q, k, v, op)
    raise ValueError(f"{op}: VerticalSlashLayout.block_size={block_size}"
                     f" must be {BLOCK}")
  dims = core.check_inputs(q, k, v, op, config, seeded=seeded)
  names = (("block_count", 3), ("block_offset", 4), ("column_count", 3),
           ("column_index", 4))
  for (name, ndim), arr in zip(names, layout_arrays):
    common.check_index_array(f"VerticalSlashLayout.{name}", arr,
                             (dims.b, dims.n, dims.tb), ndim)
  return dims


@functools.partial(jax.jit,
                   static_argnames=("block_size", "config", "interpret"))
def _fwd(q, k, v, block_count, block_offset, column_count, column_index, *,
         block_size: int, config: Config, interpret):
  # Step 1 runs unless there is neither a column nor a window budget.
  seeded = column_index.shape[-1] > 0 or block_offset.shape[-1] > 0
  dims = _check(q, k, v, (block_count, block_offset, column_count,
                          column_index), block_size, config, seeded)
  block_offset = phases.at_least(block_offset, 1)  # NS == 0: never read
  seed = (_seed(q, k, v, column_count, column_index, block_count,
                block_offset, dims, interpret=interpret is not None)
          if seeded else None)
  return core.tile_list_attention(
      q, k, v, (block_count, block_offset),
      plan_fn=lambda refs, bb, h: _Plan(*refs, bb, h, dims.t),
      config=config, dims=dims, interpret=interpret,
      name="minf_vertical_slash_mgpu", seed=seed)


@jaxtyped(typechecker=beartype)
def vertical_slash_attention_mgpu(
    q: Float[Array, "B T N D"],
    k: Float[Array, "B S K D"],
    v: Float[Array, "B S K D"],
    layout: VerticalSlashLayout,
    *,
    config: Config | None = None,
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
    config: Mosaic GPU launch knobs; `Config.get_default(D)` if None (the
      column phase uses the Triton kernel's default config).
    interpret: False (compile for the GPU), or True /
      `plgpu.InterpretGPUParams(...)` to run both launches in interpret mode
      on CPU (tests).

  Returns:
    [B, T, N, D] attention output in q's dtype.

  Raises:
    ValueError: on shapes this kernel does not take (D not in {64, 128,
      256}, T not a multiple of 64, block size != 64), bad layout shapes, or
      a config whose SMEM does not fit.
    TypeError: on dtypes other than bfloat16/float16 or non-int32 layouts.
  """
  if config is None:
    config = Config.get_default(q.shape[-1])
  if interpret is True:
    interpret = plgpu.InterpretGPUParams()
  return _fwd(q, k, v, layout.block_count, layout.block_offset,
              layout.column_count, layout.column_index,
              block_size=layout.block_size, config=config,
              interpret=interpret or None)
