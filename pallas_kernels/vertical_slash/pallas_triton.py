"""Pallas-Triton Vertical-Slash attention over a VerticalSlashLayout."""

import functools

import jax
import jax.numpy as jnp
from beartype import beartype
from jax import lax
from jax.experimental import pallas as pl
from jaxtyping import Array, Float, jaxtyped

from pallas_kernels import common
from pallas_kernels.layouts import VerticalSlashChainLayout, VerticalSlashLayout
from pallas_kernels.vertical_slash import phases
from pallas_kernels.vertical_slash.base import Config
from pallas_kernels.vertical_slash.chain_triton import chain_fwd


def _kernel(block_count_ref, block_offset_ref, column_count_ref,
            column_index_ref, q_ref, k_ref, v_ref, o_ref, *, t, d, d_pad, bs,
            block_c, n_slash, n_search, scale, precision):
  """One program: one bs-row query block of one (batch, head).

  MInference's "mixed" kernel (App. C.4.2): phase 1 walks the layout's
  bs-wide key windows (slash lines), each starting at an arbitrary column;
  phase 2 gathers the left-over single key columns (vertical lines) in chunks
  of block_c rows (PIT). Windows ending at or before the block's first row
  need no mask; their count is found by a binary search over the ascending
  offsets. The others get the causal and sequence-end masks. Columns are all
  left of the block (< r0), so only the count mask of the last chunk remains.
  """
  m = pl.num_programs(0) - 1 - pl.program_id(0)
  r0 = m * bs
  rows = r0 + common.iota(bs)  # [bs]
  row_ok = rows < t if t % bs else None
  q = common.load_q(q_ref, bs, d, d_pad, scale, row_ok)  # [bs, Dp]
  state = common.init_state(bs, d_pad)

  # Phase 1: windows. n_free = #windows with offset + bs - 1 <= r0.
  n_blocks = block_count_ref[0]

  def search(_, lo_hi):
    lo, hi = lo_hi
    mid = common.idiv(lo + hi, 2)
    off = block_offset_ref[jnp.minimum(mid, n_slash - 1)]
    open_ = lo < hi
    left_of_block = off + (bs - 1) <= r0
    return (jnp.where(open_ & left_of_block, mid + 1, lo),
            jnp.where(open_ & ~left_of_block, mid, hi))

  n_free, _ = lax.fori_loop(
      0, n_search, search, (jnp.int32(0), n_blocks)
  )

  tile = functools.partial(common.attend_tile, q=q, k_ref=k_ref,
                           v_ref=v_ref, size=bs, d=d, d_pad=d_pad,
                           precision=precision)

  def free_window(j, st):
    return tile(st, start=block_offset_ref[j])

  def masked_window(j, st):
    return tile(st, start=block_offset_ref[j], causal_rows=rows, t=t)

  state = lax.fori_loop(0, n_free, free_window, state)
  state = lax.fori_loop(n_free, n_blocks, masked_window, state)

  # Phase 2: gathered columns.
  state = phases.column_phase(state, q, k_ref, v_ref, column_index_ref,
                       column_count_ref[0], d=d, d_pad=d_pad, bs=bs,
                       block_c=block_c, precision=precision)
  common.store_out(o_ref, common.finish(state), d, row_ok)


@functools.partial(jax.jit, static_argnames=("block_size", "config",
                                             "interpret"))
def _fwd(q, k, v, block_count, block_offset, column_count, column_index, *,
         block_size: int, config: Config, interpret: bool):
  b, t, n, _, g, d = common.check_qkv(q, k, v, "vertical_slash_attention")
  common.check_block("VerticalSlashLayout.block_size", block_size)
  tb = pl.cdiv(t, block_size)
  for name, arr, ndim in (("block_count", block_count, 3),
                          ("block_offset", block_offset, 4),
                          ("column_count", column_count, 3),
                          ("column_index", column_index, 4)):
    common.check_index_array(
        f"VerticalSlashLayout.{name}", arr, (b, n, tb), ndim
    )
  block_offset = phases.at_least(block_offset, 1)
  column_index = phases.at_least(column_index, config.block_c)
  n_slash, n_vert = block_offset.shape[-1], column_index.shape[-1]
  d_pad = common.padded_head_dim(d)
  bs = block_size
  k, v = common.pad_short_kv(k, v, max(bs, config.block_c))
  kernel = functools.partial(
      _kernel, t=t, d=d, d_pad=d_pad, bs=bs, block_c=config.block_c,
      n_slash=n_slash, n_search=n_slash.bit_length(), scale=d**-0.5,
      precision=common.dot_precision(q.dtype),
  )

  def row_map(i, h, bb):
    return (bb, h, tb - 1 - i)

  count_spec = pl.BlockSpec((None, None, 1), row_map)
  offset_spec = pl.BlockSpec((None, None, None, n_slash),
                             lambda i, h, bb: (*row_map(i, h, bb), 0))
  index_spec = pl.BlockSpec((None, None, None, n_vert),
                            lambda i, h, bb: (*row_map(i, h, bb), 0))
  q_spec = common.q_block_spec(bs, tb, d)
  kv_spec = common.kv_head_spec(k.shape[1], d, g)
  return pl.pallas_call(
      kernel,
      out_shape=jax.ShapeDtypeStruct(q.shape, q.dtype),
      grid=(tb, n, b),
      in_specs=[count_spec, offset_spec, count_spec, index_spec, q_spec,
                kv_spec, kv_spec],
      out_specs=q_spec,
      compiler_params=common.compiler_params(
          config.num_warps, config.num_stages
      ),
      interpret=interpret,
      name=f"minf_vertical_slash_fwd_bs{bs}_bc{config.block_c}_d{d}",
  )(block_count, block_offset, column_count, column_index, q, k, v)


@jaxtyped(typechecker=beartype)
def vertical_slash_attention_triton(
    q: Float[Array, "B T N D"],
    k: Float[Array, "B S K D"],
    v: Float[Array, "B S K D"],
    layout: VerticalSlashLayout | VerticalSlashChainLayout,
    *,
    config: Config | None = None,
    interpret: bool = False,
) -> Float[Array, "B T N D"]:
  """Vertical-Slash sparse attention: per query block, windows + columns.

  Computes exactly the key set of `pallas_kernels.reference.
  vertical_slash_mask(layout)`: for each bs-row query block, the key windows
  [o, o + bs) at `block_offset[:block_count]` (causal and sequence-end masked)
  and the key columns `column_index[:column_count]`. One launch covers all
  heads; heads with zero counts produce zeros. Query head n reads KV head
  n // G.

  Args:
    q: [B, T, N, D] queries (float32, bfloat16 or float16).
    k: [B, S, K, D] keys (S == T: full prefill), N % K == 0.
    v: [B, S, K, D] values.
    layout: int32 arrays [B, N, Tb, ...] with Tb = ceil(T / block_size).
    config: launch knobs; `Config.get_default(D)` if None.
    interpret: run the kernel in Pallas interpret mode (CPU tests).

  Returns:
    [B, T, N, D] attention output in q's dtype.

  Raises:
    ValueError: on inconsistent shapes or a bad block size.
    TypeError: on unsupported dtypes or non-int32 layout arrays.
  """
  if config is None:
    config = Config.get_default(q.shape[-1])
  if isinstance(layout, VerticalSlashChainLayout):
    return chain_fwd(q, k, v, layout.window_next, layout.run_length,
                     layout.run_next, layout.vertical, layout.vertical_prefix,
                     block_size=layout.block_size, config=config,
                     interpret=interpret)
  return _fwd(q, k, v, layout.block_count, layout.block_offset,
              layout.column_count, layout.column_index,
              block_size=layout.block_size, config=config,
              interpret=interpret)
