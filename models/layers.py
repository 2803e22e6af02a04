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

# Default tokens per chunk of the norms, projections and MLP (`seq_chunked`;
# `CausalLM.chunk_size`), a proposal until a GPU sweep sets it
# (configs/experiments/prefill_mlp_chunks.yaml). The chunk bounds the MLP's
# [chunk, I] temporaries: gate, up and their product, three [chunk, I]
# arrays in the activation dtype, 2.6 GiB at 32768 x 14336 in bf16 (the
# LLaMA-3-8B MLP), against 20 GiB of q, k, v and o for one layer at 1M tokens.
# Each chunk's matmuls ([chunk, 4096] x [4096, 14336]) are large enough to
# keep a GPU's tensor cores busy, so larger chunks buy little speed for
# their memory, and smaller ones add loop steps (each re-reads the layer's
# MLP weights, 0.3 GiB for the 8B) and shrink the matmuls.
DEFAULT_CHUNK_SIZE = 32768


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
    fn: Callable[..., Any],
    chunk: int | None,
    *xs: jax.Array,
    shards: int = 1,
    in_place: bool = False,
):
  """Applies a per-token fn over the sequence axis (axis 1) in chunks.

  Chunks run one after another in a `lax.fori_loop` that slices its inputs
  (`dynamic_slice`) and writes each chunk's result into the output buffer
  (`dynamic_update_slice`), so only one chunk's intermediates (e.g. the
  [B, chunk, I] MLP hidden) are live at a time and nothing is padded,
  split or merged: the only full-size buffer added is the output. A length
  that is not a multiple of the chunk ends with one shorter chunk (fn is
  traced for both sizes). The result equals fn(*xs) for any fn that treats
  tokens independently.

  With `in_place` the output is written over xs[0] (fn must return one
  array shaped and typed like its first argument, e.g. a residual update
  x + f(x, o)): the loop carries xs[0]'s buffer, which XLA updates in place
  when the caller donates it or no longer needs it, so no full-size buffer
  is added at all.

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
    in_place: write the result over xs[0] (see above).

  Returns:
    fn's output for all T tokens.

  Raises:
    ValueError: for a non-positive chunk, T not a multiple of shards, or an
      in-place fn whose output is not shaped like its first input.
  """
  b, t = xs[0].shape[:2]
  if t % shards:
    raise ValueError(f"sequence length {t} is not a multiple of the "
                     f"{shards} sequence shards")
  if chunk is not None and chunk <= 0:
    raise ValueError(f"chunk must be positive, got {chunk}")
  local = t // shards
  if chunk is None or local <= chunk:
    return fn(*xs)
  full, rest = divmod(local, chunk)

  def view(a: jax.Array) -> jax.Array:  # [B, T, ...] -> [B, P, L, ...]
    return a.reshape(b, shards, local, *a.shape[2:])

  def take(a: jax.Array, start, size: int) -> jax.Array:
    # rows [start, start + size) of every shard, as [B, P * size, ...]
    part = jax.lax.dynamic_slice_in_dim(a, start, size, axis=2)
    return part.reshape(b, shards * size, *a.shape[3:])

  def put(buf: jax.Array, part: jax.Array, start, size: int) -> jax.Array:
    part = part.reshape(b, shards, size, *part.shape[2:])
    return jax.lax.dynamic_update_slice_in_dim(buf, part, start, axis=2)

  views = tuple(view(a) for a in xs)
  if in_place:
    first, others = views[0], views[1:]
    want = jax.ShapeDtypeStruct((b, shards * chunk, *xs[0].shape[2:]),
                                xs[0].dtype)
    got = jax.eval_shape(
        lambda: fn(take(first, 0, chunk),
                   *(take(v, 0, chunk) for v in others)))
    if not isinstance(got, jax.ShapeDtypeStruct) or (
        got.shape, got.dtype) != (want.shape, want.dtype):
      raise ValueError(f"in_place needs fn to return one array shaped like "
                       f"its first input {want.shape} {want.dtype}, got "
                       f"{got}")

    def run(buf, start, size):
      out = fn(take(buf, start, size), *(take(v, start, size)
                                         for v in others))
      return put(buf, out, start, size)

    buf = jax.lax.fori_loop(0, full, lambda j, buf: run(buf, j * chunk,
                                                        chunk), first)
    if rest:
      buf = run(buf, full * chunk, rest)
    return buf.reshape(xs[0].shape)

  def run_all(bufs, start, size):
    out = fn(*(take(v, start, size) for v in views))
    return jax.tree.map(lambda buf, o: put(buf, o, start, size), bufs, out)

  shapes = jax.eval_shape(lambda: fn(*(take(v, 0, chunk) for v in views)))
  bufs = jax.tree.map(
      lambda s: jnp.zeros((b, shards, local, *s.shape[2:]), s.dtype), shapes)
  bufs = jax.lax.fori_loop(0, full, lambda j, bufs: run_all(bufs, j * chunk,
                                                            chunk), bufs)
  if rest:
    bufs = run_all(bufs, full * chunk, rest)
  return jax.tree.map(lambda a: a.reshape(b, t, *a.shape[3:]), bufs)


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
