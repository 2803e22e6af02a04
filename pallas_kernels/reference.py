"""Plain-JAX references: boolean masks from index layouts, dense masked
attention.

Used by tests (every implementation is checked against
`masked_attention_reference(q, k, v, mask_from_layout)`) and by metrics. The
masks are dense [B, N, T, S] booleans: test-sized inputs, or a sample of
query rows (`rows=`) for long sequences.
"""

import functools
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Bool, Float

from pallas_kernels.layouts import (
    AShapeLayout,
    BlockSparseLayout,
    VerticalSlashChainLayout,
    VerticalSlashLayout,
)

_MASK_VALUE = -0.7 * float(jnp.finfo(jnp.float32).max)
# Query rows of a mask: None for all T rows, else a static sequence of rows.
Rows = Sequence[int] | np.ndarray | None


def _rows(t: int, rows: Rows) -> np.ndarray:
  return np.arange(t) if rows is None else np.asarray(rows, np.int64)


def causal_mask(t: int, s: int, q_offset: int = 0, *,
                rows: Rows = None) -> Bool[Array, "T S"]:
  """Query t (position q_offset + t) may read keys j <= q_offset + t.

  Returns [T, S], or [R, S] for the query rows `rows`.
  """
  r = jnp.asarray(_rows(t, rows))[:, None] + q_offset
  cols = jnp.arange(s)[None, :]
  return cols <= r


def _block_rows(t: int, bs: int, rows: Rows):
  """(rows, the distinct row blocks holding them, per row the index of its
  block among those) as int32 arrays."""
  r = _rows(t, rows)
  blocks, inverse = np.unique(r // bs, return_inverse=True)
  return tuple(jnp.asarray(x, jnp.int32) for x in (r, blocks, inverse))


@functools.partial(jax.jit, static_argnames=("s",))
def _vertical_slash_rows(layout: VerticalSlashLayout, rows, blocks, inverse,
                         *, s: int):
  bs = layout.block_size
  nb = layout.block_offset.shape[-1]
  nv = layout.column_index.shape[-1]

  def per_row_block(count, offsets, col_count, col_index):
    # count: [], offsets: [NS], col_count: [], col_index: [NV] -> [S]
    valid_block = jnp.arange(nb) < count  # [NS]
    start = jnp.where(valid_block, jnp.clip(offsets, 0, s), s)
    end = jnp.where(valid_block, jnp.clip(offsets + bs, 0, s), s)
    edges = jnp.zeros((s + 1,), jnp.int32).at[start].add(1).at[end].add(-1)
    window_cover = jnp.cumsum(edges)[:s] > 0  # inside some window
    valid_col = jnp.arange(nv) < col_count  # [NV]
    column_cover = jnp.zeros((s,), bool).at[
        jnp.where(valid_col, col_index, s)
    ].set(True, mode="drop")
    return window_cover | column_cover

  cover = jax.vmap(jax.vmap(jax.vmap(per_row_block)))(
      layout.block_count[:, :, blocks],
      layout.block_offset[:, :, blocks],
      layout.column_count[:, :, blocks],
      layout.column_index[:, :, blocks],
  )  # [B, N, Rb, S]
  causal = jnp.arange(s)[None, :] <= rows[:, None]  # [R, S]
  return cover[:, :, inverse, :] & causal[None, None]  # [B, N, R, S]


def vertical_slash_mask(
    layout: VerticalSlashLayout, t: int, s: int, *, rows: Rows = None
) -> Bool[Array, "B N T S"]:
  """The exact key set a Vertical-Slash kernel computes (windows + columns).

  Row r of row block m reads the keys j <= r inside a window
  [o, o + bs) of `block_offset[..., m, :block_count]` or among the columns
  `column_index[..., m, :column_count]`. Returns [B, N, T, S], or
  [B, N, R, S] for the query rows `rows`.
  """
  return _vertical_slash_rows(layout, *_block_rows(t, layout.block_size,
                                                   rows), s=s)


@functools.partial(jax.jit, static_argnums=(1, 2))
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
  rows = cover[:, :, jnp.arange(t) // bs, :]  # [B, N, T, S]
  return rows & causal_mask(t, s)[None, None]


@functools.partial(jax.jit, static_argnames=("s",))
def _block_sparse_rows(layout: BlockSparseLayout, rows, blocks, inverse, *,
                       s: int):
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
      layout.block_count[:, :, blocks], layout.block_index[:, :, blocks]
  )  # [B, N, Rb, Sb]
  col_block = jnp.arange(s) // bs
  mask = chosen[:, :, inverse][:, :, :, col_block]  # [B, N, R, S]
  causal = jnp.arange(s)[None, :] <= rows[:, None]  # [R, S]
  return mask & causal[None, None]


def block_sparse_mask(
    layout: BlockSparseLayout, t: int, s: int, *, rows: Rows = None
) -> Bool[Array, "B N T S"]:
  """The exact key set a Block-Sparse kernel computes.

  Row r of row block m reads the keys j <= r of the key blocks
  `block_index[..., m, :block_count]`. Returns [B, N, T, S], or
  [B, N, R, S] for the query rows `rows`.
  """
  return _block_sparse_rows(layout, *_block_rows(t, layout.block_size, rows),
                            s=s)


def a_shape_mask(layout: AShapeLayout, t: int, s: int, *,
                 rows: Rows = None) -> Bool[Array, "1 N T S"]:
  """Sink keys j < n_init plus local window t - j < n_local, causal.

  Returns [1, N, T, S], or [1, N, R, S] for the query rows `rows`.
  """
  r = jnp.asarray(_rows(t, rows))[:, None]
  cols = jnp.arange(s)[None, :]
  n_init = layout.n_init[:, None, None]
  n_local = layout.n_local[:, None, None]
  keep = (cols[None] < n_init) | (r[None] - cols[None] < n_local)
  return (keep & causal_mask(t, s, rows=rows)[None])[None]


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
