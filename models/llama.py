"""The functional model API: `forward`, `forward_jit`, `prefill`, `CausalLM`.

`forward` applies the Flax `Decoder` (models/decoder.py) to a plain params
pytree (`Decoder.apply`); `prefill` runs the same modules layer by layer,
one compiled step per distinct layer (models/layerwise.py); `CausalLM`
bundles config, params, the attention callable and, for a multi-device
run, a `Partitioning` (models/sharded.py builds one from a MeshConfig), and
picks between the two: decode steps and prompts shorter than
`layerwise_from` tokens run `forward` under one jit, longer prefills run
layer by layer.
"""

import dataclasses
import functools
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
from models.layerwise import LayerwisePrefill
from models.partitioning import Partitioning
from models.weights import Params

# Prompts of at least this many tokens are prefilled layer by layer by
# `CausalLM`. Below it one program of the whole model is the better trade:
# a layer's work is then small enough that the per-layer dispatches
# (embed, L layer steps, logits) are a visible share of it, and short
# prompts are the ones run many times at one shape (evaluations), which
# amortises the whole-model compile. Above it a layer's work dwarfs a
# dispatch, and the compile time of the unrolled model (growing with the
# depth) dominates a single long prompt.
LAYERWISE_FROM = 8192

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
# The cache is donated: its buffers are updated in place (one copy of the
# cache, not two); use the returned cache.
forward_jit = jax.jit(forward, static_argnames=_STATIC,
                      donate_argnames=("cache",))


def prefill(
    params: Params,
    tokens: Int[Array, "B T"],
    positions: Int[Array, "B T"] | None = None,
    cache: KVCache | None = None,
    logits_idx: Int[Array, " M"] | None = None,
    *,
    config: ModelConfig,
    attention: AttentionFn,
    q_offset: int = 0,
    logits_for: str | None = "last",
    chunk_size: int | None = None,
    rope_seq_len: int | None = None,
    partitioning: Partitioning | None = None,
) -> tuple[Float[Array, "..."], KVCache | None]:
  """`forward` for a prefill step, run layer by layer (models/layerwise.py).

  The arguments and results are `forward`'s; q_offset must be a static int
  (decode steps run `forward`). One program is compiled per distinct layer
  (same parameter shapes and attention call), not one of the unrolled
  model; a given cache is donated (use the returned one).

  Raises:
    ValueError: for inconsistent shapes or options.
  """
  run = LayerwisePrefill(config, attention, chunk_size, partitioning)
  return run(params, tokens, positions, cache, logits_idx, q_offset=q_offset,
             logits_for=logits_for, rope_seq_len=rope_seq_len)


def _inputs(tokens, positions, logits_for, vocab_size: int):
  """Checks and converts a call's tokens, positions and logits_for.

  Returns:
    (tokens [B, T], positions [B, T] int32 or None, logits_idx [M] or None,
    static logits_for or None).

  Raises:
    ValueError, TypeError: for malformed inputs.
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
    if lo < 0 or hi >= vocab_size:
      raise ValueError(
          f"tokens must be ids in [0, {vocab_size}) (the vocabulary), got"
          f" ids in [{lo}, {hi}]")
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
  return tokens, positions, logits_idx, static_for


@dataclasses.dataclass(frozen=True, eq=False)
class CausalLM:
  """A causal LM: config + params + the attention callable.

  `model(tokens, positions=None, cache=None, logits_for="last")` returns
  (logits, cache). See `forward` for the arguments; `q_offset` and
  `rope_seq_len` are keyword options. A given cache is donated: use the
  returned one. Prefill calls (q_offset an int) of at least `layerwise_from`
  tokens run layer by layer (`model.prefill`, one compiled step per
  distinct layer); decode steps and shorter prompts run `forward` under one
  jit. Both give the same results.

  Attributes:
    config: the geometry (ModelConfig).
    params: the params pytree (models/weights.py).
    attention: AttentionFn used for prefill (default: dense XLA
      attention); must be hashable when jit=True.
    chunk_size: tokens per chunk for norms/projections/MLP (None: off);
      per sequence shard on a mesh. Default `layers.DEFAULT_CHUNK_SIZE`.
    jit: run the jitted forward (static args: config, attention, options);
      False runs `forward` eagerly (never layer by layer).
    partitioning: mesh + logical rules of a sharded model (None: one
      device); set by models.sharded.shard_model together with sharded
      params and the Ulysses attention wrapper.
    layerwise_from: prefill calls of at least this many tokens run layer
      by layer (None: never; 0: always). Default LAYERWISE_FROM.
  """

  config: ModelConfig
  params: Params
  attention: AttentionFn = layers.DenseAttention()
  chunk_size: int | None = layers.DEFAULT_CHUNK_SIZE
  jit: bool = True
  partitioning: Partitioning | None = None
  layerwise_from: int | None = LAYERWISE_FROM

  def __post_init__(self):
    # The attention must serve this model (e.g. a pattern config of its
    # layer and head counts): checked here, before any work.
    check_attention_fits(self.attention, num_layers=self.config.num_layers,
                         num_heads=self.config.num_heads)
    if self.layerwise_from is not None and self.layerwise_from < 0:
      raise ValueError(f"layerwise_from must be >= 0 or None, got "
                       f"{self.layerwise_from}")
    if self.chunk_size is not None and self.chunk_size < 1:
      raise ValueError(f"chunk_size must be >= 1 or None, got "
                       f"{self.chunk_size}")

  @functools.cached_property
  def layerwise(self) -> LayerwisePrefill:
    """The layer-by-layer executor of this model's prefills."""
    return LayerwisePrefill(self.config, self.attention, self.chunk_size,
                            self.partitioning)

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
    tokens, positions, logits_idx, static_for = _inputs(
        tokens, positions, logits_for, self.config.vocab_size)
    if (self.jit and q_offset is not None
        and self.layerwise_from is not None
        and tokens.shape[1] >= self.layerwise_from):
      return self.layerwise(self.params, tokens, positions, cache,
                            logits_idx, q_offset=q_offset,
                            logits_for=static_for, rope_seq_len=rope_seq_len)
    fn = forward_jit if self.jit else forward
    return fn(self.params, tokens, positions, cache, logits_idx,
              config=self.config, attention=self.attention, q_offset=q_offset,
              logits_for=static_for, chunk_size=self.chunk_size,
              rope_seq_len=rope_seq_len, partitioning=self.partitioning)

  def prefill(
      self,
      tokens: Int[Array, "B T"],
      positions: Int[Array, "B T"] | None = None,
      cache: KVCache | None = None,
      logits_for: LogitsFor = "last",
      *,
      q_offset: int = 0,
      rope_seq_len: int | None = None,
  ) -> tuple[Float[Array, "..."], KVCache | None]:
    """A prefill run layer by layer whatever its length (see `prefill`).

    Raises:
      ValueError: for bad inputs or a decode step (q_offset None).
    """
    tokens, positions, logits_idx, static_for = _inputs(
        tokens, positions, logits_for, self.config.vocab_size)
    return self.layerwise(self.params, tokens, positions, cache, logits_idx,
                          q_offset=q_offset, logits_for=static_for,
                          rope_seq_len=rope_seq_len)

  def init_cache(
      self, batch: int, max_len: int, dtype: Any = None
  ) -> KVCache:
    """A preallocated cache (default dtype: the embedding's), sharded by
    the rules on a mesh."""
    dtype = dtype or self.params["embed"].dtype
    return KVCache.init(self.config, batch, max_len, dtype,
                        self.partitioning)
