"""Multi-device models: params and activations placed by the logical rules,
attention wrapped head-parallel (DeepSpeed-Ulysses).

  mesh_config = MeshConfig(sequence=8)                  # 8 devices, Ulysses
  sharded = shard_model(model, mesh_config)             # a CausalLM
  logits, _ = sharded(tokens)                           # as on one device
  prefill = make_sharded_prefill(model, mesh_config)    # tokens -> logits

Norms, projections, RoPE and the MLP run sequence-sharded; XLA's SPMD
partitioner places them from the activations' logical constraints
(models/decoder.py). Attention runs in `jax.shard_map` through
`minference_jax.parallel.UlyssesAttention`: an all-to-all to head sharding,
the wrapped attention (index building + sparse kernel) per device for its
heads over the whole sequence, an all-to-all back. With tensor > 1 the
weights are split Megatron-style over heads, MLP width and vocabulary, so a
model larger than one device fits (the o- and down-projections then end in
an all-reduce over the tensor axis).

Per-layer attentions (`LayerAttentions`) are wrapped entry by entry, one
UlyssesAttention per layer, so the layer-by-layer prefill still passes each
entry's arrays (e.g. replayed index lines, placed replicated on every
device) as traced arguments of one shared layer step.
"""

import dataclasses
from collections.abc import Sequence
from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from minference_jax.parallel import UlyssesAttention
from models.config import ModelConfig
from models.decoder import TOKENS
from models.layerwise import LayerAttentions
from models.llama import CausalLM, LogitsFor, forward_jit
from models.partitioning import MeshConfig, Partitioning
from models.weights import Params, param_shardings


def shard_params(params: Params, shardings: Params) -> Params:
  """Places (or reshards) params with the given shardings."""
  return jax.device_put(params, shardings)


def _single_axis(mesh_config: MeshConfig, logical: str) -> str | None:
  axes = mesh_config.mesh_axes(logical)
  if isinstance(axes, tuple):
    if len(axes) > 1:
      raise ValueError(f"head-parallel attention needs {logical!r} on one "
                       f"mesh axis, the rules map it to {axes}")
    axes = axes[0] if axes else None
  return axes


def _replicated_arrays(attention: Any, mesh: Mesh) -> Any:
  """The attention with its array leaves (if it is a pytree holding any)
  placed whole on every device of the mesh; other leaves unchanged."""
  sharding = NamedSharding(mesh, PartitionSpec())

  def place(leaf):
    if not isinstance(leaf, (jax.Array, np.ndarray)):
      return leaf
    host = np.asarray(leaf)
    return jax.make_array_from_callback(host.shape, sharding,
                                        lambda index: host[index])

  return jax.tree.map(place, attention)


def ulysses_attention(
    attention: Any, mesh_config: MeshConfig, partitioning: Partitioning
) -> UlyssesAttention:
  """Wraps an AttentionFn for the layout the rules give q, k and v."""
  return UlyssesAttention(
      _replicated_arrays(attention, partitioning.mesh), partitioning.mesh,
      seq_axis=_single_axis(mesh_config, "seq"),
      head_axis=_single_axis(mesh_config, "heads"),
      kv_head_axis=_single_axis(mesh_config, "kv_heads"),
      batch_axis=_single_axis(mesh_config, "batch"))


def _single_device_attention(attention: Any) -> Any:
  """The attention of a model before shard_model (UlyssesAttention
  unwrapped, per layer for a LayerAttentions); others unchanged."""
  if isinstance(attention, LayerAttentions):
    return LayerAttentions(tuple(_single_device_attention(a)
                                  for a in attention.layers))
  if isinstance(attention, UlyssesAttention):
    return attention.attention
  return attention


def _sharded_attention(
    attention: Any, mesh_config: MeshConfig, partitioning: Partitioning,
    config: ModelConfig,
) -> UlyssesAttention | LayerAttentions:
  """The attention of a sharded model: a UlyssesAttention, or for a
  LayerAttentions one UlyssesAttention per layer (module doc).

  Raises:
    ValueError: when the heads do not split over the mesh.
  """
  if isinstance(attention, LayerAttentions):
    return LayerAttentions(tuple(
        _sharded_attention(a, mesh_config, partitioning, config)
        for a in attention.layers))
  wrapped = ulysses_attention(attention, mesh_config, partitioning)
  wrapped.check_heads(config.num_heads, config.num_kv_heads)
  return wrapped


def shard_model(
    model: CausalLM,
    mesh_config: MeshConfig,
    devices: Sequence[Any] | None = None,
) -> CausalLM:
  """The model sharded over a mesh: same calls, same results.

  Args:
    model: a single-device CausalLM (its attention is wrapped, a
      LayerAttentions entry by entry; an already sharded model is
      re-sharded from its inner attention).
    mesh_config: mesh sizes and rules (MeshConfig.for_model resolves the KV
      rule for the geometry).
    devices: the devices (default all, across hosts with jax.distributed).

  Returns:
    A CausalLM with sharded params, a UlyssesAttention (one per layer for
    a LayerAttentions) and the Partitioning; prompts must have T divisible
    by mesh_config.sequence and B by mesh_config.data to be split (other
    lengths run correctly with the sequence replicated).

  Raises:
    ValueError: when heads or parameter dimensions do not split over the
      mesh, or the device count does not match.
  """
  mesh_config = mesh_config.for_model(model.config)
  partitioning = mesh_config.bind(devices)
  shardings = param_shardings(model.config, partitioning)
  wrapped = _sharded_attention(_single_device_attention(model.attention),
                               mesh_config, partitioning, model.config)
  return dataclasses.replace(model, params=shard_params(model.params,
                                                        shardings),
                             attention=wrapped, partitioning=partitioning)


@dataclasses.dataclass(frozen=True, eq=False)
class ShardedPrefill:
  """A sharded prefill: tokens [B, T] -> float32 logits, split over a mesh.

  Attributes:
    model: the sharded CausalLM (shard_model).
    mesh_config: the resolved mesh config.
    logits_for: "last" ([B, V]) or "all" ([B, T, V]).
  """

  model: CausalLM
  mesh_config: MeshConfig
  logits_for: LogitsFor = "last"

  @property
  def partitioning(self) -> Partitioning:
    return self.model.partitioning

  def place_tokens(self, tokens: Any) -> jax.Array:
    """Host tokens [B, T] as a global array split by the rules (every
    process passes the same tokens; each places its own shards).

    Raises:
      ValueError: for a non-[B, T] array or T / B that do not split.
    """
    tokens = np.asarray(tokens, np.int32)
    if tokens.ndim != 2:
      raise ValueError(f"tokens must be [B, T], got shape {tokens.shape}")
    sharding: NamedSharding = self.partitioning.array_sharding(
        tokens.shape, TOKENS, "tokens [B, T]")
    return jax.make_array_from_callback(tokens.shape, sharding,
                                        lambda index: tokens[index])

  def __call__(self, tokens: Any) -> jax.Array:
    """Logits of the prompt (a global array sharded over the mesh)."""
    logits, _ = self.model(self.place_tokens(tokens),
                           logits_for=self.logits_for)
    return logits

  def lower(self, tokens: Any) -> Any:
    """The jitted forward lowered for these tokens (`.compile().as_text()`
    is the partitioned HLO with every collective)."""
    m = self.model
    return forward_jit.lower(
        m.params, self.place_tokens(tokens), None, None, None,
        config=m.config, attention=m.attention, q_offset=0,
        logits_for=self.logits_for, chunk_size=m.chunk_size,
        rope_seq_len=None, partitioning=m.partitioning)


def make_sharded_prefill(
    model: CausalLM,
    mesh_config: MeshConfig,
    *,
    logits_for: LogitsFor = "last",
    devices: Sequence[Any] | None = None,
) -> ShardedPrefill:
  """A prefill of `model` sharded over a mesh (see shard_model).

  Args:
    model: a single-device CausalLM with the attention to run per device.
    mesh_config: mesh sizes (data, sequence, tensor) and rules.
    logits_for: "last" or "all".
    devices: the devices (default all).

  Returns:
    A ShardedPrefill: `prefill(tokens)` -> logits; prompts need T divisible
    by the sequence size and B by the data size.

  Raises:
    ValueError: when the geometry does not split over the mesh.
  """
  if logits_for not in ("last", "all"):
    raise ValueError(f"logits_for must be 'last' or 'all', got "
                     f"{logits_for!r}")
  resolved = mesh_config.for_model(model.config)
  return ShardedPrefill(shard_model(model, resolved, devices), resolved,
                        logits_for)
