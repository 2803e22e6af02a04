"""Steps per query block of the Mosaic GPU Vertical-Slash stream plan.

Query block m of the stream plan (`mosaic_gpu._StreamPlan`) walks its
`block_count` windows, one 64-row tile each, plus one gathered tile per
GATHER run tails (rounded up): a window leaves a run tail when it ends a run
of contiguous windows (the next window does not start at o + 64) and its
64-row tile at floor8(o) misses keys ((o + 64) % 8 != 0 inside [0, T)). The
Mosaic launch needs that count per block before it starts.

`tile_steps_reference` is one XLA pass over the whole `block_offset`
[B, N, Tb, NS]; NS is the slash budget (6096 at MInference's default), far
more than the ~100 windows a row holds, so at 1M tokens that pass reads 12.8
GB. `tile_steps` is a Pallas-Triton kernel that reads only each row's first
`block_count` entries.
"""

import functools

import jax
import jax.numpy as jnp
from jax import lax
from jax.experimental import pallas as pl
from jax.experimental.pallas import triton as plt

from pallas_kernels import common
from pallas_kernels.mosaic_gpu_stream import GATHER

BLOCK = 64  # rows of a query block, keys of a window
ROWS = 16  # query blocks per program
CHUNK = 64  # windows per load


def ends_run_with_tail(o, o_next, t: int):
  """Whether the window at o ends a run (the next window, at o_next or -1
  if none, does not start at o + 64) and leaves a run tail: the keys
  [floor8(o) + 64, o + 64), inside [0, T) (o % 8 != 0 and o + 64 <= T).
  Elementwise on int32 arrays or scalars."""
  end = jnp.minimum(o + BLOCK, t)
  return (o_next != o + BLOCK) & (lax.rem(end, jnp.int32(8)) != 0)


def _steps(count, n_tails):
  """Windows plus one gathered tile per GATHER tails (rounded up)."""
  return count + (n_tails + GATHER - 1) // GATHER


def tile_steps_reference(block_count, block_offset, t: int):
  """int32 [B, N, Tb]: `tile_steps` as one XLA pass over block_offset."""
  i = lax.broadcasted_iota(jnp.int32, block_offset.shape, 3)
  count = block_count[..., None]
  o_next = jnp.concatenate([block_offset[..., 1:], block_offset[..., :1]],
                           axis=-1)
  o_next = jnp.where(i + 1 < count, o_next, -1)
  has = (i < count) & ends_run_with_tail(block_offset, o_next, t)
  return _steps(block_count, jnp.sum(has, axis=-1, dtype=jnp.int32))


def _kernel(count_ref, offset_ref, steps_ref, *, t: int, tb: int):
  """ROWS query blocks of one (batch, head): count [ROWS], offset
  [ROWS, NS] (rows past Tb overhang the arrays: masked), steps [ROWS]."""
  row = pl.program_id(0) * ROWS + common.iota(ROWS)
  in_range = row < tb
  count = plt.load(count_ref.at[pl.ds(0, ROWS)], mask=in_range, other=0)
  rows = pl.ds(0, ROWS)

  def chunk(c, n_tails):
    j = c * CHUNK + common.iota(CHUNK)  # [CHUNK] window numbers
    valid = j[None, :] < count[:, None]  # [ROWS, CHUNK]
    o = plt.load(offset_ref.at[rows, pl.ds(c * CHUNK, CHUNK)], mask=valid,
                 other=0)
    has_next = j[None, :] + 1 < count[:, None]
    o_next = plt.load(offset_ref.at[rows, pl.ds(c * CHUNK + 1, CHUNK)],
                      mask=has_next, other=-1)
    has = valid & ends_run_with_tail(o, o_next, t)
    return n_tails + jnp.sum(has.astype(jnp.int32), axis=1)

  n_chunks = common.cdiv(jnp.max(count), CHUNK)
  n_tails = lax.fori_loop(0, n_chunks, chunk, jnp.zeros((ROWS,), jnp.int32))
  plt.store(steps_ref.at[pl.ds(0, ROWS)], _steps(count, n_tails),
            mask=in_range)


@functools.partial(jax.jit, static_argnames=("t", "interpret"))
def tile_steps(block_count, block_offset, *, t: int, interpret: bool = False):
  """int32 [B, N, Tb]: the stream plan's steps per query block.

  Args:
    block_count: int32 [B, N, Tb] windows per query block.
    block_offset: int32 [B, N, Tb, NS] window starts, the first count of
      each row ascending (a `VerticalSlashLayout`'s).
    t: the sequence length T.
    interpret: run the Pallas-Triton kernel in interpret mode (CPU tests).

  Returns:
    block_count + ceil(run tails / GATHER) per query block, equal to
    `tile_steps_reference`.
  """
  b, n, tb = block_count.shape
  # Interpret mode cannot slice a static size out of a shorter array: the
  # last chunk loads CHUNK + 1 entries from its start, a program ROWS rows
  # (only short inputs are padded; a longer Tb's last block overhangs).
  pad_ns = max(CHUNK + 1 - block_offset.shape[-1], 0)
  pad_tb = max(ROWS - tb, 0)
  if pad_ns or pad_tb:
    block_offset = jnp.pad(block_offset,
                           ((0, 0), (0, 0), (0, pad_tb), (0, pad_ns)))
    block_count = jnp.pad(block_count, ((0, 0), (0, 0), (0, pad_tb)))
  ns = block_offset.shape[-1]
  count_spec = pl.BlockSpec((None, None, ROWS), lambda i, h, bb: (bb, h, i))
  return pl.pallas_call(
      functools.partial(_kernel, t=t, tb=tb),
      out_shape=jax.ShapeDtypeStruct((b, n, tb + pad_tb), jnp.int32),
      grid=(pl.cdiv(tb, ROWS), n, b),
      in_specs=[count_spec,
                pl.BlockSpec((None, None, ROWS, ns),
                             lambda i, h, bb: (bb, h, i, 0))],
      out_specs=count_spec,
      compiler_params=common.compiler_params(num_warps=4, num_stages=1),
      interpret=interpret,
      name="minf_vertical_slash_tile_steps",
  )(block_count, block_offset)[..., :tb]
