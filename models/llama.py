"""The decoder forward pass (LLaMA/Yi/Qwen2/Phi-3/GLM) with pluggable attention.

All supported architectures share one pre-norm decoder: x += o(attn(rope(
qkv(norm(x))))); x += mlp(norm(x)). Differences live in the config (biases,
rope variant and layout) and in the weight-name tables (models/weights.py).

Pure functions over a params pytree, wrapped by the `CausalLM` callable.
Layers run in a Python loop so each attention call gets a static
`layer_idx`. K/V reach the attention callable un-repeated ([B, S, K, D]).
"""

import dataclasses
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float, Int

from minference_jax.types import AttentionFn
from models import layers
from models.config import ModelConfig
from models.rope import apply_rope, rope_cos_sin
from models.weights import Params

LogitsFor = str | Sequence[int] | jax.Array


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class KVCache:
  """A preallocated KV cache (a pytree; safe to pass through jit).

  Attributes:
    k, v: per layer [B, S_max, K, D] buffers.
    length: int32 scalar, the number of filled positions (same for all
      rows of the batch).
  """

  k: tuple[jax.Array, ...]
  v: tuple[jax.Array, ...]
  length: jax.Array

  @classmethod
  def init(
      cls,
      config: ModelConfig,
      batch: int,
      max_len: int,
      dtype: Any = jnp.bfloat16,
  ) -> "KVCache":
    """An empty cache for `max_len` positions."""
    shape = (batch, max_len, config.num_kv_heads, config.head_dim)
    zeros = tuple(jnp.zeros(shape, dtype) for _ in range(config.num_layers))
    zeros_v = tuple(jnp.zeros(shape, dtype) for _ in range(config.num_layers))
    return cls(k=zeros, v=zeros_v, length=jnp.zeros((), jnp.int32))

  @property
  def max_len(self) -> int:
    return self.k[0].shape[1]


def _rope_tables(config: ModelConfig, positions: jax.Array, seq_len: int):
  rope = config.rope
  inv = rope.inv_freq(seq_len)  # [R/2] numpy float32 (static)
  return rope_cos_sin(positions, inv, rope.attention_scaling())


def _qkv(config: ModelConfig, p: layers.LayerParams, x, cos, sin):
  """norm -> q/k/v projections -> RoPE, for one chunk of tokens."""
  b, t, _ = x.shape
  h = layers.rms_norm(x, p["attn_norm"], config.rms_norm_eps)
  q = layers.linear(h, p["wq"], p.get("bq"))
  k = layers.linear(h, p["wk"], p.get("bk"))
  v = layers.linear(h, p["wv"], p.get("bv"))
  q = q.reshape(b, t, config.num_heads, config.head_dim)  # [B, T, N, D]
  k = k.reshape(b, t, config.num_kv_heads, config.head_dim)  # [B, T, K, D]
  v = v.reshape(b, t, config.num_kv_heads, config.head_dim)
  il = config.rope.interleaved
  q = apply_rope(q, cos, sin, interleaved=il)
  k = apply_rope(k, cos, sin, interleaved=il)
  return q, k, v


def _select_positions(x, logits_for, logits_idx):
  """x rows whose logits are wanted: [B, H] (last) or [B, M, H]."""
  if isinstance(logits_for, str):
    if logits_for == "last":
      return x[:, -1]
    if logits_for == "all":
      return x
    raise ValueError(f"logits_for must be 'last', 'all' or indices, got "
                     f"{logits_for!r}")
  return x[:, logits_idx]


def _logits(config: ModelConfig, params: Params, x):
  """Final norm + output projection in float32: [..., H] -> [..., V]."""
  h = layers.rms_norm(x, params["final_norm"], config.rms_norm_eps)
  if config.tie_word_embeddings:
    return jnp.einsum("...h,vh->...v", h, params["embed"].astype(h.dtype),
                      preferred_element_type=jnp.float32)
  return jnp.einsum("...h,hv->...v", h, params["lm_head"].astype(h.dtype),
                    preferred_element_type=jnp.float32)


def forward(
    params: Params,
    tokens: Int[Array, "B T"],
    positions: Int[Array, "B T"] | None = None,
    cache: KVCache | None = None,
    logits_idx: Int[Array, " M"] | None = None,
    *,
    config: ModelConfig,
    attention: AttentionFn,
    q_offset: int | None = 0,
    logits_for: str | None = "last",
    chunk_size: int | None = None,
    rope_seq_len: int | None = None,
) -> tuple[Float[Array, "..."], KVCache | None]:
  """The decoder forward pass (pure; jit with the keyword args static).

  Args:
    params: the params pytree (models/weights.py).
    tokens: [B, T] token ids.
    positions: [B, T] RoPE positions; default q_offset + arange(T) (or
      cache.length + arange(T) when q_offset is None).
    cache: None for a prefill without cache, or a preallocated KVCache.
    logits_idx: [M] token indices for logits when logits_for is None.
    config: the geometry.
    attention: the AttentionFn for prefill steps.
    q_offset: static absolute position of tokens[:, 0]. An int runs the
      attention callable (T == S prefill when 0; a chunked-prefill step
      over cache[:q_offset + T] otherwise) and writes K/V into the cache at
      q_offset. None (decode) reads the position from cache.length (traced)
      and runs dense attention over the cache buffer.
    logits_for: "last" -> [B, V]; "all" -> [B, T, V]; None -> logits at
      logits_idx, [B, M, V]. Float32.
    chunk_size: tokens per chunk for the norm/projection/MLP blocks (None:
      unchunked). Results are identical; peak memory is lower.
    rope_seq_len: sequence length that selects dynamic/longrope
      frequencies; default the total length (q_offset + T, or the cache
      capacity when decoding).

  Returns:
    (logits, cache) with the cache advanced by T (None if none was given).

  Raises:
    ValueError: for inconsistent shapes or options.
  """
  b, t = tokens.shape
  if q_offset is None and cache is None:
    raise ValueError("q_offset=None (decode) needs a KV cache")
  if cache is None and q_offset != 0:
    raise ValueError(f"q_offset={q_offset} without a cache: earlier keys are "
                     "unknown; pass the KVCache")
  if cache is not None:
    if cache.k[0].shape[0] != b:
      raise ValueError(f"cache batch {cache.k[0].shape[0]} != tokens batch {b}")
    if q_offset is not None and q_offset + t > cache.max_len:
      raise ValueError(f"q_offset + T = {q_offset + t} exceeds the cache "
                       f"capacity {cache.max_len}")
  start = cache.length if q_offset is None else q_offset
  if positions is None:
    positions = jnp.broadcast_to(start + jnp.arange(t, dtype=jnp.int32),
                                 (b, t))
  if rope_seq_len is None:
    rope_seq_len = cache.max_len if q_offset is None else q_offset + t
  cos, sin = _rope_tables(config, positions, rope_seq_len)  # [B, T, R/2]

  x = params["embed"][tokens]  # [B, T, H]
  new_k, new_v = [], []
  for i, p in enumerate(params["layers"]):
    with jax.named_scope(f"layer_{i}"):
      q, k, v = layers.seq_chunked(
          lambda xc, c, s, p=p: _qkv(config, p, xc, c, s), chunk_size, x,
          cos, sin)  # [B, T, N, D], [B, T, K, D], [B, T, K, D]
      if cache is None:
        o = attention(q, k, v, layer_idx=i, q_offset=0)
      else:
        ck = jax.lax.dynamic_update_slice(
            cache.k[i], k.astype(cache.k[i].dtype), (0, start, 0, 0))
        cv = jax.lax.dynamic_update_slice(
            cache.v[i], v.astype(cache.v[i].dtype), (0, start, 0, 0))
        new_k.append(ck)
        new_v.append(cv)
        if q_offset is None:
          slots = start + jnp.arange(t, dtype=jnp.int32)  # [T] cache rows
          o = layers.masked_gqa_attention(q, ck.astype(q.dtype),
                                          cv.astype(q.dtype), slots,
                                          start + t)
        elif q_offset == 0:
          o = attention(q, k, v, layer_idx=i, q_offset=0)
        else:
          kk = ck[:, :q_offset + t].astype(q.dtype)  # [B, S, K, D]
          vv = cv[:, :q_offset + t].astype(q.dtype)
          o = attention(q, kk, vv, layer_idx=i, q_offset=q_offset)
      o = o.reshape(b, t, config.q_dim)  # [B, T, N*D]

      def out_and_mlp(xc, oc, p=p):
        xc = xc + layers.linear(oc, p["wo"], p.get("bo"))
        hc = layers.rms_norm(xc, p["mlp_norm"], config.rms_norm_eps)
        return xc + layers.swiglu_mlp(hc, p)

      x = layers.seq_chunked(out_and_mlp, chunk_size, x, o)
  logits = _logits(config, params, _select_positions(x, logits_for,
                                                     logits_idx))
  if cache is None:
    return logits, None
  length = jnp.asarray(start + t, jnp.int32)
  return logits, KVCache(k=tuple(new_k), v=tuple(new_v), length=length)


_STATIC = ("config", "attention", "q_offset", "logits_for", "chunk_size",
           "rope_seq_len")
forward_jit = jax.jit(forward, static_argnames=_STATIC)


@dataclasses.dataclass(frozen=True, eq=False)
class CausalLM:
  """A causal LM: config + params + the attention callable.

  `model(tokens, positions=None, cache=None, logits_for="last")` returns
  (logits, cache). See `forward` for the arguments; `q_offset` and
  `rope_seq_len` are keyword options.

  Attributes:
    config: the geometry (ModelConfig).
    params: the params pytree (models/weights.py).
    attention: AttentionFn used for prefill (default: dense XLA
      attention); must be hashable when jit=True.
    chunk_size: tokens per chunk for norms/projections/MLP (None: off).
    jit: run the jitted forward (static args: config, attention, options).
  """

  config: ModelConfig
  params: Params
  attention: AttentionFn = layers.DenseAttention()
  chunk_size: int | None = None
  jit: bool = True

  def __call__(
      self,
      tokens: Int[Array, "B T"],
      positions: Int[Array, "B T"] | None = None,
      cache: KVCache | None = None,
      logits_for: LogitsFor = "last",
      *,
      q_offset: int | None = 0,
      rope_seq_len: int | None = None,
  ) -> tuple[Float[Array, "..."], KVCache | None]:
    """Runs the model; see `forward`.

    Raises:
      ValueError: for a non-[B, T] tokens array or bad options.
    """
    tokens = jnp.asarray(tokens)
    if tokens.ndim != 2:
      raise ValueError(f"tokens must be [B, T], got shape {tokens.shape}")
    if not jnp.issubdtype(tokens.dtype, jnp.integer):
      raise TypeError(f"tokens must be integers, got {tokens.dtype}")
    if positions is not None:
      positions = jnp.asarray(positions, jnp.int32)
      if positions.ndim == 1:
        positions = jnp.broadcast_to(positions, tokens.shape)
      if positions.shape != tokens.shape:
        raise ValueError(f"positions shape {positions.shape} != tokens shape "
                         f"{tokens.shape}")
    logits_idx = None
    static_for: str | None = None
    if isinstance(logits_for, str):
      static_for = logits_for
    else:
      logits_idx = jnp.asarray(np.asarray(logits_for), jnp.int32)
      if logits_idx.ndim != 1:
        raise ValueError(f"logits_for indices must be 1-D, got shape "
                         f"{logits_idx.shape}")
    fn = forward_jit if self.jit else forward
    return fn(self.params, tokens, positions, cache, logits_idx,
              config=self.config, attention=self.attention, q_offset=q_offset,
              logits_for=static_for, chunk_size=self.chunk_size,
              rope_seq_len=rope_seq_len)

  def init_cache(
      self, batch: int, max_len: int, dtype: Any = None
  ) -> KVCache:
    """A preallocated cache (default dtype: the embedding's)."""
    dtype = dtype or self.params["embed"].dtype
    return KVCache.init(self.config, batch, max_len, dtype)
