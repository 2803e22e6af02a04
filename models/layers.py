"""Decoder blocks: RMSNorm, SwiGLU MLP, sequence chunking, dense attention."""

import dataclasses
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
from beartype import beartype
from jaxtyping import Array, Float, Int, jaxtyped

from minference_jax.types import DEFAULT_MASK_VALUE

# A layer's parameters: {"wq": [H, N*D], ...} (see models/weights.py).
LayerParams = dict[str, jax.Array]


@jaxtyped(typechecker=beartype)
def rms_norm(
    x: Float[Array, "*B H"], weight: Float[Array, " H"], eps: float
) -> Float[Array, "*B H"]:
  """RMSNorm in float32, cast back to x's dtype, then scaled (as HF LLaMA).

  Args:
    x: [..., H] activations.
    weight: [H] gain.
    eps: added to the mean square.

  Returns:
    [..., H] normalised x in x's dtype.
  """
  xf = x.astype(jnp.float32)
  var = jnp.mean(xf * xf, axis=-1, keepdims=True)  # [..., 1]
  normed = (xf * jax.lax.rsqrt(var + eps)).astype(x.dtype)
  return (weight * normed).astype(x.dtype)


def linear(
    x: jax.Array, w: jax.Array, b: jax.Array | None = None
) -> jax.Array:
  """x @ w (+ b) with float32 accumulation, result in x's dtype.

  Args:
    x: [..., I] inputs.
    w: [I, O] weight (already transposed from HF's [O, I]).
    b: optional [O] bias.
  """
  y = jnp.einsum("...i,io->...o", x, w.astype(x.dtype),
                 preferred_element_type=jnp.float32)
  if b is not None:
    y = y + b.astype(jnp.float32)
  return y.astype(x.dtype)


def swiglu_mlp(
    x: jax.Array,
    p: LayerParams,
    constrain_hidden: Callable[[jax.Array], jax.Array] | None = None,
) -> jax.Array:
  """down(silu(gate(x)) * up(x)); optional biases b_gate/b_up/b_down.

  Args:
    x: [..., H] normalised activations.
    p: the layer's params with w_gate/w_up [H, I] and w_down [I, H].
    constrain_hidden: applied to gate and up ([..., I]), e.g. a sharding
      constraint.
  """
  constrain_hidden = constrain_hidden or (lambda a: a)
  gate = constrain_hidden(linear(x, p["w_gate"], p.get("b_gate")))
  up = constrain_hidden(linear(x, p["w_up"], p.get("b_up")))
  hidden = (jax.nn.silu(gate.astype(jnp.float32)) * up.astype(jnp.float32))
  return linear(hidden.astype(x.dtype), p["w_down"], p.get("b_down"))


def seq_chunked(
    fn: Callable[..., Any], chunk: int | None, *xs: jax.Array, shards: int = 1
):
  """Applies a per-token fn over the sequence axis (axis 1) in chunks.

  Chunks run one after another (`lax.map`), so only one chunk's
  intermediates (e.g. the [B, chunk, I] MLP hidden) are live at a time. The
  result equals fn(*xs) for any fn that treats tokens independently.

  With `shards` > 1 the sequence is split into that many contiguous shards
  (the devices of a sequence-sharded mesh) and step j processes chunk j of
  every shard at once, fn seeing [B, shards * chunk, ...]: each device then
  works on its own tokens and nothing moves between devices.

  Args:
    fn: maps arrays [B, c, ...] to an array or a tuple/pytree of arrays
      [B, c, ...].
    chunk: tokens per chunk (per shard); None (or >= T / shards) applies fn
      once.
    *xs: arrays sharing [B, T] as leading dims.
    shards: contiguous sequence shards; T must be a multiple.

  Returns:
    fn's output for all T tokens.

  Raises:
    ValueError: for a non-positive chunk or T not a multiple of shards.
  """
  t = xs[0].shape[1]
  if t % shards:
    raise ValueError(f"sequence length {t} is not a multiple of the "
                     f"{shards} sequence shards")
  local = t // shards
  if chunk is None or local <= chunk:
    return fn(*xs)
  if chunk <= 0:
    raise ValueError(f"chunk must be positive, got {chunk}")
  n = -(-local // chunk)
  pad = n * chunk - local

  def split(a: jax.Array) -> jax.Array:
    a = a.reshape(a.shape[0], shards, local, *a.shape[2:])  # [B, P, L, ...]
    if pad:
      widths = [(0, 0)] * a.ndim
      widths[2] = (0, pad)
      a = jnp.pad(a, widths)
    a = a.reshape(a.shape[0], shards, n, chunk, *a.shape[3:])
    return jnp.moveaxis(a, 2, 0)  # [n, B, P, c, ...]

  def step(args):
    # [B, P, c, ...] -> [B, P * c, ...]: each shard's chunk stays in place.
    flat = [a.reshape(a.shape[0], shards * chunk, *a.shape[3:]) for a in args]
    return fn(*flat)

  def merge(a: jax.Array) -> jax.Array:
    a = a.reshape(n, a.shape[1], shards, chunk, *a.shape[3:])
    a = jnp.moveaxis(a, 0, 2)  # [B, P, n, c, ...]
    a = a.reshape(a.shape[0], shards, n * chunk, *a.shape[4:])[:, :, :local]
    return a.reshape(a.shape[0], t, *a.shape[3:])

  out = jax.lax.map(step, tuple(split(a) for a in xs))
  return jax.tree.map(merge, out)


@jaxtyped(typechecker=beartype)
def masked_gqa_attention(
    q: Float[Array, "B T N D"],
    k: Float[Array, "B S K D"],
    v: Float[Array, "B S K D"],
    q_positions: Int[Array, "B T"] | Int[Array, " T"],
    kv_len: Int[Array, ""] | int,
) -> Float[Array, "B T N D"]:
  """Dense causal GQA attention with traced positions (float32 softmax).

  Query t may read key j iff j <= q_positions[t] and j < kv_len. Used for
  decode steps over a preallocated KV cache whose fill is traced, and as
  the default prefill attention.

  Args:
    q: [B, T, N, D] queries; head n reads KV head n // (N // K).
    k, v: [B, S, K, D] keys/values (S may exceed the filled length).
    q_positions: [B, T] or [T] absolute positions of the queries.
    kv_len: number of valid keys (a traced scalar or int).

  Returns:
    [B, T, N, D] in q's dtype.
  """
  b, t, n, d = q.shape
  kh = k.shape[2]
  if n % kh:
    raise ValueError(f"query heads {n} not a multiple of kv heads {kh}")
  qg = q.reshape(b, t, kh, n // kh, d)  # [B, T, K, G, D]
  scores = jnp.einsum("btkgd,bskd->bkgts", qg, k,
                      preferred_element_type=jnp.float32)
  scores = scores * (d**-0.5)  # [B, K, G, T, S]
  cols = jnp.arange(k.shape[1])  # [S]
  qpos = jnp.broadcast_to(q_positions, (b, t))  # [B, T]
  allowed = (cols[None, None, :] <= qpos[:, :, None]) & (
      cols[None, None, :] < kv_len)  # [B, T, S]
  scores = jnp.where(allowed[:, None, None], scores, DEFAULT_MASK_VALUE)
  probs = jax.nn.softmax(scores, axis=-1)
  out = jnp.einsum("bkgts,bskd->btkgd", probs.astype(v.dtype), v,
                   preferred_element_type=jnp.float32)
  return out.reshape(b, t, n, d).astype(q.dtype)


@dataclasses.dataclass(frozen=True)
class DenseAttention:
  """Plain XLA causal attention obeying the AttentionFn protocol.

  The model's default when no attention callable is given. Materialises the
  [B, N, T, S] scores: for tests and short prompts only.
  """

  def for_heads(self, start: int, stop: int) -> "DenseAttention":
    """The attention of query heads [start, stop): the same for every head
    (the head-slicing hook of minference_jax.parallel)."""
    del start, stop
    return self

  def __call__(
      self,
      q: Float[Array, "B T N D"],
      k: Float[Array, "B S K D"],
      v: Float[Array, "B S K D"],
      *,
      layer_idx: int,
      q_offset: int = 0,
  ) -> Float[Array, "B T N D"]:
    del layer_idx  # the same for every layer
    t = q.shape[1]
    positions = q_offset + jnp.arange(t)  # [T]
    return masked_gqa_attention(q, k, v, positions, k.shape[1])
