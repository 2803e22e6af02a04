"""Pieces shared by the two Vertical-Slash kernels (layout and chain forms)."""

import jax
import jax.numpy as jnp
from jax import lax
from jax.experimental import pallas as pl
from jax.experimental.pallas import triton as plt

from pallas_kernels import common


def column_phase(state, q, k_ref, v_ref, index_ref, n_cols, *, d, d_pad, bs,
                 block_c, precision):
  """Attends to the key columns index_ref[:n_cols], gathered block_c at a time.

  The columns all lie left of the query block, so full chunks need no mask;
  only the last, partial chunk masks the entries past n_cols.
  """

  def full_chunk(c, st):
    start = pl.multiple_of(c * block_c, block_c)
    idx = index_ref[pl.ds(start, block_c)]  # [bc]
    k = common.gather_rows(k_ref, idx, d, d_pad)
    v = common.gather_rows(v_ref, idx, d, d_pad)
    return common.attend(st, q, k, v, None, precision)

  def partial_chunk(c, st):
    start = pl.multiple_of(c * block_c, block_c)
    valid = start + common.iota(block_c) < n_cols  # [bc]
    idx = plt.load(index_ref.at[pl.ds(start, block_c)], mask=valid, other=0)
    k = common.gather_rows(k_ref, idx, d, d_pad)
    v = common.gather_rows(v_ref, idx, d, d_pad)
    mask = jnp.broadcast_to(valid[None, :], (bs, block_c))
    return common.attend(st, q, k, v, mask, precision)

  n_full_chunks = common.idiv(n_cols, block_c)
  state = lax.fori_loop(0, n_full_chunks, full_chunk, state)
  return lax.fori_loop(
      n_full_chunks, common.cdiv(n_cols, block_c), partial_chunk, state
  )


def at_least(arr: jax.Array, size: int) -> jax.Array:
  """Pads a [B, N, Tb, X] budget array to X >= size (padding is never read).

  Budgets narrower than one load (e.g. NV = 40 < block_c = 64, or 0) are
  padded so the statically sized loads stay inside the array; this is tiny.
  """
  if arr.shape[-1] >= size:
    return arr
  pad = ((0, 0),) * (arr.ndim - 1) + ((0, size - arr.shape[-1]),)
  return jnp.pad(arr, pad)
