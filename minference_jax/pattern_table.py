"""A layer's per-head patterns as arrays, so that every layer shares one
compiled program.

MInference (Jiang et al., 2024) gives every (layer, head) its own pattern
kind and budgets. `MInferenceAttention` takes them as static Python values,
so layers whose patterns differ are different programs: a searched config
whose 30 layers all differ compiles 30 layer steps in a layerwise prefill
(`models.LayerwisePrefill`), each with its own copies of the kernels.

`PatternTableAttention` holds one layer's per-head kinds and budgets as int32
arrays [N] (a pattern table) and, as static data, what is common to every
layer of the model: the launch groups the model uses (one per pattern kind
and static builder parameter: Vertical-Slash per `last_q`, Block-Sparse per
`block`, one A-shape group) and every budget's maximum over the model. Each
layer then runs every launch group of the model with the heads of other
groups inactive (counts 0, which the Pallas kernels skip) and the budgets
traced under the model-wide maxima; the index sets and the output are those
of `MInferenceAttention` for that layer. Its array leaves are JAX pytree
data, so `models.LayerwisePrefill` passes them as traced step arguments
(`models.LayerAttentions`, one entry per layer) and compiles one step.

The cost of sharing: a layer launches (and estimates for) every group the
model uses, also groups none of its heads belong to, and a layer whose heads
are all dense runs them as full-window A-shape heads (or `dense` with XLA)
instead of skipping straight to dense attention.
"""

import dataclasses

import jax
import jax.numpy as jnp
from jaxtyping import Array, Float, Int

from minference_jax.attention import (
    KERNEL_SCOPES,
    KIND_OPS,
    MInferenceAttention,
    estimate_finite_rows,
)
from minference_jax.attention_inputs import check_inputs, is_prefill
from minference_jax.index_bs import block_sparse_indices_traced
from minference_jax.index_vs_estimate import vertical_slash_indices_traced
from minference_jax.head_groups import LaunchGroup, launch_group, launch_order
from minference_jax.index_vs_layout import (
    vertical_slash_chain_layout,
    vertical_slash_layout,
)
from minference_jax.pattern_config import PatternConfig
from minference_jax.patterns import (
    AShape,
    BlockSparse,
    Dense,
    PatternKind,
    VerticalSlash,
)
from pallas_kernels import a_shape, dispatch
from pallas_kernels.finite import mark_rows
from pallas_kernels.layouts import AShapeLayout

DENSE_GROUP = -1  # `group` of a Dense head


@dataclasses.dataclass(frozen=True)
class TableBounds:
  """Model-wide static bounds of the per-head budgets (the widths of the
  index arrays every layer's program allocates)."""

  n_vertical: int = 0
  n_slash: int = 0
  top_k: int = 0
  n_init: int = 0
  n_local: int = 0


@dataclasses.dataclass(frozen=True, kw_only=True)
class PatternTableAttention:
  """One layer of a pattern config as arrays; an AttentionFn computing
  `MInferenceAttention`'s result for that layer (module doc).

  Attributes:
    group: [N] int32, the head's index into `groups` (DENSE_GROUP: dense).
    n_vertical, n_slash: [N] int32 Vertical-Slash budgets (0 elsewhere).
    top_k: [N] int32 Block-Sparse budgets (0 elsewhere).
    n_init, n_local: [N] int32 A-shape bounds (0 elsewhere).
    options: the MInferenceAttention whose backend, implementation orders,
      layout, dense thresholds, interpret mode and dense attention apply
      (its pattern config is not read).
    groups: the model's launch groups, in MInferenceAttention's order.
    bounds: the model's budget maxima.
    has_dense: whether any head of the model is dense.
  """

  group: Int[Array, "N"]
  n_vertical: Int[Array, "N"]
  n_slash: Int[Array, "N"]
  top_k: Int[Array, "N"]
  n_init: Int[Array, "N"]
  n_local: Int[Array, "N"]
  options: MInferenceAttention
  groups: tuple[LaunchGroup, ...]
  bounds: TableBounds
  has_dense: bool

  def layer_key(self, layer_idx: int) -> tuple:
    """Every layer computes the same function of its arrays."""
    del layer_idx
    return ()

  def check_model(self, *, num_layers: int, num_heads: int) -> None:
    """The table must hold one entry per query head (ValueError)."""
    del num_layers
    if self.group.shape != (num_heads,):
      raise ValueError(f"the pattern table holds {self.group.shape[0]} heads,"
                       f" the model has {num_heads} query heads")

  def for_head_block(self, start: jax.Array | int,
                     size: int) -> "PatternTableAttention":
    """The table of query heads [start, start + size) (`start` may be
    traced, `size` static): a `parallel.HeadBlockSliceable`, so on a mesh
    every device runs one program over its heads."""
    heads = self.group.shape[0]
    if not 0 < size <= heads:
      raise ValueError(f"a block of {size} heads of a pattern table of"
                       f" {heads}")
    arrays = {name: jax.lax.dynamic_slice_in_dim(getattr(self, name), start,
                                                 size)
              for name in _TABLE_FIELDS}
    return dataclasses.replace(self, **arrays)

  def __call__(
      self,
      q: Float[Array, "B T N D"],
      k: Float[Array, "B S K D"],
      v: Float[Array, "B S K D"],
      *,
      layer_idx: int,
      q_offset: int = 0,
  ) -> Float[Array, "B T N D"]:
    """Causal attention with the table's per-head patterns:
    `MInferenceAttention.__call__` for the layer the table holds.

    Every launch group of the model runs, also one without an active head
    in this layer (its counts are all 0); a full prefill below every
    group's dense threshold, a decode or chunked step runs `dense`.

    Args:
      q: [B, T, N, D] queries (RoPE applied).
      k: [B, S, K, D] keys, N % K == 0; head n reads KV head n // (N // K).
      v: [B, S, K, D] values.
      layer_idx: static layer index (named scope only: the table is the
        layer's).
      q_offset: static position of q[:, 0]; nonzero runs dense.

    Returns:
      [B, T, N, D] in q's dtype.

    Raises:
      ValueError, TypeError: on inconsistent shapes or dtypes, or q with
        another head count than the table.
    """
    check_inputs(q, k, v, layer_idx, q_offset)
    self.check_model(num_layers=0, num_heads=q.shape[2])
    opts, t = self.options, q.shape[1]
    if not is_prefill(q, k, q_offset) or all(
        t < opts.threshold_for(g.kind) for g in self.groups):
      return opts.dense.attend(q, k, v, q_offset=q_offset)
    fold = dispatch.XLA not in opts.implementation_order(PatternKind.A_SHAPE)
    groups = self.groups
    if fold and self.has_dense and LaunchGroup(PatternKind.A_SHAPE) not in (
        groups):
      groups = tuple(sorted((*groups, LaunchGroup(PatternKind.A_SHAPE)),
                            key=launch_order))
    is_dense = self.group == DENSE_GROUP  # [N]
    with jax.named_scope(f"minf_layer{layer_idx}"):
      dense_out = None
      out = None
      if self.has_dense and not fold:
        dense_out = opts.dense.attend(q, k, v)
        out = dense_out
      for group in groups:
        index = self.groups.index(group) if group in self.groups else None
        active = (self.group == index if index is not None
                  else jnp.zeros_like(is_dense))
        if group.kind is PatternKind.A_SHAPE and fold:
          active = active | is_dense
        o = None
        if t >= opts.threshold_for(group.kind):
          try:
            o = self._run(group, active, is_dense & fold, q, k, v)
          except NotImplementedError:
            o = None  # no implementation serves it here: dense heads
        if o is None:
          if dense_out is None:
            dense_out = opts.dense.attend(q, k, v)
          o = dense_out
        out = o if out is None else jnp.where(
            active[None, None, :, None], o, out)  # [B, T, N, D]
      return out

  def _run(self, group: LaunchGroup, active, folded_dense, q, k, v):
    """One launch group's index build and op over all N heads."""
    opts, kind, t = self.options, group.kind, q.shape[1]
    order = opts.implementation_order(kind)

    def run(layout, config=None):
      return KIND_OPS[kind](q, k, v, layout, implementation=order,
                            config=config, interpret=opts.interpret)

    if kind is PatternKind.A_SHAPE:
      layout = AShapeLayout(
          n_init=jnp.where(active & ~folded_dense, self.n_init, 0),
          n_local=jnp.where(folded_dense, t,
                            jnp.where(active, self.n_local, 0)))
      config = None
      if order == (dispatch.XLA,):
        config = a_shape.xla.Config(max_init=min(self.bounds.n_init, t),
                                    max_local=min(self.bounds.n_local, t))
      with jax.named_scope(KERNEL_SCOPES[kind]):
        return run(layout, config)
    if kind is PatternKind.VERTICAL_SLASH:
      with jax.named_scope("minf_estimate"):
        indices = vertical_slash_indices_traced(
            q, k, self.n_vertical, self.n_slash, active,
            max_vertical=self.bounds.n_vertical,
            max_slash=self.bounds.n_slash, last_q=group.param,
            scores="xla" if dispatch.XLA in order else "pallas",
            interpret=opts.interpret)
        if opts.uses_chain_layout():
          layout = vertical_slash_chain_layout(
              indices, t, builder="pallas", interpret=opts.interpret)
        else:
          layout = vertical_slash_layout(indices, t)
      pattern = VerticalSlash(last_q=group.param)
    else:
      with jax.named_scope("minf_estimate"):
        layout = block_sparse_indices_traced(
            q, k, self.top_k, active, max_top_k=self.bounds.top_k,
            block=group.param)
      pattern = BlockSparse(block=group.param)
    with jax.named_scope(KERNEL_SCOPES[kind]):
      o = run(layout)
    return mark_rows(o, ~estimate_finite_rows(pattern, q, k))


_TABLE_FIELDS = ("group", "n_vertical", "n_slash", "top_k", "n_init",
                 "n_local")
jax.tree_util.register_dataclass(
    PatternTableAttention, data_fields=list(_TABLE_FIELDS),
    meta_fields=["options", "groups", "bounds", "has_dense"])


def pattern_tables(
    attention: MInferenceAttention, num_layers: int, num_heads: int
) -> tuple[PatternTableAttention, ...]:
  """The attention's pattern config as one PatternTableAttention per layer.

  Args:
    attention: the MInferenceAttention (a PatternConfig or one Pattern for
      every head; its options carry over).
    num_layers: the model's layers.
    num_heads: the model's query heads per layer.

  Returns:
    One table per layer, all with the same static part (so all layers share
    one compiled step).

  Raises:
    TypeError: if attention is not a MInferenceAttention.
    ValueError: if the config's layer or head count is not the model's.
  """
  if not isinstance(attention, MInferenceAttention):
    raise TypeError("pattern_tables needs a MInferenceAttention, got"
                    f" {type(attention).__name__}")
  attention.check_model(num_layers=num_layers, num_heads=num_heads)
  layers = [attention.layer_patterns(i, num_heads) for i in range(num_layers)]
  heads = [p for layer in layers for p in layer]
  sparse = [launch_group(p) for p in heads if not isinstance(p, Dense)]
  groups = tuple(sorted(set(sparse), key=launch_order))

  def field(pattern_type, name):
    return [getattr(p, name) if isinstance(p, pattern_type) else 0
            for p in heads]

  columns = {
      "n_vertical": field(VerticalSlash, "n_vertical"),
      "n_slash": field(VerticalSlash, "n_slash"),
      "top_k": field(BlockSparse, "top_k"),
      "n_init": field(AShape, "n_init"),
      "n_local": field(AShape, "n_local"),
  }
  bounds = TableBounds(**{name: max(col) for name, col in columns.items()})
  group_ids = [DENSE_GROUP if isinstance(p, Dense)
               else groups.index(launch_group(p)) for p in heads]
  options = dataclasses.replace(attention, pattern_config=Dense())

  def table(values, layer):
    return jnp.asarray(values[layer * num_heads:(layer + 1) * num_heads],
                       jnp.int32)

  return tuple(
      PatternTableAttention(
          group=table(group_ids, i),
          **{name: table(col, i) for name, col in columns.items()},
          options=options, groups=groups, bounds=bounds,
          has_dense=any(isinstance(p, Dense) for p in heads))
      for i in range(num_layers))
