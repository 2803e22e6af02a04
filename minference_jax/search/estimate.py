"""Per-head estimates that every candidate of a kind shares.

The online estimates of MInference 1.0 (Jiang et al., 2024, Alg. 2 and 3;
the same semantics as `minference_jax.index`), stored as rankings so that a
candidate with any budget is a threshold on a rank and candidates batch:
- Vertical-Slash: softmax of the last 64 queries against all keys; columns
  ranked by their summed probability (columns 0..29 first), diagonals
  (offset = row - column) by theirs (offsets 0..99 first). A budget of k
  keeps the ranks < k: exactly `vertical_slash_indices`' top-k sets, ties to
  the smaller column / offset.
- Block-Sparse: mean-pooled 64-token blocks, unscaled block logits,
  block-causal; per query block m the key blocks ranked by logit. A top-k of
  k keeps ranks < min(m + 1, k): `block_sparse_indices`' sets.
"""

import dataclasses
import functools

import jax
import jax.numpy as jnp
from jaxtyping import Array, Float, Int

from minference_jax.patterns import (
    VS_FORCED_SLASH_OFFSETS,
    VS_LAST_Q,
    VS_MIN_VERTICAL,
)
from minference_jax.search.space import TILE

_HIGHEST = jax.lax.Precision.HIGHEST


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class HeadEstimates:
  """Rankings of one layer's heads (0 = kept first).

  Fields:
    vertical_rank: Int[B, N, T], rank of key column j.
    slash_rank:    Int[B, N, T], rank of diagonal offset o (row - column).
    block_rank:    Int[B, N, Tb, Tb], rank of key block j in query block
                   m's row; the m + 1 causal blocks rank before the others.
  """

  vertical_rank: Int[Array, "B N T"]
  slash_rank: Int[Array, "B N T"]
  block_rank: Int[Array, "B N Tb Tb"]


def _ranks(scores: jax.Array) -> jax.Array:
  """Rank of each entry along the last axis, by score descending, ties to
  the lower position (a stable sort of -score; +inf ranks first)."""
  order = jnp.argsort(-scores, axis=-1, stable=True)
  return jnp.argsort(order, axis=-1).astype(jnp.int32)


def vertical_slash_scores(q, k, last_q: int = VS_LAST_Q):
  """MInference's vertical and slash scores, forced entries +inf.

  Args:
    q: [B, T, N, D]; k: [B, T, K, D] (query head n reads KV head n // G).
    last_q: queries of the estimate (clamped to T).

  Returns:
    vertical [B, N, T] (by column), slash [B, N, T] (by offset), f32.
  """
  b, t, n, d = q.shape
  kv = k.shape[2]
  rows_n = min(last_q, t)
  q_last = q[:, t - rows_n:].reshape(b, rows_n, kv, n // kv, d)
  precision = _HIGHEST if q.dtype == jnp.float32 else None
  logits = jnp.einsum(
      "blkgd,bskd->bkgls", q_last, k, precision=precision,
      preferred_element_type=jnp.float32) * (d**-0.5)  # [B, K, G, L, S]
  # Rounded to the input dtype, as MInference computes them.
  logits = logits.astype(q.dtype).astype(jnp.float32).reshape(
      b, n, rows_n, t)
  rows = t - rows_n + jnp.arange(rows_n)  # [L] absolute positions
  cols = jnp.arange(t)
  visible = cols[None, :] <= rows[:, None]  # [L, S]
  probs = jax.nn.softmax(jnp.where(visible, logits, -jnp.inf), axis=-1)
  vertical = jnp.sum(probs, axis=-2)  # [B, N, S]
  # slash[o] = sum_i probs[i, rows_i - o] over the rows that reach o.
  src = rows[:, None] - cols[None, :]  # [L, S]: column of offset o in row i
  on_row = jnp.where(src >= 0, jnp.take_along_axis(
      probs, jnp.broadcast_to(jnp.maximum(src, 0), probs.shape), axis=-1),
      0.0)
  slash = jnp.sum(on_row, axis=-2)  # [B, N, S] by offset
  vertical = jnp.where(cols < VS_MIN_VERTICAL, jnp.inf, vertical)
  slash = jnp.where(cols < VS_FORCED_SLASH_OFFSETS, jnp.inf, slash)
  return vertical, slash


def _mean_pool(x):
  """[B, T, H, D] -> [B, Tb, H, D] f32 block means over zero padding."""
  b, t, h, d = x.shape
  tb = -(-t // TILE)
  x = jnp.pad(x.astype(jnp.float32), ((0, 0), (0, tb * TILE - t), (0, 0),
                                      (0, 0)))
  return x.reshape(b, tb, TILE, h, d).sum(axis=2) / TILE


def block_scores(q, k):
  """Block-causal pooled logits [B, N, Tb, Tb] (no scaling; -inf above the
  block diagonal), as MInference's Block-Sparse estimate."""
  b, t, n, d = q.shape
  kv = k.shape[2]
  qp = _mean_pool(q).reshape(b, -1, kv, n // kv, d)  # [B, Tb, K, G, D]
  kp = _mean_pool(k)  # [B, Sb, K, D]
  scores = jnp.einsum("bmkgd,bjkd->bkgmj", qp, kp, precision=_HIGHEST)
  tb = qp.shape[1]
  causal = jnp.arange(tb)[None, :] <= jnp.arange(tb)[:, None]
  return jnp.where(causal, scores.reshape(b, n, tb, tb), -jnp.inf)


@functools.partial(jax.jit, static_argnames=("last_q",))
def head_estimates(
    q: Float[Array, "B T N D"],
    k: Float[Array, "B T K D"],
    last_q: int = VS_LAST_Q,
) -> HeadEstimates:
  """The Vertical-Slash and Block-Sparse rankings of every head.

  All heads and batch rows at once (peak memory [B, N, last_q, T] for the
  Vertical-Slash probabilities and [B, N, Tb, Tb] for the block scores).

  Args:
    q: [B, T, N, D] queries (RoPE applied).
    k: [B, T, K, D] keys, N % K == 0.
    last_q: queries of the Vertical-Slash estimate.

  Returns:
    HeadEstimates.
  """
  vertical, slash = vertical_slash_scores(q, k, last_q)
  return HeadEstimates(
      vertical_rank=_ranks(vertical),
      slash_rank=_ranks(slash),
      block_rank=_ranks(block_scores(q, k)),
  )
