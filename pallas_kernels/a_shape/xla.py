"""A-shape attention in plain JAX (gathered sink keys and local window)."""

import dataclasses

import jax.numpy as jnp
from beartype import beartype
from jaxtyping import Array, Float, jaxtyped

from pallas_kernels import gathered_xla
from pallas_kernels.layouts import AShapeLayout

BLOCK = 64  # query rows per gathered block


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class Config:
  """Static bounds of the per-head sizes: they set how many keys a row
  block gathers (max_init + max_local + 63).

  Attributes:
    max_init: upper bound of `layout.n_init`; None reads it from the layout,
      which must then be concrete (not traced, e.g. under jit).
    max_local: upper bound of `layout.n_local` (same default).
  """

  max_init: int | None = None
  max_local: int | None = None


def _keyset(bs, s_len, max_init, max_local):
  """Row block m reads the sinks [0, max_init) and a window of
  max_local + bs - 1 keys ending at its last row; the masks keep exactly
  j < n_init or t - j < n_local (j <= t), each key once."""
  width = max_local + bs - 1  # local keys any row of the block can reach

  def keyset(m, n_init, n_local):
    row = (m * bs + jnp.arange(bs))[:, None]  # [bs, 1]
    sink = jnp.arange(max_init)[None, :]  # [1, I]
    # Sinks inside the row's local window are counted by the local part.
    sink_ok = (sink < n_init) & (sink <= row) & (row - sink >= n_local)
    local = (m * bs + bs - width + jnp.arange(width))[None, :]  # [1, W]
    local_ok = (
        (local >= 0) & (local <= row) & (row - local < n_local)
        & (local < s_len)
    )
    pos = jnp.concatenate([sink[0], local[0]])  # [I + W]
    return pos, jnp.concatenate([sink_ok, local_ok], axis=1)

  return keyset


def _gathered(q, k, v, layout: AShapeLayout, max_init, max_local):
  gathered_xla.check_qkv(q, k, k if v is None else v, prefill=True)
  t, n = q.shape[1], q.shape[2]
  if layout.n_init.shape != (n,) or layout.n_local.shape != (n,):
    raise ValueError(
        f"AShapeLayout n_init{layout.n_init.shape}/n_local"
        f"{layout.n_local.shape} must have shape [N] = ({n},)"
    )
  if max_init is None:
    max_init = gathered_xla.static_max(layout.n_init, "max_init")
  if max_local is None:
    max_local = gathered_xla.static_max(layout.n_local, "max_local")
  max_init, max_local = min(int(max_init), t), min(int(max_local), t)
  heads = (layout.n_init.astype(jnp.int32),
           layout.n_local.astype(jnp.int32))
  return gathered_xla.gathered_attention(
      q, k, v, (), heads, make_keyset=_keyset,
      params=(BLOCK, t, max_init, max_local),
      n_keys=max_init + max_local + BLOCK - 1,
  )


@jaxtyped(typechecker=beartype)
def a_shape_attention_xla(
    q: Float[Array, "B T N D"],
    k: Float[Array, "B T K D"],
    v: Float[Array, "B T K D"],
    layout: AShapeLayout,
    *,
    max_init: int | None = None,
    max_local: int | None = None,
) -> Float[Array, "B T N D"]:
  """A-shape attention: sink keys [0, n_init) plus a causal local window.

  The A-shape pattern of MInference (Jiang et al., 2024), StreamingLLM's
  attention sinks plus a sliding window (Xiao et al., 2024). Per row block,
  the sink keys [0, max_init) and a window of max_local + 63 keys ending at
  the block's last row are gathered; masks keep exactly j < n_init[n] or
  t - j < n_local[n] (j <= t), each key once.

  Args:
    q: [B, T, N, D] queries.
    k: [B, T, K, D] keys (full prefill: S == T).
    v: [B, T, K, D] values.
    layout: AShapeLayout with n_init, n_local of shape [N].
    max_init: static upper bound of n_init (default: read from the layout,
      which must then be concrete, i.e. not traced).
    max_local: static upper bound of n_local (same default).

  Returns:
    [B, T, N, D] in q's dtype; inactive heads (0/0) are 0.

  Raises:
    ValueError: on inconsistent shapes, or a traced layout without bounds.
  """
  return _gathered(q, k, v, layout, max_init, max_local)[0]


@jaxtyped(typechecker=beartype)
def a_shape_logsumexp_xla(
    q: Float[Array, "B T N D"],
    k: Float[Array, "B T K D"],
    layout: AShapeLayout,
    *,
    max_init: int | None = None,
    max_local: int | None = None,
) -> Float[Array, "B T N"]:
  """Log-sum-exp of the scaled logits over the A-shape key set, in f32.

  Args:
    q: [B, T, N, D] queries.
    k: [B, T, K, D] keys.
    layout: AShapeLayout with n_init, n_local of shape [N].
    max_init: static bound, as in `a_shape_attention_xla`.
    max_local: static bound, as in `a_shape_attention_xla`.

  Returns:
    [B, T, N] f32; -inf for rows without keys.
  """
  return _gathered(q, k, None, layout, max_init, max_local)[1]
