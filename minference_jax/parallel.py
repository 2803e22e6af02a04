"""Head-parallel attention over a device mesh: DeepSpeed-Ulysses around any
AttentionFn.

DeepSpeed-Ulysses (Jacobs et al., 2023, arXiv 2309.14509, Sec. 3): outside
attention the tokens are split over the sequence axis of the mesh; before
attention one all-to-all per q, k and v turns each device's [T/P, N, D]
slice into [T, N/P, D] (the whole sequence for N/P heads), the device runs
ordinary single-device attention for its heads, and one all-to-all on the
output switches back to sequence sharding. For MInference this is the
natural split: the per-head index estimate (the last queries against all
keys) and the sparse kernel need the whole sequence of a head and nothing
else, so each device builds its heads' indices and runs the kernel locally,
inside `jax.shard_map`, with no gather of the full activations.

Heads may also be split over a tensor axis (Megatron-style weights): device
(tensor i, sequence j) then owns query heads block r = i * P_seq + j of
N / (P_tensor * P_seq) heads.

GQA with fewer KV heads than head-parallel devices is handled by
replication, as DeepSpeed-Ulysses does: each device receives a copy of the
one KV head its query heads read (a contiguous block of devices shares one
KV head), so K/V traffic and memory grow to one head per device; the
query-head ownership stays contiguous, so the GQA grouping (query head n
reads KV head n // G) is preserved. K must divide the head-parallel degree
or be a multiple of it.

Per-head patterns: a device must run the attention of *its* heads. Two
ways, tried in this order:

* An attention whose per-head data are arrays (e.g. index lines recorded
  per head, passed as traced arguments) implements `HeadBlockSliceable`:
  `for_head_block(start, size)` with `start` traced (r * N / P, from the
  device's `lax.axis_index`) and `size` = N / P static. Every device runs
  the same program, which dynamic-slices its heads' data: one copy of the
  kernel, no conditional.
* Otherwise the wrapped attention is restricted to each static head range
  with `attention_for_heads` (a `for_heads(start, stop)` method, or
  MInference's pattern config sliced per layer); devices whose heads get
  different restrictions pick theirs with one `lax.switch` on the device
  index (equal restrictions share a branch, so uniform heads compile one).

UlyssesAttention is a JAX pytree whose leaves are the wrapped attention's:
a layer step that takes it as an argument (models/layerwise.py) receives
the arrays of a per-layer attention as traced arguments, so layers that
differ only in those arrays share one executable.
"""

import dataclasses
from typing import Any, Protocol, runtime_checkable

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, PartitionSpec
from jaxtyping import Array, Float

from minference_jax.attention import DenseAttention, MInferenceAttention
from minference_jax.pattern_config import PatternConfig
from minference_jax.types import AttentionFn, check_attention_fits


@runtime_checkable
class HeadSliceable(Protocol):
  """An attention that can restrict itself to a range of query heads."""

  def for_heads(self, start: int, stop: int) -> AttentionFn:
    """The attention for query heads [start, stop) of every layer: called
    with q [B, T, stop - start, D] and those heads' K/V."""
    ...


@runtime_checkable
class HeadBlockSliceable(Protocol):
  """An attention that restricts itself to a block of query heads whose
  start is a traced value (per-head data held in arrays)."""

  def for_head_block(self, start: jax.Array | int, size: int
                     ) -> AttentionFn:
    """The attention for query heads [start, start + size) of every layer.

    Args:
      start: the first head, a traced int32 scalar (inside `shard_map`,
        r * size for the device's head-parallel index r) or an int.
      size: the static number of heads.

    Returns:
      An AttentionFn called with q [B, T, size, D] and those heads' K/V.
    """
    ...


def attention_for_heads(
    attention: Any, start: int, stop: int, layer_idx: int
) -> AttentionFn:
  """The attention that query heads [start, stop) of a layer should run.

  Args:
    attention: an AttentionFn: one with a `for_heads` method, a
      DenseAttention (head-independent) or a MInferenceAttention (its
      pattern config is sliced to those heads).
    start, stop: the query-head range.
    layer_idx: the layer (MInference patterns are per layer and head).

  Returns:
    An AttentionFn for q [B, T, stop - start, D], called with the same
    layer_idx. Equal results for two ranges mean equal computations.

  Raises:
    TypeError: for an attention whose per-head behaviour is unknown.
  """
  if isinstance(attention, HeadSliceable):
    return attention.for_heads(start, stop)
  if isinstance(attention, DenseAttention):
    return attention
  if isinstance(attention, MInferenceAttention):
    cfg = attention.pattern_config
    if not isinstance(cfg, PatternConfig):
      return attention  # one pattern for every head
    heads = attention.layer_patterns(layer_idx, cfg.num_heads)[start:stop]
    if len(set(heads)) == 1:
      sliced = heads[0]
    else:  # every layer gets this layer's slice, so equal slices compare equal
      sliced = PatternConfig(layers=(heads,) * cfg.num_layers)
    return dataclasses.replace(attention, pattern_config=sliced)
  raise TypeError(
      f"{type(attention).__name__} does not say how its heads differ: give "
      "it a `for_heads(start, stop)` method returning the attention of "
      "query heads [start, stop) (itself when every head is alike), or, "
      "for per-head arrays, a `for_head_block(start, size)` method taking "
      "a traced start (HeadBlockSliceable)")


def _axis_size(mesh: Mesh, axis: str | None) -> int:
  return 1 if axis is None else mesh.shape[axis]


@dataclasses.dataclass(frozen=True)
class UlyssesAttention:
  """An AttentionFn over mesh-sharded q, k, v (DeepSpeed-Ulysses).

  Called (under jit) with global arrays laid out as
  q [B over batch_axis, T over seq_axis, N over head_axis, D] and k, v
  [B, S over seq_axis, K over kv_head_axis, D]; returns o laid out like q.
  Each device runs the wrapped attention for N / P whole query heads over
  the whole sequence (P = head_axis size x seq_axis size) inside
  `jax.shard_map`. Lengths T or S that do not split over the sequence axis
  (e.g. an odd chunked-prefill step) run head-parallel without the
  all-to-alls: the inputs are then replicated over the sequence axis.

  A JAX pytree: the wrapped attention is its one child (its array leaves,
  if any, are this object's leaves); the mesh and axis names are static.

  Attributes:
    attention: the per-device AttentionFn (a HeadBlockSliceable, or see
      attention_for_heads).
    mesh: the device mesh (Auto axes).
    seq_axis: mesh axis of the tokens (None: not split).
    head_axis: mesh axis of the query heads (None: not split).
    kv_head_axis: mesh axis of the KV heads: head_axis or None
      (replicated, e.g. when K does not split over it).
    batch_axis: mesh axis of the batch (None: not split).
  """

  attention: AttentionFn
  mesh: Mesh
  seq_axis: str | None = "sequence"
  head_axis: str | None = "tensor"
  kv_head_axis: str | None = "tensor"
  batch_axis: str | None = "data"

  def __post_init__(self):
    names = self.mesh.axis_names
    for field in ("seq_axis", "head_axis", "kv_head_axis", "batch_axis"):
      axis = getattr(self, field)
      if axis is not None and axis not in names:
        raise ValueError(f"{field}={axis!r} is not an axis of the mesh "
                         f"{names}")
    if self.kv_head_axis not in (None, self.head_axis):
      raise ValueError(f"kv_head_axis must be head_axis ({self.head_axis!r}) "
                       f"or None, got {self.kv_head_axis!r}")
    used = [a for a in (self.seq_axis, self.head_axis, self.batch_axis)
            if a is not None]
    if len(set(used)) != len(used):
      raise ValueError(f"seq_axis, head_axis and batch_axis must differ, got "
                       f"{self.seq_axis!r}, {self.head_axis!r}, "
                       f"{self.batch_axis!r}")

  @property
  def head_parallel(self) -> int:
    """P: devices that split the query heads inside attention."""
    return (_axis_size(self.mesh, self.head_axis)
            * _axis_size(self.mesh, self.seq_axis))

  def check_heads(self, num_heads: int, num_kv_heads: int) -> None:
    """Raises ValueError unless the heads split over the mesh (see class)."""
    p = self.head_parallel
    where = (f"head_axis={self.head_axis!r} x seq_axis={self.seq_axis!r}, "
             f"mesh {dict(self.mesh.shape)}")
    if num_heads % p:
      raise ValueError(f"N={num_heads} query heads do not split over the "
                       f"{p} head-parallel devices ({where})")
    kv_size = _axis_size(self.mesh, self.kv_head_axis)
    if num_kv_heads % kv_size:
      raise ValueError(f"K={num_kv_heads} KV heads do not split over "
                       f"kv_head_axis={self.kv_head_axis!r} ({kv_size} "
                       "devices); leave the KV heads replicated (None)")
    if num_kv_heads % p and p % num_kv_heads:
      raise ValueError(f"K={num_kv_heads} KV heads and the {p} head-parallel "
                       f"devices ({where}) must divide one another")

  def check_model(self, *, num_layers: int, num_heads: int) -> None:
    """The wrapped attention's check (see `types.check_attention_fits`)."""
    check_attention_fits(self.attention, num_layers=num_layers,
                         num_heads=num_heads)

  def __call__(
      self,
      q: Float[Array, "B T N D"],
      k: Float[Array, "B S K D"],
      v: Float[Array, "B S K D"],
      *,
      layer_idx: int,
      q_offset: int = 0,
  ) -> Float[Array, "B T N D"]:
    """Head-parallel attention; arguments as the AttentionFn protocol.

    Raises:
      ValueError: for inconsistent shapes or heads that do not split.
    """
    if q.ndim != 4 or k.ndim != 4 or v.shape != k.shape:
      raise ValueError(f"q must be [B, T, N, D] and k, v [B, S, K, D] alike; "
                       f"got q{tuple(q.shape)}, k{tuple(k.shape)}, "
                       f"v{tuple(v.shape)}")
    b, t, n, _ = q.shape
    s_len, kh = k.shape[1], k.shape[2]
    self.check_heads(n, kh)
    seq = _axis_size(self.mesh, self.seq_axis)
    ulysses = t % seq == 0 and s_len % seq == 0
    batch_axis = (self.batch_axis
                  if b % _axis_size(self.mesh, self.batch_axis) == 0 else None)
    seq_axis = self.seq_axis if ulysses else None
    q_spec = PartitionSpec(batch_axis, seq_axis, self.head_axis, None)
    kv_spec = PartitionSpec(batch_axis, seq_axis, self.kv_head_axis, None)

    def local(q, k, v):
      return self._local(q, k, v, n, kh, layer_idx, q_offset, ulysses)

    if ulysses:
      out_spec = q_spec
    else:  # heads split over (head_axis, seq_axis), head_axis major
      heads = tuple(a for a in (self.head_axis, self.seq_axis) if a)
      out_spec = PartitionSpec(batch_axis, None, heads or None, None)
    # check_vma=False: Pallas calls inside shard_map (interpret mode
    # included) do not carry the varying-axes types; every output here is
    # split along the mesh by out_specs, nothing is claimed replicated.
    return jax.shard_map(local, mesh=self.mesh, in_specs=(q_spec, kv_spec,
                                                          kv_spec),
                         out_specs=out_spec, check_vma=False)(q, k, v)

  def _device_index(self) -> tuple[Any, Any]:
    """(tensor-group index i, sequence index j) of this device (traced)."""
    i = 0 if self.head_axis is None else jax.lax.axis_index(self.head_axis)
    j = 0 if self.seq_axis is None else jax.lax.axis_index(self.seq_axis)
    return i, j

  def _kv_heads_for_peers(self, k, n_kv: int, i):
    """The KV heads each sequence peer of this device needs, in peer order.

    Args:
      k: local [b, S', K_local, D] keys or values.
      n_kv: K, the global KV head count.
      i: this device's head_axis index (traced).

    Returns:
      ([b, S', seq * kpd, D], kpd): peer j's kpd heads at [j*kpd, (j+1)*kpd).
    """
    p, seq = self.head_parallel, _axis_size(self.mesh, self.seq_axis)
    kpd = n_kv // p if n_kv % p == 0 else 1
    per_kv = 1 if n_kv % p == 0 else p // n_kv  # devices sharing a KV head
    peers = np.arange(seq)[:, None]
    units = np.arange(kpd)[None, :]
    kv_split = _axis_size(self.mesh, self.kv_head_axis) > 1
    if kv_split or _axis_size(self.mesh, self.head_axis) == 1:
      # Device r = i*seq + j needs KV heads from r*kpd (K % P == 0) or
      # r // per_kv (P % K == 0). With the KV heads split over the head
      # axis, this device holds heads [i*K/P_t, (i+1)*K/P_t), and i*seq is
      # a multiple of per_kv (resp. maps to i*K/P_t), so the offset within
      # the local block is the i = 0 value: a static index.
      start = peers * kpd if n_kv % p == 0 else peers // per_kv
      idx = (start + units).reshape(-1)
      if np.array_equal(idx, np.arange(k.shape[2])):
        return k, kpd
      return jnp.take(k, jnp.asarray(idx), axis=2), kpd
    # KV heads replicated over the head axis, query heads split over it:
    # the index depends on this device's head-axis position i.
    r = i * seq + jnp.asarray(peers)
    start = r * kpd if n_kv % p == 0 else r // per_kv
    idx = (start + jnp.asarray(units)).reshape(-1)
    return jnp.take(k, idx, axis=2), kpd

  def _local(self, q, k, v, n, n_kv, layer_idx, q_offset, ulysses):
    """One device: (all-to-all,) its heads' attention, (all-to-all back).

    q [b, T/seq, N/P_t, D] and k, v [b, S/seq, K_local, D] with `ulysses`;
    q [b, T, N/P_t, D], k, v [b, S, K_local, D] otherwise.
    """
    seq = _axis_size(self.mesh, self.seq_axis)
    p = self.head_parallel
    i, j = self._device_index()
    k, kpd = self._kv_heads_for_peers(k, n_kv, i)
    v, _ = self._kv_heads_for_peers(v, n_kv, i)  # [b, S', seq*kpd, D]
    if ulysses and seq > 1:
      # [b, T/seq, h, D] -> [b, T, h/seq, D]: peer j gets head block j.
      q, k, v = (jax.lax.all_to_all(x, self.seq_axis, 2, 1, tiled=True)
                 for x in (q, k, v))
    elif seq > 1:  # the whole sequence is here: keep head block j only
      q = jax.lax.dynamic_slice_in_dim(q, j * (n // p), n // p, axis=2)
      k = jax.lax.dynamic_slice_in_dim(k, j * kpd, kpd, axis=2)
      v = jax.lax.dynamic_slice_in_dim(v, j * kpd, kpd, axis=2)
    # q [b, T, N/P, D], k, v [b, S, kpd, D]: this device's heads.
    o = self._attend_own_heads(q, k, v, n, i * seq + j, layer_idx, q_offset)
    if ulysses and seq > 1:  # [b, T, N/P, D] -> [b, T/seq, N/P_t, D]
      o = jax.lax.all_to_all(o, self.seq_axis, 1, 2, tiled=True)
    return o

  def _attend_own_heads(self, q, k, v, n, r, layer_idx, q_offset):
    """The wrapped attention for head block r (traced) of n query heads:
    q [b, T, N/P, D], k, v [b, S, kpd, D] -> o [b, T, N/P, D]."""
    p = self.head_parallel
    size = n // p
    if isinstance(self.attention, HeadBlockSliceable):  # one program
      start = jnp.asarray(r, jnp.int32) * size
      fn = self.attention.for_head_block(start, size)
      return fn(q, k, v, layer_idx=layer_idx, q_offset=q_offset)
    branches: list[AttentionFn] = []
    branch_of = []
    for block in range(p):
      fn = attention_for_heads(self.attention, block * size,
                               (block + 1) * size, layer_idx)
      if fn not in branches:
        branches.append(fn)
      branch_of.append(branches.index(fn))
    calls = [lambda q, k, v, fn=fn: fn(q, k, v, layer_idx=layer_idx,
                                       q_offset=q_offset)
             for fn in branches]
    if len(calls) == 1:
      return calls[0](q, k, v)
    index = jnp.asarray(branch_of, jnp.int32)[r]
    return jax.lax.switch(index, calls, q, k, v)


jax.tree_util.register_dataclass(
    UlyssesAttention, data_fields=["attention"],
    meta_fields=["mesh", "seq_axis", "head_axis", "kv_head_axis",
                 "batch_axis"])
