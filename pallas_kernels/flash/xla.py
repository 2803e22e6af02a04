"""Causal dense attention in plain JAX: chunked, flash-style (any device)."""

import functools

import jax
import jax.numpy as jnp
from beartype import beartype
from jaxtyping import Array, Float, jaxtyped

from pallas_kernels.gathered_xla import HIGHEST, MASK_VALUE, check_qkv


@functools.partial(
    jax.jit, static_argnames=("q_offset", "block_q", "block_k", "with_out")
)
def _fwd(q, k, v, *, q_offset, block_q, block_k, with_out):
  b, t, n, d = q.shape
  s_len, kv_heads = k.shape[1], k.shape[2]
  g = n // kv_heads
  nq, nk = -(-t // block_q), -(-s_len // block_k)
  qf = jnp.pad(q, ((0, 0), (0, nq * block_q - t), (0, 0), (0, 0)))
  qf = qf.reshape(b, nq, block_q, kv_heads, g, d)
  qf = jnp.moveaxis(qf, 1, 0)  # [Cq, B, bq, K, G, D]
  kf = jnp.pad(k, ((0, 0), (0, nk * block_k - s_len), (0, 0), (0, 0)))
  vf = jnp.pad(v, ((0, 0), (0, nk * block_k - s_len), (0, 0), (0, 0)))
  scale = d**-0.5

  def one_q_chunk(xs):
    qc, ci = xs  # [B, bq, K, G, D], []
    qc = qc.astype(jnp.float32) * scale
    q_pos = q_offset + ci * block_q + jnp.arange(block_q)  # [bq]
    # Only key chunks that hold a key <= the chunk's last row are visited.
    last = jnp.minimum(q_pos[-1], s_len - 1)
    n_visit = last // block_k + 1

    def body(j, carry):
      m, l, acc = carry  # [B, K, G, bq], [B, K, G, bq], [B, K, G, bq, D]
      kc = jax.lax.dynamic_slice_in_dim(kf, j * block_k, block_k, 1)
      k_pos = j * block_k + jnp.arange(block_k)  # [bk]
      logits = jnp.einsum(
          "bqkgd,bskd->bkgqs", qc, kc.astype(jnp.float32),
          precision=HIGHEST,
      )  # [B, K, G, bq, bk]
      ok = (k_pos[None, :] <= q_pos[:, None]) & (k_pos[None, :] < s_len)
      logits = jnp.where(ok, logits, MASK_VALUE)
      m_new = jnp.maximum(m, jnp.max(logits, axis=-1))
      p = jnp.where(ok, jnp.exp(logits - m_new[..., None]), 0.0)
      corr = jnp.exp(m - m_new)
      l = l * corr + jnp.sum(p, axis=-1)
      if with_out:
        vc = jax.lax.dynamic_slice_in_dim(vf, j * block_k, block_k, 1)
        pv = jnp.einsum(
            "bkgqs,bskd->bkgqd", p, vc.astype(jnp.float32),
            precision=HIGHEST,
        )
        acc = acc * corr[..., None] + pv
      return m_new, l, acc

    shape = (b, kv_heads, g, block_q)
    init = (
        jnp.full(shape, MASK_VALUE, jnp.float32),
        jnp.zeros(shape, jnp.float32),
        jnp.zeros(shape + ((d,) if with_out else (0,)), jnp.float32),
    )
    m, l, acc = jax.lax.fori_loop(0, n_visit, body, init)
    has = l != 0  # rows without keys; a NaN sum (non-finite input) stays
    lse = jnp.where(has, m + jnp.log(jnp.where(has, l, 1.0)), -jnp.inf)
    if with_out:
      acc = jnp.where(
          has[..., None], acc / jnp.where(has, l, 1.0)[..., None], 0.0
      )
    return acc, lse

  acc, lse = jax.lax.map(
      one_q_chunk, (qf, jnp.arange(nq, dtype=jnp.int32))
  )  # [Cq, B, K, G, bq, (D)], [Cq, B, K, G, bq]
  lse = jnp.moveaxis(lse, 0, 3).reshape(b, n, nq * block_q)[:, :, :t]
  lse = jnp.swapaxes(lse, 1, 2)  # [B, T, N]
  if not with_out:
    return None, lse
  out = jnp.moveaxis(acc, 0, 3).reshape(b, n, nq * block_q, d)[:, :, :t]
  return jnp.swapaxes(out, 1, 2).astype(q.dtype), lse


def _dense(q, k, v, q_offset, block_q, block_k):
  check_qkv(q, k, k if v is None else v, prefill=False)
  if isinstance(q_offset, bool) or not isinstance(q_offset, int):
    raise TypeError(f"q_offset must be a static int, got {q_offset!r}")
  if q_offset < 0:
    raise ValueError(f"q_offset must be >= 0, got {q_offset}")
  for name, val in (("block_q", block_q), ("block_k", block_k)):
    if val < 1:
      raise ValueError(f"{name} must be >= 1, got {val}")
  return _fwd(
      q, k, k if v is None else v, q_offset=q_offset,
      block_q=min(block_q, q.shape[1]), block_k=min(block_k, k.shape[1]),
      with_out=v is not None,
  )


@jaxtyped(typechecker=beartype)
def flash_attention_xla(
    q: Float[Array, "B T N D"],
    k: Float[Array, "B S K D"],
    v: Float[Array, "B S K D"],
    *,
    q_offset: int = 0,
    block_q: int = 256,
    block_k: int = 512,
) -> Float[Array, "B T N D"]:
  """Causal dense attention with an online softmax over key chunks.

  FlashAttention's tiling (Dao et al., 2022; Dao, 2023) in plain JAX: query
  t sits at position q_offset + t and reads keys j <= q_offset + t. Query
  chunks are processed one after another; each visits only the key chunks
  left of its last row, so the work is the causal half and memory is
  O(block_q x block_k) per head. Forward only (the key loop has a dynamic
  trip count).

  Args:
    q: [B, T, N, D] queries.
    k: [B, S, K, D] keys; query head n reads KV head n // (N // K).
    v: [B, S, K, D] values.
    q_offset: static absolute position of q[:, 0] (T < S for decode and
      chunked prefill).
    block_q: query rows per chunk.
    block_k: keys per inner step.

  Returns:
    [B, T, N, D] in q's dtype.

  Raises:
    ValueError: on inconsistent shapes or a negative q_offset.
  """
  return _dense(q, k, v, q_offset, block_q, block_k)[0]


@jaxtyped(typechecker=beartype)
def flash_logsumexp_xla(
    q: Float[Array, "B T N D"],
    k: Float[Array, "B S K D"],
    *,
    q_offset: int = 0,
    block_q: int = 256,
    block_k: int = 512,
) -> Float[Array, "B T N"]:
  """Log-sum-exp of the causal scaled logits per row (chunked, f32).

  Args:
    q: [B, T, N, D] queries.
    k: [B, S, K, D] keys.
    q_offset: static absolute position of q[:, 0].
    block_q: query rows per chunk.
    block_k: keys per inner step.

  Returns:
    [B, T, N] f32.
  """
  return _dense(q, k, None, q_offset, block_q, block_k)[1]
