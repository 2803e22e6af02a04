"""Logical axis names, the rules that map them to a device mesh, mesh configs.

Every parameter and activation of the decoder names its dimensions with the
logical axes of LOGICAL_AXES. A rules table maps each logical axis to a mesh
axis (or None: replicated), as Flax's logical partitioning does
(`flax.linen.logical_to_mesh_axes`): when two dimensions of one array map to
the same mesh axis, the first in rule order wins and the other stays
replicated.

The mesh has three axes (MESH_AXES):
  data      splits the batch;
  sequence  splits the tokens of norms, projections and the MLP; attention
            switches to head sharding with an all-to-all (DeepSpeed-Ulysses,
            Jacobs et al., 2023; minference_jax/parallel.py);
  tensor    splits weights Megatron-style (heads, MLP width, vocabulary;
            Shoeybi et al., 2019), for models that do not fit one device.

`MeshConfig` is the user-facing config (sizes + rules); `Partitioning` is a
MeshConfig bound to a concrete `jax.sharding.Mesh` (Auto axes: XLA's SPMD
partitioner places activations from the constraints, the attention runs in
`jax.shard_map`). Both are frozen and hashable (static jit arguments).
"""

import dataclasses
import math
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import numpy as np
from flax import linen as nn
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec

from models.config import ModelConfig

# The logical axes every parameter and activation dimension is named with.
# A weight dimension that flattens (heads, head_dim), e.g. wq's N*D columns,
# carries the name of its outer axis: split into contiguous blocks it splits
# whole heads, since N is divisible by the mesh size (checked).
LOGICAL_AXES = ("batch", "seq", "vocab", "embed", "heads", "kv_heads",
                "head_dim", "mlp")
MESH_AXES = ("data", "sequence", "tensor")

# mesh axis name, a tuple of them, or None (replicated)
MeshAxes = str | tuple[str, ...] | None
Rules = tuple[tuple[str, MeshAxes], ...]

# Long-context prefill: tokens over `sequence`, weights over `tensor`,
# hidden (embed) and head_dim dimensions replicated.
DEFAULT_RULES: Rules = (
    ("batch", "data"),
    ("seq", "sequence"),
    ("vocab", "tensor"),
    ("embed", None),
    ("heads", "tensor"),
    ("kv_heads", "tensor"),
    ("head_dim", None),
    ("mlp", "tensor"),
)

# An array's logical axes: one name (or None, never sharded) per dimension.
AxisNames = tuple[str | None, ...]


def _mesh_axes_of(value: MeshAxes) -> tuple[str, ...]:
  if value is None:
    return ()
  return (value,) if isinstance(value, str) else tuple(value)


def check_rules(rules: Sequence[tuple[str, MeshAxes]]) -> Rules:
  """Validates a rules table and returns it as a tuple of pairs.

  Raises:
    ValueError: for an unknown logical or mesh axis, a logical axis listed
      twice or a malformed entry.
  """
  out = []
  seen = set()
  for entry in rules:
    if not isinstance(entry, (tuple, list)) or len(entry) != 2:
      raise ValueError(f"a sharding rule must be (logical_axis, mesh_axis), "
                       f"got {entry!r}")
    logical, mesh = entry
    if logical not in LOGICAL_AXES:
      raise ValueError(f"unknown logical axis {logical!r} in the sharding "
                       f"rules; known logical axes: {LOGICAL_AXES}")
    if logical in seen:
      raise ValueError(f"logical axis {logical!r} appears twice in the "
                       "sharding rules")
    seen.add(logical)
    if isinstance(mesh, list):
      mesh = tuple(mesh)
    for axis in _mesh_axes_of(mesh):
      if axis not in MESH_AXES:
        raise ValueError(f"rule {logical!r} -> {mesh!r}: unknown mesh axis "
                         f"{axis!r}; mesh axes: {MESH_AXES}")
    out.append((logical, mesh))
  return tuple(out)


def check_axis_names(names: AxisNames) -> None:
  """Raises ValueError unless every name is a logical axis (or None)."""
  for name in names:
    if name is not None and name not in LOGICAL_AXES:
      raise ValueError(f"unknown logical axis {name!r} in {names}; known "
                       f"logical axes: {LOGICAL_AXES}")


@dataclasses.dataclass(frozen=True, kw_only=True)
class MeshConfig:
  """Mesh sizes and the logical-axis rules of a multi-device run.

  data * sequence * tensor must equal the number of devices the mesh is
  built on (all of `jax.devices()` by default, every host's with
  jax.distributed).

  Attributes:
    data: devices along the batch.
    sequence: devices along the tokens (the Ulysses degree).
    tensor: devices along the weights' heads, MLP width and vocabulary.
    rules: (logical axis, mesh axis or None) pairs; see DEFAULT_RULES.
  """

  data: int = 1
  sequence: int = 1
  tensor: int = 1
  rules: Rules = DEFAULT_RULES

  def __post_init__(self):
    for name in MESH_AXES:
      value = getattr(self, name)
      if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"mesh size {name} must be an int >= 1, got "
                         f"{value!r}")
    object.__setattr__(self, "rules", check_rules(self.rules))

  @classmethod
  def from_dict(cls, d: Mapping[str, Any]) -> "MeshConfig":
    """From a config mapping (e.g. a YAML `mesh:` block): `data`,
    `sequence`, `tensor` ints and optional `rules`, a list of
    [logical axis, mesh axis | [mesh axes] | null] pairs.

    Raises:
      ValueError: for unknown keys or invalid values (named).
    """
    unknown = set(d) - {"data", "sequence", "tensor", "rules"}
    if unknown:
      raise ValueError(f"unknown mesh config keys {sorted(unknown)}; "
                       "expected data, sequence, tensor, rules")
    kwargs = dict(d)
    if "rules" in kwargs:
      kwargs["rules"] = tuple(
          (entry[0], tuple(entry[1]) if isinstance(entry[1], list)
           else entry[1]) if isinstance(entry, (list, tuple))
          and len(entry) == 2 else entry for entry in kwargs["rules"])
    return cls(**kwargs)

  def to_dict(self) -> dict[str, Any]:
    """The inverse of from_dict (plain lists, for YAML/JSON)."""
    return {"data": self.data, "sequence": self.sequence,
            "tensor": self.tensor,
            "rules": [[k, list(v) if isinstance(v, tuple) else v]
                      for k, v in self.rules]}

  @property
  def shape(self) -> tuple[int, int, int]:
    """(data, sequence, tensor)."""
    return (self.data, self.sequence, self.tensor)

  @property
  def num_devices(self) -> int:
    return math.prod(self.shape)

  def size(self, logical: str) -> int:
    """Devices a logical axis is split over (1 when replicated)."""
    sizes = dict(zip(MESH_AXES, self.shape))
    return math.prod(sizes[a] for a in _mesh_axes_of(self.mesh_axes(logical)))

  def mesh_axes(self, logical: str) -> MeshAxes:
    """The mesh axis (or axes, or None) a logical axis maps to."""
    check_axis_names((logical,))
    return dict(self.rules).get(logical)

  def with_rule(self, logical: str, mesh: MeshAxes) -> "MeshConfig":
    """A copy whose rule for `logical` is replaced."""
    rules = tuple((k, mesh if k == logical else v) for k, v in self.rules)
    if logical not in dict(rules):
      rules += ((logical, mesh),)
    return dataclasses.replace(self, rules=rules)

  def for_model(self, config: ModelConfig) -> "MeshConfig":
    """Checks the geometry against the mesh; resolves the KV-head rule.

    Ulysses runs each device's attention over whole heads: the query heads
    N must split over heads-axis x sequence devices P. GQA KV heads K split
    over the tensor axis when K is divisible by it; otherwise the KV
    projections are replicated over the tensor axis (kv_heads -> None in
    the returned config) and the attention wrapper hands each device the
    KV head its query heads read (replication; see
    minference_jax/parallel.py). K must divide P or be a multiple of it.

    Raises:
      ValueError: naming the heads and mesh sizes when they do not divide.
    """
    n, k = config.num_heads, config.num_kv_heads
    heads_size = self.size("heads")
    seq_axes = _mesh_axes_of(self.mesh_axes("seq"))
    head_axes = _mesh_axes_of(self.mesh_axes("heads"))
    if set(seq_axes) & set(head_axes):
      raise ValueError(f"logical axes 'seq' and 'heads' map to the same mesh "
                       f"axes {set(seq_axes) & set(head_axes)}; attention "
                       "switches between them")
    degree = heads_size * self.size("seq")
    if n % degree:
      raise ValueError(
          f"num_heads={n} is not divisible by the head-parallel degree "
          f"{degree} (heads over {head_axes or 'no axis'} x tokens over "
          f"{seq_axes or 'no axis'}, mesh data={self.data} sequence="
          f"{self.sequence} tensor={self.tensor}): each device attends with "
          "whole query heads")
    out = self
    kv_size = self.size("kv_heads")
    if k % kv_size:
      out = self.with_rule("kv_heads", None)
    if k % degree and degree % k:
      raise ValueError(
          f"num_kv_heads={k} and the head-parallel degree {degree} (mesh "
          f"data={self.data} sequence={self.sequence} tensor={self.tensor}) "
          "must divide one another: each device needs whole KV heads, "
          "replicated when there are fewer KV heads than devices")
    return out

  def make_mesh(self, devices: Sequence[Any] | None = None) -> Mesh:
    """A Mesh over `devices` (default: all) with Auto axes MESH_AXES.

    Raises:
      ValueError: when the device count is not data * sequence * tensor.
    """
    devices = list(jax.devices() if devices is None else devices)
    if len(devices) != self.num_devices:
      raise ValueError(
          f"mesh data={self.data} x sequence={self.sequence} x tensor="
          f"{self.tensor} needs {self.num_devices} devices, got "
          f"{len(devices)}")
    grid = np.asarray(devices, dtype=object).reshape(self.shape)
    return Mesh(grid, MESH_AXES, axis_types=(AxisType.Auto,) * 3)

  def bind(self, devices: Sequence[Any] | None = None) -> "Partitioning":
    """This config on a concrete mesh (see make_mesh)."""
    return Partitioning(mesh=self.make_mesh(devices), rules=self.rules)


@dataclasses.dataclass(frozen=True)
class Partitioning:
  """Logical rules bound to a mesh: specs, shardings and constraints.

  Attributes:
    mesh: a Mesh with (some of) the axes MESH_AXES, Auto axis types.
    rules: validated (logical axis, mesh axes) pairs.
  """

  mesh: Mesh
  rules: Rules = DEFAULT_RULES

  def __post_init__(self):
    object.__setattr__(self, "rules", check_rules(self.rules))
    for logical, value in self.rules:
      for axis in _mesh_axes_of(value):
        if axis not in self.mesh.axis_names:
          raise ValueError(f"rule {logical!r} -> {value!r} names mesh axis "
                           f"{axis!r}, which the mesh {self.mesh.axis_names} "
                           "lacks")

  def mesh_axes(self, logical: str) -> MeshAxes:
    check_axis_names((logical,))
    return dict(self.rules).get(logical)

  def size(self, logical: str) -> int:
    """Devices a logical axis is split over (1 when replicated)."""
    return math.prod(self.mesh.shape[a]
                     for a in _mesh_axes_of(self.mesh_axes(logical)))

  def spec(self, names: AxisNames) -> PartitionSpec:
    """The mesh PartitionSpec of an array with these logical axes.

    Raises:
      ValueError: for an unknown logical axis.
    """
    check_axis_names(names)
    return nn.logical_to_mesh_axes(names, self.rules)

  def sharding(self, names: AxisNames) -> NamedSharding:
    return NamedSharding(self.mesh, self.spec(names))

  def array_sharding(
      self, shape: Sequence[int], names: AxisNames, what: str = "array"
  ) -> NamedSharding:
    """The sharding of an array of this shape, checked to split evenly.

    Raises:
      ValueError: naming `what`, the dimension, its logical axis and the
        mesh axes when a dimension does not divide.
    """
    if len(names) != len(shape):
      raise ValueError(f"{what}: logical axes {names} do not match shape "
                       f"{tuple(shape)}")
    spec = self.spec(names)
    for dim, (size, axes) in enumerate(zip(shape, spec)):
      parts = math.prod(self.mesh.shape[a] for a in _mesh_axes_of(axes))
      if size % parts:
        raise ValueError(
            f"{what}: dimension {dim} ({names[dim]!r}, size {size}) does not "
            f"split over mesh axes {axes!r} ({parts} devices); change the "
            f"mesh or map {names[dim]!r} to None in the rules")
    return NamedSharding(self.mesh, spec)

  def fitted_sharding(
      self, shape: Sequence[int], names: AxisNames
  ) -> NamedSharding:
    """The sharding of these logical axes with every dimension that does
    not divide its mesh axes (e.g. a decode step's single token, a cache of
    odd length) left replicated."""
    if len(names) != len(shape):
      raise ValueError(f"logical axes {names} do not match an array of "
                       f"shape {tuple(shape)}")
    spec = list(self.spec(names))
    spec += [None] * (len(shape) - len(spec))
    for i, axes in enumerate(spec):
      size = math.prod(self.mesh.shape[a] for a in _mesh_axes_of(axes))
      if shape[i] % size:
        spec[i] = None
    return NamedSharding(self.mesh, PartitionSpec(*spec))

  def constrain(self, x: jax.Array, names: AxisNames) -> jax.Array:
    """A sharding constraint from logical names (a hint to XLA's SPMD
    partitioner; see fitted_sharding)."""
    return jax.lax.with_sharding_constraint(
        x, self.fitted_sharding(x.shape, names))


def constrain(
    x: jax.Array, names: AxisNames, partitioning: Partitioning | None
) -> jax.Array:
  """`partitioning.constrain(x, names)`, or x itself on one device (the
  names are checked either way)."""
  check_axis_names(names)
  if partitioning is None:
    if len(names) != x.ndim:
      raise ValueError(f"logical axes {names} do not match an array of "
                       f"shape {x.shape}")
    return x
  return partitioning.constrain(x, names)
