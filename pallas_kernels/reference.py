"""Plain-JAX references: boolean masks from index layouts, dense masked attention.

Used by tests (kernels and the XLA path are checked against
`masked_attention_reference(q, k, v, mask_from_layout)`) and by metrics. The
masks are dense [B, N, T, S] booleans: only for test-sized inputs.
"""

import jax
import jax.numpy as jnp
from jaxtyping import Array, Bool, Float

from pallas_kernels.layouts import (
    AShapeLayout,
    BlockSparseLayout,
    VerticalSlashChainLayout,
    VerticalSlashLayout,
)

_MASK_VALUE = -0.7 * float(jnp.finfo(jnp.float32).max)


def causal_mask(t: int, s: int, q_offset: int = 0) -> Bool[Array, "T S"]:
  """Query t (absolute position q_offset + t) may read keys j <= q_offset + t."""
  rows = jnp.arange(t)[:, None] + q_offset
  cols = jnp.arange(s)[None, :]
  return cols <= rows


def _row_block_of(t: int, block_size: int) -> jax.Array:
  return jnp.arange(t) // block_size  # [T]


def vertical_slash_mask(
    layout: VerticalSlashLayout, t: int, s: int
) -> Bool[Array, "B N T S"]:
  """The exact key set a Vertical-Slash kernel computes (windows + columns)."""
  bs = layout.block_size
  nb = layout.block_offset.shape[-1]
  nv = layout.column_index.shape[-1]
  cols = jnp.arange(s)  # [S]

  def per_row_block(count, offsets, col_count, col_index):
    # count: [], offsets: [NS], col_count: [], col_index: [NV] -> [S]
    valid_block = jnp.arange(nb) < count  # [NS]
    in_window = (cols[None, :] >= offsets[:, None]) & (
        cols[None, :] < offsets[:, None] + bs
    )  # [NS, S]
    window_cover = jnp.any(in_window & valid_block[:, None], axis=0)
    valid_col = jnp.arange(nv) < col_count  # [NV]
    column_cover = jnp.zeros((s,), bool).at[
        jnp.where(valid_col, col_index, s)
    ].set(True, mode="drop")
    return window_cover, column_cover

  fn = jax.vmap(jax.vmap(jax.vmap(per_row_block)))
  window_cover, column_cover = fn(
      layout.block_count,
      layout.block_offset,
      layout.column_count,
      layout.column_index,
  )  # [B, N, Tb, S] each
  row_block = _row_block_of(t, bs)  # [T]
  windows = window_cover[:, :, row_block, :]  # [B, N, T, S]
  columns = column_cover[:, :, row_block, :]
  return (windows & causal_mask(t, s)[None, None]) | (
      columns & causal_mask(t, s)[None, None]
  )


def vertical_slash_chain_mask(
    layout: VerticalSlashChainLayout, t: int, s: int
) -> Bool[Array, "B N T S"]:
  """The exact key set the chain Vertical-Slash kernel computes.

  Follows `VerticalSlashChainLayout`'s reading rule literally, one row block
  at a time: walk the successor table from the block's end, union the
  windows, add the verticals left of the block as columns (those inside a
  window are there already), then apply the causal mask. (The run tables
  are checked against the successor table in the index tests.)
  """
  bs = layout.block_size
  nv = layout.vertical.shape[-1]
  tb = -(-t // bs)
  cols = jnp.arange(s)  # [S]

  def per_row_block(table, prefix, vertical, m):
    # table, prefix: [S + bs + 1]; vertical: [NV]; m: [] -> two [S] masks
    r0 = m * bs
    end = jnp.minimum(r0 + bs, t)

    def body(carry):
      j, cover = carry
      start = end - j
      cover = cover | ((cols >= start) & (cols < start + bs))
      return table[j], cover

    _, windows = jax.lax.while_loop(
        lambda c: c[0] > 0, body, (table[end + bs], jnp.zeros((s,), bool))
    )
    valid = jnp.arange(nv) < prefix[r0]  # the verticals left of the block
    columns = jnp.zeros((s,), bool).at[jnp.where(valid, vertical, s)].set(
        True, mode="drop"
    )
    return windows | columns

  per_head = jax.vmap(per_row_block, in_axes=(None, None, None, 0))
  fn = jax.vmap(jax.vmap(per_head, in_axes=(0, 0, 0, None)),
                in_axes=(0, 0, 0, None))
  cover = fn(layout.window_next, layout.vertical_prefix, layout.vertical,
             jnp.arange(tb))  # [B, N, Tb, S]
  rows = cover[:, :, _row_block_of(t, bs), :]  # [B, N, T, S]
  return rows & causal_mask(t, s)[None, None]


def block_sparse_mask(
    layout: BlockSparseLayout, t: int, s: int
) -> Bool[Array, "B N T S"]:
  """The exact key set a Block-Sparse kernel computes."""
  bs = layout.block_size
  kb = layout.block_index.shape[-1]
  sb = -(-s // bs)

  def per_row_block(count, index):
    valid = jnp.arange(kb) < count
    chosen = jnp.zeros((sb,), bool).at[jnp.where(valid, index, sb)].set(
        True, mode="drop"
    )
    return chosen  # [Sb]

  chosen = jax.vmap(jax.vmap(jax.vmap(per_row_block)))(
      layout.block_count, layout.block_index
  )  # [B, N, Tb, Sb]
  row_block = _row_block_of(t, bs)
  col_block = jnp.arange(s) // bs
  mask = chosen[:, :, row_block][:, :, :, col_block]  # [B, N, T, S]
  return mask & causal_mask(t, s)[None, None]


def a_shape_mask(layout: AShapeLayout, t: int, s: int) -> Bool[Array, "1 N T S"]:
  """Sink keys j < n_init plus local window t - j < n_local, causal."""
  rows = jnp.arange(t)[:, None]
  cols = jnp.arange(s)[None, :]
  n_init = layout.n_init[:, None, None]
  n_local = layout.n_local[:, None, None]
  keep = (cols[None] < n_init) | (rows[None] - cols[None] < n_local)
  return (keep & causal_mask(t, s)[None])[None]


def masked_attention_reference(
    q: Float[Array, "B T N D"],
    k: Float[Array, "B S K D"],
    v: Float[Array, "B S K D"],
    mask: Bool[Array, "#B N T S"],
    *,
    sm_scale: float | None = None,
) -> Float[Array, "B T N D"]:
  """Dense attention over an explicit key set, computed in float32.

  Rows whose mask is empty produce zeros. GQA: query head n reads KV head
  n // (N // K) through a grouped einsum (K/V are not repeated).
  """
  b, t, n, d = q.shape
  kv_heads = k.shape[2]
  if n % kv_heads:
    raise ValueError(f"N={n} query heads not divisible by K={kv_heads}")
  g = n // kv_heads
  scale = d**-0.5 if sm_scale is None else sm_scale
  qf = q.astype(jnp.float32).reshape(b, t, kv_heads, g, d)
  kf = k.astype(jnp.float32)
  vf = v.astype(jnp.float32)
  logits = jnp.einsum(
      "btkgd,bskd->bkgts", qf, kf, precision=jax.lax.Precision.HIGHEST
  ) * scale  # [B, K, G, T, S]
  mask = jnp.broadcast_to(mask, (b, n) + mask.shape[2:]).reshape(
      b, kv_heads, g, t, -1
  )
  logits = jnp.where(mask, logits, _MASK_VALUE)
  probs = jax.nn.softmax(logits, axis=-1)
  probs = jnp.where(mask, probs, 0.0)
  out = jnp.einsum(
      "bkgts,bskd->btkgd", probs, vf, precision=jax.lax.Precision.HIGHEST
  )
  return out.reshape(b, t, n, d).astype(q.dtype)
