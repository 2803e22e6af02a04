"""Computed (not measured) peak memory per device of a sharded prefill.

The accounting of models/memory.py (one layer's activations live at a
time), split over a mesh as models/sharded.py runs it:
  * weights: every parameter divided over the mesh axes its logical axes
    map to (tensor axis: heads, KV heads when they split, MLP width,
    vocabulary), the rest replicated;
  * outside attention, T / sequence tokens per device: residual, q, k, v,
    the attention output, cos/sin and one chunk's MLP temporaries over
    I / tensor columns (chunking copies nothing: models.layers.seq_chunked);
  * inside attention (DeepSpeed-Ulysses), the whole sequence for N / P query
    heads (P = sequence x tensor) and the device's KV heads (one replicated
    head when K < P), next to the sequence-sharded inputs they came from,
    plus the Vertical-Slash estimate's workspace for N / P heads;
  * the KV cache (when kept) split over sequence and, when K splits, over
    the tensor axis.
"""

import dataclasses
import math
from collections.abc import Sequence

from models.config import ModelConfig
from models.decoder import param_axes
from models.memory import VS_LAST_Q, estimate_table
from models.partitioning import MeshConfig
from models.weights import param_shapes


@dataclasses.dataclass(frozen=True)
class ShardedMemoryEstimate:
  """Peak-memory terms in bytes on one device (see module docstring).

  Attributes:
    seq_len, mesh_shape, keep_kv_cache, chunk_size: the scenario.
    weights, kv_cache, activations, attention_workspace, logits: bytes.
  """

  seq_len: int
  mesh_shape: tuple[int, int, int]
  keep_kv_cache: bool
  chunk_size: int | None
  weights: int
  kv_cache: int
  activations: int
  attention_workspace: int
  logits: int

  @property
  def total(self) -> int:
    return (self.weights + self.kv_cache + self.activations
            + self.attention_workspace + self.logits)


def sharded_weight_bytes(
    config: ModelConfig, mesh_config: MeshConfig, dtype_bytes: int = 2
) -> int:
  """Parameter bytes held by one device under the mesh's rules."""
  mesh_config = mesh_config.for_model(config)
  shapes = param_shapes(config)
  axes = param_axes(config)
  total = 0
  for layer_shapes, layer_axes in [(shapes, axes)] + list(
      zip(shapes["layers"], axes["layers"])):
    for name, shape in layer_shapes.items():
      if name == "layers":
        continue
      split = math.prod(mesh_config.size(a) for a in layer_axes[name]
                        if a is not None)
      total += math.prod(shape.shape) * dtype_bytes // split
  return total


def estimate_sharded_prefill_memory(
    config: ModelConfig,
    seq_len: int,
    mesh_config: MeshConfig,
    *,
    keep_kv_cache: bool = False,
    chunk_size: int | None = 4096,
    dtype_bytes: int = 2,
) -> ShardedMemoryEstimate:
  """Peak memory on one device of a batch-1 prefill sharded by the mesh.

  With a 1 x 1 x 1 mesh the terms equal models.memory's single-device
  estimate (tested).

  Raises:
    ValueError: when the heads do not split over the mesh, or seq_len
      over the sequence axis.
  """
  mesh_config = mesh_config.for_model(config)
  c = config
  seq, tensor = mesh_config.size("seq"), mesh_config.size("heads")
  if seq_len % seq:
    raise ValueError(f"seq_len={seq_len} does not split over {seq} "
                     "sequence devices")
  p = seq * tensor
  kv_split = mesh_config.size("kv_heads")
  local = seq_len // seq
  d, b = c.head_dim, dtype_bytes
  x = local * c.hidden_size * b
  q = local * c.q_dim // tensor * b
  kv_local = c.num_kv_heads // kv_split
  kv_per_device = c.num_kv_heads // p if c.num_kv_heads % p == 0 else 1
  kv_slab = seq * kv_per_device if seq > 1 else kv_local
  kv = 2 * local * kv_slab * d * b
  o = q
  rope = 2 * local * (c.rope.rotary_dim // 2) * 4
  heads = c.num_heads // p
  if seq > 1:  # the all-to-all's whole-sequence copies beside their inputs
    gathered = seq_len * d * b * (2 * heads + 2 * kv_per_device)
  else:
    gathered = 0
  workspace = 2 * heads * VS_LAST_Q * seq_len * 4
  # The phases of models.memory.estimate_prefill_memory on the device's
  # tokens (SwiGLU temporaries per [c, I] column).
  chunked = chunk_size is not None and chunk_size < local
  chunk = min(chunk_size, local) if chunked else local
  mlp_cols = c.intermediate_size // mesh_config.size("mlp")
  chunk_tmp = chunk * (c.hidden_size * 4 + mlp_cols * (3 * b + 5))
  projection_phase = x + rope + q + kv
  attention_phase = x + q + kv + o + rope + gathered + workspace
  mlp_phase = x + o + (0 if chunked else x) + chunk_tmp
  activations = max(projection_phase, attention_phase, mlp_phase) - workspace
  cache = 0
  if keep_kv_cache:
    cache = (seq_len * c.kv_bytes_per_token(b)) // (seq * kv_split)
  vocab = c.vocab_size // mesh_config.size("vocab")
  return ShardedMemoryEstimate(
      seq_len=seq_len, mesh_shape=mesh_config.shape,
      keep_kv_cache=keep_kv_cache, chunk_size=chunk_size,
      weights=sharded_weight_bytes(c, mesh_config, b), kv_cache=cache,
      activations=activations, attention_workspace=workspace,
      logits=vocab * 4)


def sharded_memory_table(
    config: ModelConfig,
    seq_len: int,
    mesh_configs: Sequence[MeshConfig],
    *,
    chunk_size: int | None = 4096,
) -> str:
  """A Markdown table (GiB per device) over meshes, without/with cache."""
  rows = []
  for mesh_config in mesh_configs:
    for keep in (False, True):
      e = estimate_sharded_prefill_memory(config, seq_len, mesh_config,
                                          keep_kv_cache=keep,
                                          chunk_size=chunk_size)
      rows.append((e.mesh_shape, keep, e))
  return estimate_table("mesh (data, sequence, tensor)", rows)
