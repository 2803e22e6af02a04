"""Vertical-Slash attention in plain JAX (gathered windows and columns)."""

import jax.numpy as jnp
from beartype import beartype
from jaxtyping import Array, Float, jaxtyped

from pallas_kernels import gathered_xla
from pallas_kernels.layouts import VerticalSlashLayout


def _keyset(bs: int, s_len: int):
  """Row block m reads its bs-wide windows at `offsets[:count]` (causal and
  sequence-end masked) and its columns `col_index[:col_count]`."""

  def keyset(m, count, offsets, col_count, col_index):
    ns, nv = offsets.shape[0], col_index.shape[0]
    row = m * bs + jnp.arange(bs)  # [bs]
    win = offsets[:, None] + jnp.arange(bs)[None, :]  # [NS, bs]
    win_ok = (jnp.arange(ns) < count)[:, None] & (win < s_len)
    col_ok = jnp.arange(nv) < col_count  # [NV]
    pos = jnp.concatenate([win.reshape(-1), col_index])  # [NS * bs + NV]
    ok = jnp.concatenate([win_ok.reshape(-1), col_ok])
    return pos, ok[None, :] & (pos[None, :] <= row[:, None])

  return keyset


def _gathered(q, k, v, layout: VerticalSlashLayout):
  gathered_xla.check_qkv(q, k, k if v is None else v, prefill=True)
  b, t, n, _ = q.shape
  bs = layout.block_size
  tb = -(-t // bs)
  arrays = dict(
      block_count=layout.block_count,
      block_offset=layout.block_offset,
      column_count=layout.column_count,
      column_index=layout.column_index,
  )
  gathered_xla.check_layout_arrays("VerticalSlashLayout", arrays, b, n, tb)
  # Disjoint bs-wide windows starting in [0, S) number at most Tb, and
  # distinct columns left of a row block at most T: trim the padding.
  ns = min(layout.block_offset.shape[-1], tb)
  nv = min(layout.column_index.shape[-1], t)
  rows = (
      layout.block_count,
      layout.block_offset[..., :ns],
      layout.column_count,
      layout.column_index[..., :nv],
  )
  return gathered_xla.gathered_attention(
      q, k, v, rows, (), make_keyset=_keyset, params=(bs, t),
      n_keys=ns * bs + nv,
  )


@jaxtyped(typechecker=beartype)
def vertical_slash_attention_xla(
    q: Float[Array, "B T N D"],
    k: Float[Array, "B T K D"],
    v: Float[Array, "B T K D"],
    layout: VerticalSlashLayout,
) -> Float[Array, "B T N D"]:
  """Vertical-Slash attention computing only the layout's windows and columns.

  MInference (Jiang et al., 2024), section 3.2: for each 64-row query block,
  gathers the bs-wide K/V windows at `block_offset` and the single K/V rows
  at `column_index`, computes [bs, NS * bs + NV] logits in f32 (causal and
  count masks), softmax in f32 and the weighted sum. Query head n reads KV
  head n // G; K/V are never repeated. Row blocks are processed in chunks so
  memory is O(T x budget).

  Args:
    q: [B, T, N, D] queries.
    k: [B, T, K, D] keys (full prefill: S == T).
    v: [B, T, K, D] values.
    layout: VerticalSlashLayout with arrays [B, N, Tb, ...].

  Returns:
    [B, T, N, D] in q's dtype; rows (and inactive heads) without keys are 0.

  Raises:
    ValueError: on inconsistent shapes.
  """
  return _gathered(q, k, v, layout)[0]


@jaxtyped(typechecker=beartype)
def vertical_slash_logsumexp_xla(
    q: Float[Array, "B T N D"],
    k: Float[Array, "B T K D"],
    layout: VerticalSlashLayout,
) -> Float[Array, "B T N"]:
  """Log-sum-exp of the scaled logits over the layout's key set, in f32.

  Args:
    q: [B, T, N, D] queries.
    k: [B, T, K, D] keys.
    layout: VerticalSlashLayout with arrays [B, N, Tb, ...].

  Returns:
    [B, T, N] f32; -inf for rows without keys.
  """
  return _gathered(q, k, None, layout)[1]
