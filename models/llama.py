"""The functional model API: `forward`, `forward_jit` and `CausalLM`.

`forward` applies the Flax `Decoder` (models/decoder.py) to a plain params
pytree (`Decoder.apply`); `CausalLM` bundles config, params, the attention
callable and, for a multi-device run, a `Partitioning` (models/sharded.py
builds one from a MeshConfig).
"""

import dataclasses
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float, Int

from minference_jax.types import AttentionFn, check_attention_fits
from models import layers
from models.config import ModelConfig
from models.decoder import Decoder, KVCache, to_linen_params
from models.partitioning import Partitioning
from models.weights import Params

LogitsFor = str | Sequence[int] | jax.Array


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
    partitioning: Partitioning | None = None,
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
    partitioning: mesh + logical rules for a sharded run (params already
      placed by them, e.g. by models.sharded.shard_model); None on one
      device.

  Returns:
    (logits, cache) with the cache advanced by T (None if none was given).

  Raises:
    ValueError: for inconsistent shapes or options.
  """
  module = Decoder(config, attention, chunk_size, partitioning)
  return module.apply({"params": to_linen_params(params)}, tokens, positions,
                      cache, logits_idx, q_offset=q_offset,
                      logits_for=logits_for, rope_seq_len=rope_seq_len)


_STATIC = ("config", "attention", "q_offset", "logits_for", "chunk_size",
           "rope_seq_len", "partitioning")
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
    chunk_size: tokens per chunk for norms/projections/MLP (None: off);
      per sequence shard on a mesh.
    jit: run the jitted forward (static args: config, attention, options).
    partitioning: mesh + logical rules of a sharded model (None: one
      device); set by models.sharded.shard_model together with sharded
      params and the Ulysses attention wrapper.
  """

  config: ModelConfig
  params: Params
  attention: AttentionFn = layers.DenseAttention()
  chunk_size: int | None = None
  jit: bool = True
  partitioning: Partitioning | None = None

  def __post_init__(self):
    # The attention must serve this model (e.g. a pattern config of its
    # layer and head counts): checked here, before any work.
    check_attention_fits(self.attention, num_layers=self.config.num_layers,
                         num_heads=self.config.num_heads)

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
      ValueError: for a non-[B, T] tokens array, token ids outside the
        vocabulary, or bad options.
      TypeError: for non-integer tokens.
    """
    tokens = jnp.asarray(tokens)
    if tokens.ndim != 2:
      raise ValueError(f"tokens must be [B, T], got shape {tokens.shape}")
    if not jnp.issubdtype(tokens.dtype, jnp.integer):
      raise TypeError(f"tokens must be integers, got {tokens.dtype}")
    if not isinstance(tokens, jax.core.Tracer) and tokens.size:
      # An out-of-range id would be clamped by the embedding gather.
      ids = np.asarray(tokens)
      lo, hi = int(ids.min()), int(ids.max())
      if lo < 0 or hi >= self.config.vocab_size:
        raise ValueError(
            f"tokens must be ids in [0, {self.config.vocab_size}) (the"
            f" vocabulary), got ids in [{lo}, {hi}]")
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
              rope_seq_len=rope_seq_len, partitioning=self.partitioning)

  def init_cache(
      self, batch: int, max_len: int, dtype: Any = None
  ) -> KVCache:
    """A preallocated cache (default dtype: the embedding's), sharded by
    the rules on a mesh."""
    dtype = dtype or self.params["embed"].dtype
    return KVCache.init(self.config, batch, max_len, dtype,
                        self.partitioning)
