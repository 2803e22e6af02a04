"""The decoder as Flax Linen modules (LLaMA/Yi/Qwen2/Phi-3/GLM-4).

All supported architectures share one pre-norm decoder: x += o(attn(rope(
qkv(norm(x))))); x += mlp(norm(x)). Differences live in the config (biases,
rope variant and layout) and in the weight-name tables (models/weights.py).

`Decoder` is used functionally: `Decoder(...).apply({"params": p}, ...)`
over a plain params pytree; `abstract_params` gives its shapes through
`jax.eval_shape` (nothing is allocated). Each parameter is declared with its
logical axes (`nn.with_logical_partitioning`) and each activation is
constrained to its logical axes (models/partitioning.py), so one definition
runs on one device or sharded over a mesh. The attention step is a
constructor argument (an AttentionFn) the modules know nothing about; layers
run in a Python loop so each attention call gets a static `layer_idx`, and
K/V reach it un-repeated ([B, S, K, D]).

Linen names the layer list `layers_0, layers_1, ...`; the public params
pytree keeps a list under "layers" (`to_linen_params`/`from_linen_params`
convert, without copying arrays).
"""

import dataclasses
import functools
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
from flax import linen as nn

from minference_jax.types import check_attention_fits
from models import layers
from models.config import ModelConfig
from models.partitioning import AxisNames, Partitioning, constrain
from models.rope import apply_rope, rope_cos_sin

Params = dict[str, Any]
# name -> (shape, logical axes, initializer)
ParamSpecs = dict[str, tuple[tuple[int, ...], AxisNames, Callable]]

_WEIGHT_INIT = nn.initializers.normal(0.02)
_ONES = nn.initializers.ones
_ZEROS = nn.initializers.zeros

# Logical axes of activations.
RESIDUAL: AxisNames = ("batch", "seq", "embed")  # x [B, T, H]
Q_HEADS: AxisNames = ("batch", "seq", "heads", "head_dim")  # [B, T, N, D]
KV_HEADS: AxisNames = ("batch", "seq", "kv_heads", "head_dim")  # [B, T, K, D]
MLP_HIDDEN: AxisNames = ("batch", "seq", "mlp")  # [B, T, I]
TOKENS: AxisNames = ("batch", "seq")  # tokens, positions [B, T]


def layer_param_specs(c: ModelConfig) -> ParamSpecs:
  """One decoder layer's parameters: shape, logical axes, initializer.

  Linear weights are [in, out]; a flattened (heads, head_dim) dimension is
  named by its heads axis.
  """
  h, qd, kd, m = c.hidden_size, c.q_dim, c.kv_dim, c.intermediate_size
  specs: ParamSpecs = {
      "attn_norm": ((h,), ("embed",), _ONES),
      "wq": ((h, qd), ("embed", "heads"), _WEIGHT_INIT),
      "wk": ((h, kd), ("embed", "kv_heads"), _WEIGHT_INIT),
      "wv": ((h, kd), ("embed", "kv_heads"), _WEIGHT_INIT),
      "wo": ((qd, h), ("heads", "embed"), _WEIGHT_INIT),
      "mlp_norm": ((h,), ("embed",), _ONES),
      "w_gate": ((h, m), ("embed", "mlp"), _WEIGHT_INIT),
      "w_up": ((h, m), ("embed", "mlp"), _WEIGHT_INIT),
      "w_down": ((m, h), ("mlp", "embed"), _WEIGHT_INIT),
  }
  if c.attention_bias:
    specs["bq"] = ((qd,), ("heads",), _ZEROS)
    specs["bk"] = ((kd,), ("kv_heads",), _ZEROS)
    specs["bv"] = ((kd,), ("kv_heads",), _ZEROS)
  if c.attention_out_bias:
    specs["bo"] = ((h,), ("embed",), _ZEROS)
  if c.mlp_bias:
    specs["b_gate"] = ((m,), ("mlp",), _ZEROS)
    specs["b_up"] = ((m,), ("mlp",), _ZEROS)
    specs["b_down"] = ((h,), ("embed",), _ZEROS)
  return specs


def top_param_specs(c: ModelConfig) -> ParamSpecs:
  """Embedding, final norm and (untied) output matrix."""
  specs: ParamSpecs = {
      "embed": ((c.vocab_size, c.hidden_size), ("vocab", "embed"),
                _WEIGHT_INIT),
      "final_norm": ((c.hidden_size,), ("embed",), _ONES),
  }
  if not c.tie_word_embeddings:
    specs["lm_head"] = ((c.hidden_size, c.vocab_size), ("embed", "vocab"),
                        _WEIGHT_INIT)
  return specs


def _declare(module: nn.Module, specs: ParamSpecs, dtype: Any) -> Params:
  return {name: module.param(name, nn.with_logical_partitioning(init, axes),
                             shape, dtype)
          for name, (shape, axes, init) in specs.items()}


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class KVCache:
  """A preallocated KV cache (a pytree; safe to pass through jit).

  Attributes:
    k, v: per layer [B, S_max, K, D] buffers (logical axes KV_HEADS).
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
      partitioning: Partitioning | None = None,
  ) -> "KVCache":
    """An empty cache for `max_len` positions (sharded by the rules when a
    partitioning is given)."""
    shape = (batch, max_len, config.num_kv_heads, config.head_dim)
    make = lambda: jnp.zeros(shape, dtype)  # noqa: E731
    if partitioning is not None:
      make = jax.jit(make, out_shardings=partitioning.fitted_sharding(
          shape, KV_HEADS))
    k = tuple(make() for _ in range(config.num_layers))
    v = tuple(make() for _ in range(config.num_layers))
    return cls(k=k, v=v, length=jnp.zeros((), jnp.int32))

  @property
  def max_len(self) -> int:
    return self.k[0].shape[1]


class DecoderLayer(nn.Module):
  """One pre-norm decoder layer (attention + SwiGLU MLP).

  Attributes:
    config: the geometry.
    attention: the AttentionFn for prefill steps.
    layer_idx: this layer's index (static; passed to the attention).
    chunk_size: tokens per chunk (per sequence shard) for norms,
      projections and the MLP (None: unchunked).
    partitioning: mesh + rules for activation constraints (None: one
      device).
    param_dtype: dtype of freshly initialised parameters.
  """

  config: ModelConfig
  attention: Any
  layer_idx: int
  chunk_size: int | None = None
  partitioning: Partitioning | None = None
  param_dtype: Any = jnp.float32

  def setup(self):
    self.weights = _declare(self, layer_param_specs(self.config),
                            self.param_dtype)

  def declare(self) -> None:
    """Creates the parameters (for `init(method=Decoder.declare)`)."""
    _ = self.weights

  def _constrain(self, x: jax.Array, names: AxisNames) -> jax.Array:
    return constrain(x, names, self.partitioning)

  def _qkv(self, x, cos, sin):
    """norm -> q/k/v projections -> RoPE, for one chunk of tokens."""
    c, p = self.config, self.weights
    b, t, _ = x.shape
    h = layers.rms_norm(x, p["attn_norm"], c.rms_norm_eps)
    q = layers.linear(h, p["wq"], p.get("bq"))
    k = layers.linear(h, p["wk"], p.get("bk"))
    v = layers.linear(h, p["wv"], p.get("bv"))
    q = self._constrain(q.reshape(b, t, c.num_heads, c.head_dim), Q_HEADS)
    k = self._constrain(k.reshape(b, t, c.num_kv_heads, c.head_dim),
                        KV_HEADS)
    v = self._constrain(v.reshape(b, t, c.num_kv_heads, c.head_dim),
                        KV_HEADS)
    il = c.rope.interleaved
    q = apply_rope(q, cos, sin, interleaved=il)
    k = apply_rope(k, cos, sin, interleaved=il)
    return q, k, v

  def _out_and_mlp(self, x, o):
    """x + o-projection, then x + SwiGLU MLP, for one chunk of tokens."""
    c, p = self.config, self.weights
    x = self._constrain(x + layers.linear(o, p["wo"], p.get("bo")), RESIDUAL)
    h = layers.rms_norm(x, p["mlp_norm"], c.rms_norm_eps)
    down = layers.swiglu_mlp(h, p, lambda a: self._constrain(a, MLP_HIDDEN))
    return self._constrain(x + down, RESIDUAL)

  def __call__(
      self,
      x: jax.Array,
      cos: jax.Array,
      sin: jax.Array,
      cache_kv: tuple[jax.Array, jax.Array] | None,
      start: jax.Array | int,
      q_offset: int | None,
  ) -> tuple[jax.Array, tuple[jax.Array, jax.Array] | None]:
    """Runs the layer.

    Args:
      x: [B, T, H] residual stream.
      cos, sin: [B, T, R/2] rotary tables.
      cache_kv: this layer's ([B, S_max, K, D], same) cache buffers, or None.
      start: cache row of x[:, 0] (traced when decoding).
      q_offset: static position of x[:, 0] for the attention callable, or
        None for a decode step (dense attention over the cache buffer).

    Returns:
      (new x [B, T, H], updated (k, v) cache buffers or None).
    """
    c = self.config
    b, t, _ = x.shape
    shards = 1 if self.partitioning is None else self.partitioning.size("seq")
    shards = shards if t % shards == 0 else 1
    q, k, v = layers.seq_chunked(self._qkv, self.chunk_size, x, cos, sin,
                                 shards=shards)
    i = self.layer_idx
    new_kv = None
    if cache_kv is None:
      o = self.attention(q, k, v, layer_idx=i, q_offset=0)
    else:
      ck, cv = cache_kv
      ck = jax.lax.dynamic_update_slice(ck, k.astype(ck.dtype),
                                        (0, start, 0, 0))
      cv = jax.lax.dynamic_update_slice(cv, v.astype(cv.dtype),
                                        (0, start, 0, 0))
      ck, cv = self._constrain(ck, KV_HEADS), self._constrain(cv, KV_HEADS)
      new_kv = (ck, cv)
      if q_offset is None:
        slots = start + jnp.arange(t, dtype=jnp.int32)  # [T] cache rows
        o = layers.masked_gqa_attention(q, ck.astype(q.dtype),
                                        cv.astype(q.dtype), slots, start + t)
      elif q_offset == 0:
        o = self.attention(q, k, v, layer_idx=i, q_offset=0)
      else:
        kk = ck[:, :q_offset + t].astype(q.dtype)  # [B, S, K, D]
        vv = cv[:, :q_offset + t].astype(q.dtype)
        o = self.attention(q, kk, vv, layer_idx=i, q_offset=q_offset)
    o = self._constrain(o, Q_HEADS).reshape(b, t, c.q_dim)  # [B, T, N*D]
    x = layers.seq_chunked(self._out_and_mlp, self.chunk_size, x, o,
                           shards=shards, in_place=True)
    return x, new_kv


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


class Decoder(nn.Module):
  """The causal LM: embedding, decoder layers, final norm, logits.

  Attributes:
    config: the geometry.
    attention: the AttentionFn for prefill steps.
    chunk_size: tokens per chunk for norms/projections/MLP (None: off).
    partitioning: mesh + rules (None: one device).
    param_dtype: dtype of freshly initialised parameters.
  """

  config: ModelConfig
  attention: Any
  chunk_size: int | None = None
  partitioning: Partitioning | None = None
  param_dtype: Any = jnp.float32

  def setup(self):
    self.top = _declare(self, top_param_specs(self.config), self.param_dtype)
    self.layers = [
        DecoderLayer(self.config, self.attention, i, self.chunk_size,
                     self.partitioning, self.param_dtype)
        for i in range(self.config.num_layers)
    ]

  def declare(self) -> None:
    """Creates every parameter without running the model."""
    _ = self.top
    for layer in self.layers:
      layer.declare()

  def _constrain(self, x: jax.Array, names: AxisNames) -> jax.Array:
    return constrain(x, names, self.partitioning)

  def embed(
      self,
      tokens: jax.Array,
      positions: jax.Array | None,
      start: jax.Array | int,
      rope_seq_len: int,
  ) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Token embedding and the rotary tables.

    Args:
      tokens: [B, T] token ids.
      positions: [B, T] RoPE positions, or None for start + arange(T).
      start: position of tokens[:, 0] (traced when decoding).
      rope_seq_len: the static length that selects RoPE frequencies.

    Returns:
      (x [B, T, H] residual stream, cos [B, T, R/2], sin [B, T, R/2]).
    """
    c = self.config
    b, t = tokens.shape
    if positions is None:
      positions = jnp.broadcast_to(start + jnp.arange(t, dtype=jnp.int32),
                                   (b, t))
    positions = self._constrain(positions, TOKENS)
    inv = c.rope.inv_freq(rope_seq_len)  # [R/2] numpy float32 (static)
    cos, sin = rope_cos_sin(positions, inv, c.rope.attention_scaling())
    names = ("batch", "seq", None)  # cos, sin [B, T, R/2]
    cos, sin = self._constrain(cos, names), self._constrain(sin, names)
    x = self._constrain(self.top["embed"][self._constrain(tokens, TOKENS)],
                        RESIDUAL)  # [B, T, H]
    return x, cos, sin

  def logits(
      self,
      x: jax.Array,
      logits_for: str | None,
      logits_idx: jax.Array | None,
  ) -> jax.Array:
    """Final norm + output projection (float32) of the selected positions.

    Args:
      x: [B, T, H] residual stream after the last layer.
      logits_for: "last" -> [B, V]; "all" -> [B, T, V]; None -> logits at
        logits_idx, [B, M, V].
      logits_idx: [M] token indices (logits_for None).

    Raises:
      ValueError: for an unknown logits_for.
    """
    c, p = self.config, self.top
    h = _select_positions(x, logits_for, logits_idx)
    h = layers.rms_norm(h, p["final_norm"], c.rms_norm_eps)
    if c.tie_word_embeddings:
      logits = jnp.einsum("...h,vh->...v", h, p["embed"].astype(h.dtype),
                          preferred_element_type=jnp.float32)
    else:
      logits = jnp.einsum("...h,hv->...v", h, p["lm_head"].astype(h.dtype),
                          preferred_element_type=jnp.float32)
    names = (("batch", "vocab") if logits.ndim == 2 else
             ("batch", "seq" if logits_for == "all" else None, "vocab"))
    return self._constrain(logits, names)

  def __call__(
      self,
      tokens: jax.Array,
      positions: jax.Array | None = None,
      cache: KVCache | None = None,
      logits_idx: jax.Array | None = None,
      *,
      q_offset: int | None = 0,
      logits_for: str | None = "last",
      rope_seq_len: int | None = None,
  ) -> tuple[jax.Array, KVCache | None]:
    """The forward pass; arguments as `models.llama.forward`.

    Raises:
      ValueError: for inconsistent shapes or options, or an attention that
        does not fit the model (`check_attention_fits`: e.g. a pattern
        config with other layer or head counts).
    """
    t = tokens.shape[1]
    check_attention_fits(self.attention,
                         num_layers=self.config.num_layers,
                         num_heads=self.config.num_heads)
    check_call(tokens.shape, cache, q_offset)
    start = cache.length if q_offset is None else q_offset
    rope_seq_len = resolve_rope_seq_len(t, cache, q_offset, rope_seq_len)
    x, cos, sin = self.embed(tokens, positions, start, rope_seq_len)
    new_k, new_v = [], []
    for i, layer in enumerate(self.layers):
      with jax.named_scope(f"layer_{i}"):
        kv = None if cache is None else (cache.k[i], cache.v[i])
        x, kv = layer(x, cos, sin, kv, start, q_offset)
        if kv is not None:
          new_k.append(kv[0])
          new_v.append(kv[1])
    logits = self.logits(x, logits_for, logits_idx)
    if cache is None:
      return logits, None
    length = jnp.asarray(start + t, jnp.int32)
    return logits, KVCache(k=tuple(new_k), v=tuple(new_v), length=length)


def check_call(
    tokens_shape: tuple[int, ...], cache: KVCache | None,
    q_offset: int | None
) -> None:
  """Checks a forward call's tokens [B, T], cache and q_offset.

  Raises:
    ValueError: naming the inconsistency.
  """
  b, t = tokens_shape
  if q_offset is None and cache is None:
    raise ValueError("q_offset=None (decode) needs a KV cache")
  if cache is None and q_offset != 0:
    raise ValueError(f"q_offset={q_offset} without a cache: earlier keys "
                     "are unknown; pass the KVCache")
  if cache is not None:
    if cache.k[0].shape[0] != b:
      raise ValueError(f"cache batch {cache.k[0].shape[0]} != tokens batch "
                       f"{b}")
    if q_offset is not None and q_offset + t > cache.max_len:
      raise ValueError(f"q_offset + T = {q_offset + t} exceeds the cache "
                       f"capacity {cache.max_len}")


def resolve_rope_seq_len(
    t: int, cache: KVCache | None, q_offset: int | None,
    rope_seq_len: int | None
) -> int:
  """The length that selects RoPE frequencies: the given one, else the
  call's total length (q_offset + T) or the cache capacity when decoding."""
  if rope_seq_len is not None:
    return rope_seq_len
  return cache.max_len if q_offset is None else q_offset + t


LAYER_PREFIX = "layers_"


def to_linen_params(params: Params) -> Params:
  """Public params ({"layers": [..]}) -> Linen's ({"layers_0": .., ..})."""
  out = {k: v for k, v in params.items() if k != "layers"}
  for i, layer in enumerate(params["layers"]):
    out[f"{LAYER_PREFIX}{i}"] = layer
  return out


def from_linen_params(tree: Params) -> Params:
  """Inverse of to_linen_params."""
  out: Params = {k: v for k, v in tree.items()
                 if not k.startswith(LAYER_PREFIX)}
  count = sum(k.startswith(LAYER_PREFIX) for k in tree)
  out["layers"] = [dict(tree[f"{LAYER_PREFIX}{i}"]) for i in range(count)]
  return out


@functools.lru_cache(maxsize=16)
def _boxed_params(config: ModelConfig, dtype: Any) -> Params:
  """The Linen variables of abstract init: LogicallyPartitioned boxes around
  ShapeDtypeStructs (nothing allocated; cached, callers copy)."""
  module = Decoder(config, layers.DenseAttention(), param_dtype=dtype)
  return jax.eval_shape(
      lambda: module.init(jax.random.key(0), method=Decoder.declare)
  )["params"]


def _is_box(x: Any) -> bool:
  return isinstance(x, nn.LogicallyPartitioned)


def abstract_params(config: ModelConfig, dtype: Any = jnp.bfloat16) -> Params:
  """The params pytree as jax.ShapeDtypeStruct leaves (abstract init)."""
  tree = jax.tree.map(lambda b: b.value, _boxed_params(config, dtype),
                      is_leaf=_is_box)
  return from_linen_params(tree)


def param_axes(config: ModelConfig) -> Params:
  """The params pytree with each leaf's logical axes (a tuple of names)."""
  tree = jax.tree.map(lambda b: tuple(b.names),
                      _boxed_params(config, jnp.float32), is_leaf=_is_box)
  return from_linen_params(tree)
