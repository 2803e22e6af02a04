"""Mosaic GPU (Hopper) Vertical-Slash attention over a VerticalSlashLayout.

Two launches, one code path:
1. the gathered key columns (`column_index[:column_count]`, all left of the
   query block, so mask-free except the count) run in a small Pallas-Triton
   kernel, the Triton Vertical-Slash kernel's column phase
   (`phases.column_phase`: gathers of 64 rows, padding entries never read as
   data), which writes each row's (output, base-2 log-sum-exp);
2. the key windows (`block_offset[:block_count]`, 64 keys each at arbitrary
   starts) are a tile plan for `pallas_kernels.mosaic_gpu_core.
   tile_list_attention` (FlashAttention-3-style: warp-specialised, TMA
   copies into SMEM rings, wgmma), which merges step 1's (output,
   log-sum-exp) into its softmax state: the result is attention over
   windows + columns.

Mosaic GPU's TMA into the tiled SMEM that wgmma reads takes only 8-aligned
rows, so window [o, o + 64) is read as the 80-row key tile at o - o % 8
(clamped to S - 80 at the sequence end) and masked to its own causal
columns: 25% more tensor-core work on the windows, and every window tile is
masked. Hopper has no TMA gather and one TMA per gathered row would need
single-row boxes, which the tiled SMEM does not take either, so the columns
stay on Triton (about 1000 of the ~7000 keys per row at MInference's default
budget). Without a column budget (NV == 0) step 1 is skipped.

Speed (H200, bf16, N=32, K=8, D=128, 1000 vertical / 6096 slash from the
index builder): about 240-245 effective TFLOP/s at 32K-128K, 0.65x the
Pallas-Triton kernel; the windows alone run at the same rate (the column
launch is ~5% of the time), so the 80-row, 32-byte-swizzled, always-masked
window tiles are the cost. Not the fast path: a kernel for 64-row tiles at
8-aligned starts over the union of the windows (runs of contiguous windows
need about one extra tile per run) would be the next step.

Restrictions (the Pallas-Triton `vertical_slash_attention` is the general
path): bf16/fp16, D in {64, 128, 256}, T == S a multiple of 64 and >= 128,
block size 64, Hopper (sm_90a) GPUs.
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
from pallas_kernels import mosaic_gpu_core as core
from pallas_kernels.layouts import VerticalSlashLayout
from pallas_kernels.mosaic_gpu_core import BLOCK, Config
from pallas_kernels.vertical_slash import phases
from pallas_kernels.vertical_slash.base import Config as TritonConfig

__all__ = ["Config", "vertical_slash_attention_mgpu"]


# ---------------------------------------------- step 1: columns (Triton)


def _column_kernel(count_ref, index_ref, q_ref, k_ref, v_ref, o_ref, lse_ref,
                   *, d, d_pad, block_c, scale, precision):
  """One program: the gathered columns of one 64-row query block.

  Refs: count [1], index [NV], q/o [64, D], k/v [S, D], lse [64] f32.
  """
  q = common.load_q(q_ref, BLOCK, d, d_pad, scale, None)  # [64, Dp]
  state = phases.column_phase(
      common.init_state(BLOCK, d_pad), q, k_ref, v_ref, index_ref,
      count_ref[0], d=d, d_pad=d_pad, bs=BLOCK, block_c=block_c,
      precision=precision)
  common.store_out(o_ref, common.finish(state), d, None)
  has_keys = state.l > 0.0
  log2_l = jnp.log(jnp.where(has_keys, state.l, 1.0)) * common.LOG2E
  lse_ref[...] = jnp.where(has_keys, state.m + log2_l, -jnp.inf)


def _columns(q, k, v, column_count, column_index, dims: core.Dims,
             interpret: bool):
  """(o [B, T, N, D] in q's dtype, lse [B, N, T] f32) over the columns."""
  b, t, n, g, d, tb = dims
  cfg = TritonConfig.get_default(d)
  column_index = phases.at_least(column_index, cfg.block_c)
  n_vert = column_index.shape[-1]
  kernel = functools.partial(
      _column_kernel, d=d, d_pad=common.padded_head_dim(d),
      block_c=cfg.block_c, scale=d**-0.5,
      precision=common.dot_precision(q.dtype))

  def row_map(i, h, bb):
    return (bb, h, tb - 1 - i)

  q_spec = common.q_block_spec(BLOCK, tb, d)
  kv_spec = common.kv_head_spec(t, d, g)
  return pl.pallas_call(
      kernel,
      out_shape=(jax.ShapeDtypeStruct(q.shape, q.dtype),
                 jax.ShapeDtypeStruct((b, n, t), jnp.float32)),
      grid=(tb, n, b),
      in_specs=[pl.BlockSpec((None, None, 1), row_map),
                pl.BlockSpec((None, None, None, n_vert),
                             lambda i, h, bb: (*row_map(i, h, bb), 0)),
                q_spec, kv_spec, kv_spec],
      out_specs=(q_spec, pl.BlockSpec((None, None, BLOCK), row_map)),
      compiler_params=common.compiler_params(cfg.num_warps, cfg.num_stages),
      interpret=interpret,
      name=f"minf_vertical_slash_columns_bc{cfg.block_c}_d{d}",
  )(column_count, column_index, q, k, v)


# -------------------------------------------- step 2: windows (Mosaic GPU)


KEY_ROWS = 80  # a 64-key window at any start within an 8-aligned tile


@dataclasses.dataclass(frozen=True)
class _Plan:
  """Vertical-Slash windows of one (batch, head): refs count [B, N, Tb],
  offset [B, N, Tb, NS]; t the sequence length.

  Window [o, o + 64) is read as the 80-row tile at the 8-aligned start
  min(o - o % 8, T - 80) (Mosaic GPU's TMA into wgmma's tiled SMEM takes
  8-aligned rows only) and masked to its own, causal, columns.
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

  def key_start(self, m, i):
    start = lax.div(self._offset(m, i), jnp.int32(8)) * 8
    return pl.multiple_of(jnp.minimum(start, self.t - KEY_ROWS), 8)

  def segments(self, m):
    def window(i, rows, cols):
      """The window's own columns, causal."""
      o = self._offset(m, i)
      return (cols >= o) & (cols < o + BLOCK) & (cols <= rows)

    return (core.Segment(self.count(m), window),)


def _check(q, k, v, layout_arrays, block_size, config, seeded):
  op = "vertical_slash_attention_mgpu"
  if block_size != BLOCK:
    common.check_qkv(q, k, v, op)
    raise ValueError(f"{op}: VerticalSlashLayout.block_size={block_size}"
                     f" must be {BLOCK}")
  dims = core.check_inputs(q, k, v, op, config, seeded=seeded,
                           key_rows=KEY_ROWS)
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
  seeded = column_index.shape[-1] > 0
  dims = _check(q, k, v, (block_count, block_offset, column_count,
                          column_index), block_size, config, seeded)
  seed = (_columns(q, k, v, column_count, column_index, dims,
                   interpret=interpret is not None) if seeded else None)
  block_offset = phases.at_least(block_offset, 1)  # NS == 0: never read
  return core.tile_list_attention(
      q, k, v, (block_count, block_offset),
      plan_fn=lambda refs, bb, h: _Plan(*refs, bb, h, dims.t),
      config=config, dims=dims, interpret=interpret,
      name="minf_vertical_slash_mgpu", seed=seed, key_rows=KEY_ROWS)


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
