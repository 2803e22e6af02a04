"""Block-Sparse attention in plain JAX (gathered 64 x 64 key blocks)."""

import jax.numpy as jnp
from beartype import beartype
from jaxtyping import Array, Float, jaxtyped

from pallas_kernels import gathered_xla
from pallas_kernels.layouts import BlockSparseLayout


def _keyset(bs: int, s_len: int):
  """Row block m reads the key blocks `index[:count]` (causal and
  sequence-end masked)."""

  def keyset(m, count, index):
    kb = index.shape[0]
    row = m * bs + jnp.arange(bs)  # [bs]
    pos = index[:, None] * bs + jnp.arange(bs)[None, :]  # [KB, bs]
    ok = (jnp.arange(kb) < count)[:, None] & (pos < s_len)
    pos, ok = pos.reshape(-1), ok.reshape(-1)
    return pos, ok[None, :] & (pos[None, :] <= row[:, None])

  return keyset


def _gathered(q, k, v, layout: BlockSparseLayout):
  gathered_xla.check_qkv(q, k, k if v is None else v, prefill=True)
  b, t, n, _ = q.shape
  bs = layout.block_size
  tb = -(-t // bs)
  arrays = dict(block_count=layout.block_count,
                block_index=layout.block_index)
  gathered_xla.check_layout_arrays("BlockSparseLayout", arrays, b, n, tb)
  kb = min(layout.block_index.shape[-1], tb)  # ids are distinct, <= m
  rows = (layout.block_count, layout.block_index[..., :kb])
  return gathered_xla.gathered_attention(
      q, k, v, rows, (), make_keyset=_keyset, params=(bs, t),
      n_keys=kb * bs,
  )


@jaxtyped(typechecker=beartype)
def block_sparse_attention_xla(
    q: Float[Array, "B T N D"],
    k: Float[Array, "B T K D"],
    v: Float[Array, "B T K D"],
    layout: BlockSparseLayout,
) -> Float[Array, "B T N D"]:
  """Block-Sparse attention computing only the selected 64x64 key blocks.

  MInference (Jiang et al., 2024), section 3.2: per 64-row query block,
  gathers the K/V blocks at `block_index[:block_count]` and runs a float32
  softmax over them (causal mask on the diagonal block). Query head n reads
  KV head n // G.

  Args:
    q: [B, T, N, D] queries.
    k: [B, T, K, D] keys (full prefill: S == T).
    v: [B, T, K, D] values.
    layout: BlockSparseLayout with arrays [B, N, Tb, ...].

  Returns:
    [B, T, N, D] in q's dtype; rows (and inactive heads) without keys are 0.

  Raises:
    ValueError: on inconsistent shapes.
  """
  return _gathered(q, k, v, layout)[0]


@jaxtyped(typechecker=beartype)
def block_sparse_logsumexp_xla(
    q: Float[Array, "B T N D"],
    k: Float[Array, "B T K D"],
    layout: BlockSparseLayout,
) -> Float[Array, "B T N"]:
  """Log-sum-exp of the scaled logits over the layout's key blocks, in f32.

  Args:
    q: [B, T, N, D] queries.
    k: [B, T, K, D] keys.
    layout: BlockSparseLayout with arrays [B, N, Tb, ...].

  Returns:
    [B, T, N] f32; -inf for rows without keys.
  """
  return _gathered(q, k, None, layout)[1]
