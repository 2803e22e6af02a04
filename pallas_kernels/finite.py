"""Non-finite inputs give non-finite outputs: the rule every op enforces.

Dense attention (`jax.nn.dot_product_attention`) turns a NaN or inf in a
query row, or in a key or value that row reads, into a non-finite output
row. The kernels do not: their online softmax guards rows without keys
(`l == 0`) so that masked rows stay finite, and that guard also catches a
NaN sum (NaN > 0 is false), giving exact zeros; GPU `max` instructions may
drop NaNs besides. So the entry points do not rely on NaN propagating
through a kernel: they mark the rows explicitly after any implementation
ran.

The rule (causal, per output row b, t, n; query head n reads KV head
n // G; query t sits at position q_offset + t):
  out[b, t, n, :] is NaN  if  q[b, t, n, :] holds a NaN or inf,
                          or  k[b, j, n // G, :] or v[b, j, n // G, :]
                              does for some key j <= q_offset + t.
These are the rows whose dense causal attention reads a non-finite value;
a sparse pattern marks the same rows whether or not its key set holds that
key, so sparse output is non-finite wherever dense output is. Every other
row is exactly what the implementation gives with each non-finite entry
replaced by 0 (entries that row never reads), hence finite. To keep them
so, the implementations get v with its non-finite entries zeroed: a masked
key's weight is 0, and 0 x NaN would otherwise leak a NaN value into rows
of the same tile (or, in XLA's dense attention, every row) that do not
read it. Masked logits are selected away, so q and k need no such step.

Cost: one reduction over q, k and v each and one select over v (reads of
the inputs, which XLA fuses and shares between the ops of a layer), and
one select over the output; no change to any kernel.
"""

import functools

import jax
import jax.numpy as jnp
from jaxtyping import Array, Bool, Float


def non_finite_rows(
    q: Float[Array, "B T N D"],
    k: Float[Array, "B S K D"],
    v: Float[Array, "B S K D"],
    *,
    q_offset: int = 0,
) -> Bool[Array, "B T N"]:
  """The output rows the rule (module docstring) makes NaN.

  Args:
    q: [B, T, N, D] queries.
    k: [B, S, K, D] keys, N % K == 0.
    v: [B, S, K, D] values.
    q_offset: static position of q[:, 0].

  Returns:
    [B, T, N] bool: True where the row's query, or a key or value at a
    position <= its own, is not finite.
  """
  s, kv_heads = k.shape[1], k.shape[2]
  g = q.shape[2] // kv_heads
  bad_q = ~jnp.all(jnp.isfinite(q), axis=-1)  # [B, T, N]
  bad_kv = ~(jnp.all(jnp.isfinite(k), axis=-1)
             & jnp.all(jnp.isfinite(v), axis=-1))  # [B, S, K]
  first_bad = jnp.min(
      jnp.where(bad_kv, jnp.arange(s)[None, :, None], s), axis=1
  )  # [B, K]: the first non-finite key position (S: none)
  pos = q_offset + jnp.arange(q.shape[1])  # [T]
  reads_bad = pos[None, :, None] >= first_bad[:, None, :]  # [B, T, K]
  return bad_q | jnp.repeat(reads_bad, g, axis=2)  # [B, T, N]


@jax.jit
def mark_rows(out: Float[Array, "B T N D"],
              rows: Bool[Array, "B T N"]) -> Float[Array, "B T N D"]:
  """`out` with the flagged rows set to NaN (the others unchanged)."""
  return jnp.where(rows[..., None], jnp.asarray(jnp.nan, out.dtype), out)


@functools.partial(jax.jit, static_argnames=("q_offset",))
def guard_inputs(
    q: Float[Array, "B T N D"],
    k: Float[Array, "B S K D"],
    v: Float[Array, "B S K D"],
    *,
    q_offset: int = 0,
) -> tuple[Bool[Array, "B T N"], Float[Array, "B S K D"]]:
  """The rows the rule flags and v with its non-finite entries zeroed (the
  value an implementation is given; bit-identical for finite v).

  Args:
    q, k, v: an op's inputs ([B, T, N, D], [B, S, K, D] twice).
    q_offset: static position of q[:, 0].

  Returns:
    ([B, T, N] bool rows, [B, S, K, D] v).
  """
  rows = non_finite_rows(q, k, v, q_offset=q_offset)
  return rows, jnp.where(jnp.isfinite(v), v, jnp.zeros((), v.dtype))
