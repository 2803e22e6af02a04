"""Pallas-Triton Block-Sparse attention over a BlockSparseLayout."""

import functools

import jax
import jax.numpy as jnp
from beartype import beartype
from jax import lax
from jax.experimental import pallas as pl
from jaxtyping import Array, Float, jaxtyped

from pallas_kernels import common
from pallas_kernels.block_sparse.base import Config
from pallas_kernels.layouts import BlockSparseLayout


def _kernel(block_count_ref, block_index_ref, q_ref, k_ref, v_ref, o_ref, *,
            t, d, d_pad, bs, scale, precision):
  """One program: one bs-row query block of one (batch, head).

  Walks the selected key blocks (ascending ids <= m). Only the diagonal block
  (id == m, necessarily the last entry) needs the causal and sequence-end
  masks, so it is split off: the {full, partial} distinction of splash
  attention's block mask, without mask math on full blocks.
  """
  m = pl.num_programs(0) - 1 - pl.program_id(0)
  r0 = m * bs
  rows = r0 + common.iota(bs)  # [bs]
  row_ok = rows < t if t % bs else None
  q = common.load_q(q_ref, bs, d, d_pad, scale, row_ok)  # [bs, Dp]
  state = common.init_state(bs, d_pad)

  count = block_count_ref[0]
  last = block_index_ref[jnp.maximum(count - 1, 0)]
  has_diag = (count > 0) & (last == m)
  n_full = count - has_diag.astype(jnp.int32)

  tile = functools.partial(common.attend_tile, q=q, k_ref=k_ref,
                           v_ref=v_ref, size=bs, d=d, d_pad=d_pad,
                           precision=precision)

  def full_block(j, st):
    return tile(st, start=pl.multiple_of(block_index_ref[j] * bs, bs))

  def diag_block(j, st):
    start = pl.multiple_of(block_index_ref[j] * bs, bs)
    return tile(st, start=start, causal_rows=rows, t=t)

  state = lax.fori_loop(0, n_full, full_block, state)
  state = lax.fori_loop(n_full, count, diag_block, state)
  common.store_out(o_ref, common.finish(state), d, row_ok)


@functools.partial(jax.jit, static_argnames=("block_size", "config",
                                             "interpret"))
def _fwd(q, k, v, block_count, block_index, *, block_size: int,
         config: Config, interpret: bool):
  b, t, n, _, g, d = common.check_qkv(q, k, v, "block_sparse_attention")
  common.check_block("BlockSparseLayout.block_size", block_size)
  tb = pl.cdiv(t, block_size)
  common.check_index_array(
      "BlockSparseLayout.block_count", block_count, (b, n, tb), 3
  )
  common.check_index_array(
      "BlockSparseLayout.block_index", block_index, (b, n, tb), 4
  )
  if not block_index.shape[-1]:
    block_index = jnp.zeros((b, n, tb, 1), jnp.int32)  # never read
  top_k = block_index.shape[-1]
  d_pad = common.padded_head_dim(d)
  bs = block_size
  k, v = common.pad_short_kv(k, v, bs)
  kernel = functools.partial(
      _kernel, t=t, d=d, d_pad=d_pad, bs=bs, scale=d**-0.5,
      precision=common.dot_precision(q.dtype),
  )
  count_spec = pl.BlockSpec((None, None, 1),
                            lambda i, h, bb: (bb, h, tb - 1 - i))
  index_spec = pl.BlockSpec((None, None, None, top_k),
                            lambda i, h, bb: (bb, h, tb - 1 - i, 0))
  q_spec = common.q_block_spec(bs, tb, d)
  kv_spec = common.kv_head_spec(k.shape[1], d, g)
  return pl.pallas_call(
      kernel,
      out_shape=jax.ShapeDtypeStruct(q.shape, q.dtype),
      grid=(tb, n, b),
      in_specs=[count_spec, index_spec, q_spec, kv_spec, kv_spec],
      out_specs=q_spec,
      compiler_params=common.compiler_params(
          config.num_warps, config.num_stages
      ),
      interpret=interpret,
      name=f"minf_block_sparse_fwd_bs{bs}_d{d}",
  )(block_count, block_index, q, k, v)


@jaxtyped(typechecker=beartype)
def block_sparse_attention_triton(
    q: Float[Array, "B T N D"],
    k: Float[Array, "B S K D"],
    v: Float[Array, "B S K D"],
    layout: BlockSparseLayout,
    *,
    config: Config | None = None,
    interpret: bool = False,
) -> Float[Array, "B T N D"]:
  """Block-Sparse attention over the layout's selected key blocks.

  Computes exactly the key set of `pallas_kernels.reference.
  block_sparse_mask(layout)`: for query block m, key blocks
  `block_index[:block_count]` (ascending, <= m), causal on the diagonal block.
  One launch covers all heads; heads with zero counts produce zeros. Query
  head n reads KV head n // G.

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
  return _fwd(q, k, v, layout.block_count, layout.block_index,
              block_size=layout.block_size, config=config,
              interpret=interpret)
