"""The attention seam: a factory of AttentionFn objects, dense or MInference."""

import dataclasses
import warnings
from collections.abc import Mapping, Sequence
from typing import Callable, Literal

import jax
import jax.numpy as jnp
from jaxtyping import Array, Float

from minference_jax.attention_inputs import (
    DENSE_IMPLEMENTATIONS,
    DenseImpl,
    IgnoredOptionWarning,
    PerKind,
    Thresholds,
    check_inputs,
    check_per_kind,
    check_thresholds,
    ignored_options,
    is_prefill,
    is_static_int,
    parse_implementation,
    parse_thresholds,
)
from minference_jax.head_groups import HeadGroup, group_heads
from minference_jax.index import (
    a_shape_layout,
    block_sparse_indices,
    vertical_slash_chain_layout,
    vertical_slash_indices,
    vertical_slash_layout,
)
from minference_jax.index_checks import bs_estimate_finite, vs_estimate_finite
from minference_jax.pattern_config import PatternConfig
from minference_jax.patterns import (
    PATTERN_TYPES,
    Pattern,
    PatternKind,
    VerticalSlash,
)
from minference_jax.types import AttentionFn
from pallas_kernels import a_shape, dispatch
from pallas_kernels.a_shape import a_shape_attention
from pallas_kernels.block_sparse import block_sparse_attention
from pallas_kernels.finite import mark_rows
from pallas_kernels.flash import flash_attention
from pallas_kernels.vertical_slash import vertical_slash_attention

# Below these many tokens, backend="auto" runs a pattern kind's heads dense:
# from these lengths index build + kernel beat cuDNN dense on an H200 (bf16,
# N=32, K=8, D=128, MInference default budgets; docs/kernels.md, "Dense-
# fallback crossover"), so "auto" is never slower than dense for any kind.
DEFAULT_DENSE_THRESHOLDS = (
    (PatternKind.A_SHAPE, 16384),
    (PatternKind.BLOCK_SPARSE, 32768),
    (PatternKind.VERTICAL_SLASH, 131072),
)
# The largest of them: one threshold that is safe for every kind.
DEFAULT_DENSE_THRESHOLD = max(v for _, v in DEFAULT_DENSE_THRESHOLDS)
SparseBackend = Literal["xla", "pallas"]
KIND_OPS = {
    PatternKind.A_SHAPE: a_shape_attention,
    PatternKind.VERTICAL_SLASH: vertical_slash_attention,
    PatternKind.BLOCK_SPARSE: block_sparse_attention,
}
KERNEL_SCOPES = {
    PatternKind.A_SHAPE: "minf_a_shape",
    PatternKind.VERTICAL_SLASH: "minf_vertical_slash",
    PatternKind.BLOCK_SPARSE: "minf_block_sparse",
}


@dataclasses.dataclass(frozen=True, kw_only=True)
class DenseAttention:
  """Causal dense attention (GQA without repeating K/V), through the
  `pallas_kernels.flash` op.

  Attributes:
    implementation: "auto" or "cudnn" (cuDNN where it takes the inputs: a
      GPU, fp16/bf16, full prefill; else XLA), "pallas_triton" (the
      Pallas-Triton flash kernel for full prefills, else XLA) or "xla" (the
      chunked XLA path, any device). Decode and chunked steps always run
      XLA.
    interpret: run Pallas kernels in interpret mode (CPU tests).
  """

  implementation: DenseImpl = "auto"
  interpret: bool = False

  def __post_init__(self):
    if self.implementation not in DENSE_IMPLEMENTATIONS:
      raise ValueError(
          f"implementation must be one of {DENSE_IMPLEMENTATIONS}, got"
          f" {self.implementation!r}"
      )

  def check_model(self, *, num_layers: int, num_heads: int) -> None:
    """Dense attention serves any model."""
    del num_layers, num_heads

  def implementation_order(self) -> tuple[str, ...]:
    """The `flash_attention` implementations tried, in order."""
    if self.implementation in ("auto", "cudnn"):
      return (dispatch.CUDNN, dispatch.XLA)
    if self.implementation == "pallas_triton":
      return (dispatch.PALLAS_TRITON, dispatch.XLA)
    return (dispatch.XLA,)

  def __call__(
      self,
      q: Float[Array, "B T N D"],
      k: Float[Array, "B S K D"],
      v: Float[Array, "B S K D"],
      *,
      layer_idx: int,
      q_offset: int = 0,
  ) -> Float[Array, "B T N D"]:
    """Causal attention; query t sits at position q_offset + t.

    Args:
      q: [B, T, N, D] queries.
      k: [B, S, K, D] keys, N % K == 0; head n reads KV head n // (N // K).
      v: [B, S, K, D] values.
      layer_idx: static layer index (unused by dense attention).
      q_offset: static position of q[:, 0].

    Returns:
      [B, T, N, D] in q's dtype.

    Raises:
      ValueError, TypeError: on inconsistent shapes, dtypes or indices.
    """
    check_inputs(q, k, v, layer_idx, q_offset)
    return self.attend(q, k, v, q_offset=q_offset)

  def attend(self, q, k, v, *, q_offset: int = 0) -> jax.Array:
    """Like __call__ without validation (for callers that validated)."""
    with jax.named_scope("minf_dense"):
      return flash_attention(
          q, k, v, q_offset=q_offset,
          implementation=self.implementation_order(),
          interpret=self.interpret,
      )


@dataclasses.dataclass(frozen=True, kw_only=True)
class MInferenceAttention:
  """Per-layer, per-head MInference sparse prefill attention.

  MInference (Jiang et al., 2024): for a full prefill (T == S, q_offset
  == 0) of at least `dense_threshold` tokens, the layer's heads are grouped
  by pattern kind (a Python loop over at most a few groups, never over
  heads); each group builds its index structure for ALL heads with the
  other heads inactive and calls its op (`pallas_kernels.<op>`) with the
  kind's implementation order, and the group outputs are merged with a
  per-head select. Dense heads run `dense` attention, or join the A-shape
  launch as AShape(0, T) heads (exactly causal dense attention) when the
  A-shape implementations are Pallas kernels, which skip inactive heads.
  Decode and chunked steps (T != S or q_offset != 0) and all-dense layers
  always run `dense`. A kind whose implementations raise
  NotImplementedError (none of them supports the inputs here) runs dense.

  Attributes:
    pattern_config: a PatternConfig, or one Pattern used for every head of
      every layer.
    backend: the family of the default implementations: "xla" (the
      plain-JAX implementations, any device) or "pallas" (Mosaic GPU where
      it takes the inputs, then Pallas-Triton; Pallas-Triton only in
      interpret mode). See `implementation_order`.
    implementation: per sparse kind, the implementations tried in order,
      overriding the backend's: ((PatternKind, (name, ...)), ...) with
      names "pallas_mosaic_gpu", "pallas_triton", "xla".
    vs_layout: the Vertical-Slash layout, "expanded"
      (`vertical_slash_layout`, [B, N, Tb, NS] int32, the faster kernels)
      or "chain" (`vertical_slash_chain_layout`, O(T) per head; only
      Pallas-Triton walks it, so Vertical-Slash heads then run Pallas-
      Triton; docs/kernels.md compares the two). An XLA Vertical-Slash
      order always uses the expanded layout. Without "xla" in the
      Vertical-Slash order, the estimate's scores come from the fused
      Pallas kernel and the chain layout from its Pallas builder.
    dense_threshold: full prefills shorter than this many tokens run dense;
      an int for every kind, or ((PatternKind, int), ...) per kind (kinds
      not listed: 0).
    interpret: run Pallas kernels in interpret mode (CPU tests).
    dense: the dense attention used for dense heads, short inputs and
      decode steps.
  """

  pattern_config: PatternConfig | Pattern
  backend: SparseBackend = "xla"
  implementation: PerKind = ()
  vs_layout: Literal["expanded", "chain"] = "expanded"
  dense_threshold: Thresholds = 0
  interpret: bool = False
  dense: DenseAttention = DenseAttention()

  def __post_init__(self):
    if not isinstance(self.pattern_config, (PatternConfig, *PATTERN_TYPES)):
      raise TypeError(
          "pattern_config must be a PatternConfig or a Pattern, got"
          f" {type(self.pattern_config).__name__}"
      )
    if self.backend not in ("xla", "pallas"):
      raise ValueError(
          f"backend must be 'xla' or 'pallas', got {self.backend!r}"
      )
    check_per_kind(self.implementation)
    check_thresholds(self.dense_threshold)
    if not isinstance(self.dense, DenseAttention):
      raise TypeError(f"dense must be a DenseAttention, got {self.dense!r}")
    if self.vs_layout not in ("expanded", "chain"):
      raise ValueError(
          f"vs_layout must be 'expanded' or 'chain', got {self.vs_layout!r}"
      )

  def _given_order(self, kind: PatternKind) -> tuple[str, ...]:
    given = dict(self.implementation).get(kind)
    if given is not None:
      return given
    if self.backend == "xla":
      return (dispatch.XLA,)
    if self.interpret:  # Mosaic GPU interpret mode only when named
      return (dispatch.PALLAS_TRITON,)
    return (dispatch.PALLAS_MOSAIC_GPU, dispatch.PALLAS_TRITON)

  def uses_chain_layout(self) -> bool:
    """Whether Vertical-Slash heads get the chain layout."""
    return (self.vs_layout == "chain"
            and dispatch.XLA not in self._given_order(
                PatternKind.VERTICAL_SLASH))

  def implementation_order(self, kind: PatternKind) -> tuple[str, ...]:
    """The implementations of `kind`'s op tried, in order.

    `implementation`'s entry for the kind, else the backend's: "xla" ->
    ("xla",); "pallas" -> ("pallas_mosaic_gpu", "pallas_triton"), or
    ("pallas_triton",) in interpret mode. Mosaic GPU falls through where it
    does not take the inputs (off Hopper, dtypes other than bf16/fp16, D not
    in {64, 128, 256}, T not a multiple of 64, Vertical-Slash T above its
    `MAX_T`). With the chain layout Vertical-Slash runs ("pallas_triton",).
    """
    if kind is PatternKind.VERTICAL_SLASH and self.uses_chain_layout():
      return (dispatch.PALLAS_TRITON,)
    return self._given_order(kind)

  def threshold_for(self, kind: PatternKind) -> int:
    """Full prefills shorter than this run `kind`'s heads dense."""
    if is_static_int(self.dense_threshold):
      return int(self.dense_threshold)
    return dict(self.dense_threshold).get(kind, 0)

  def check_model(self, *, num_layers: int, num_heads: int) -> None:
    """Raises ValueError unless the pattern config has exactly the model's
    layers and query heads per layer (a single Pattern fits any model)."""
    cfg = self.pattern_config
    if not isinstance(cfg, PatternConfig):
      return
    if cfg.num_layers != num_layers or cfg.num_heads != num_heads:
      raise ValueError(
          f"the pattern config has {cfg.num_layers} layers x"
          f" {cfg.num_heads} heads but the model has {num_layers} layers x"
          f" {num_heads} query heads"
          + (f" (config for {cfg.model!r})" if cfg.model else ""))

  def layer_patterns(
      self, layer_idx: int, num_heads: int
  ) -> tuple[Pattern, ...]:
    """The patterns of a layer's query heads.

    Raises:
      ValueError: if layer_idx is out of the config's range or the config's
        head count differs from num_heads.
    """
    cfg = self.pattern_config
    if not isinstance(cfg, PatternConfig):
      return (cfg,) * num_heads
    if not 0 <= layer_idx < cfg.num_layers:
      raise ValueError(
          f"layer_idx={layer_idx} out of range: the pattern config has"
          f" {cfg.num_layers} layers"
      )
    if cfg.num_heads != num_heads:
      raise ValueError(
          f"the pattern config has {cfg.num_heads} heads per layer but q has"
          f" N={num_heads} query heads"
      )
    return cfg.layers[layer_idx]

  def __call__(
      self,
      q: Float[Array, "B T N D"],
      k: Float[Array, "B S K D"],
      v: Float[Array, "B S K D"],
      *,
      layer_idx: int,
      q_offset: int = 0,
  ) -> Float[Array, "B T N D"]:
    """Causal attention with the layer's per-head sparse patterns.

    Args:
      q: [B, T, N, D] queries (RoPE applied).
      k: [B, S, K, D] keys, N % K == 0; head n reads KV head n // (N // K).
      v: [B, S, K, D] values.
      layer_idx: static layer index into the pattern config.
      q_offset: static position of q[:, 0]; nonzero runs dense.

    Returns:
      [B, T, N, D] in q's dtype.

    Raises:
      ValueError, TypeError: on inconsistent shapes or dtypes, a layer index
        outside the config, or a config whose head count is not N.
    """
    check_inputs(q, k, v, layer_idx, q_offset)
    patterns = self.layer_patterns(layer_idx, q.shape[2])
    t = q.shape[1]
    sparse_kinds = {p.kind for p in patterns if p.kind is not
                    PatternKind.DENSE}
    if not is_prefill(q, k, q_offset) or all(
        t < self.threshold_for(kind) for kind in sparse_kinds
    ):  # (also true when every head is dense)
      return self.dense.attend(q, k, v, q_offset=q_offset)
    with jax.named_scope(f"minf_layer{layer_idx}"):
      out, dense_out = None, None
      # Pallas kernels skip inactive heads, so dense heads are cheapest as
      # full-window A-shape heads; the XLA path computes every head.
      fold = (None if dispatch.XLA in self.implementation_order(
          PatternKind.A_SHAPE) else t)
      for group in group_heads(patterns, fold):
        o = None
        if (group.kind is not PatternKind.DENSE
            and t >= self.threshold_for(group.kind)):
          try:
            o = self._run_sparse(group, q, k, v)
          except NotImplementedError:
            o = None  # no implementation serves it here: dense heads
        if o is None:
          if dense_out is None:
            dense_out = self.dense.attend(q, k, v)
          o = dense_out
        if out is None:
          out = o  # later groups overwrite every head outside this group
        else:
          select = jnp.asarray(group.active)[None, None, :, None]
          out = jnp.where(select, o, out)  # [B, T, N, D]
      return out

  def _layout(self, group: HeadGroup, q, k):
    """The group's index layout (all N heads, the others inactive) and the
    op's config."""
    t = q.shape[1]
    if group.kind is PatternKind.A_SHAPE:
      n_init, n_local = group.values("n_init"), group.values("n_local")
      config = None
      if self.implementation_order(group.kind) == (dispatch.XLA,):
        config = a_shape.xla.Config(max_init=min(max(n_init), t),
                                    max_local=min(max(n_local), t))
      return a_shape_layout(n_init, n_local), config
    if group.kind is PatternKind.VERTICAL_SLASH:
      pallas = dispatch.XLA not in self.implementation_order(group.kind)
      indices = vertical_slash_indices(
          q, k, group.values("n_vertical"), group.values("n_slash"),
          group.first().last_q, active=group.active,
          scores="pallas" if pallas else "xla", interpret=self.interpret,
      )
      if self.uses_chain_layout():
        return vertical_slash_chain_layout(
            indices, t, builder="pallas", interpret=self.interpret), None
      return vertical_slash_layout(indices, t), None
    return block_sparse_indices(q, k, group.values("top_k"),
                                group.first().block, active=group.active), None

  def _run_sparse(self, group: HeadGroup, q, k, v) -> jax.Array:
    """Index building plus the group's op (all N heads).

    The op makes the rows that read a non-finite value NaN
    (`pallas_kernels.finite`); here, additionally, the rows whose layout
    was estimated from a NaN or inf (`estimate_finite_rows`), which the
    index builders leave without keys rather than rank by NaN scores.
    """
    kind = group.kind

    def run(layout, config):
      return KIND_OPS[kind](q, k, v, layout,
                        implementation=self.implementation_order(kind),
                        config=config, interpret=self.interpret)

    if kind is PatternKind.A_SHAPE:  # no estimate: per-head bounds only
      with jax.named_scope(KERNEL_SCOPES[kind]):
        return run(*self._layout(group, q, k))
    with jax.named_scope("minf_estimate"):
      layout, config = self._layout(group, q, k)
    with jax.named_scope(KERNEL_SCOPES[kind]):
      o = run(layout, config)
    return mark_rows(o, ~estimate_finite_rows(group.first(), q, k))


def estimate_finite_rows(pattern: Pattern, q, k) -> jax.Array:
  """[B, T, N] bool: rows whose online estimate under `pattern` read only
  finite values (Vertical-Slash: the head's last `last_q` query rows and
  its KV head's keys decide every row; Block-Sparse: the row block's query
  rows and the key blocks up to it decide the block's rows)."""
  t = q.shape[1]
  if isinstance(pattern, VerticalSlash):
    ok = vs_estimate_finite(q, k, min(pattern.last_q, t))  # [B, N]
    return jnp.broadcast_to(ok[:, None, :], q.shape[:3])
  ok = bs_estimate_finite(q, k, pattern.block)  # [B, N, Tb]
  rows = jnp.repeat(ok, pattern.block, axis=2)[:, :, :t]  # [B, N, T]
  return jnp.swapaxes(rows, 1, 2)


# --------------------------------------------------------------- registry
Factory = Callable[..., AttentionFn]
_BACKENDS: dict[str, Factory] = {}


def register_backend(name: str, factory: Factory) -> None:
  """Registers `factory(pattern_config, *, dense_threshold, interpret,
  platform, implementation, dense_implementation, vs_layout) ->
  AttentionFn` under `name` for `make_attention`.

  Raises:
    ValueError: if the name is taken or empty.
  """
  if not isinstance(name, str) or not name or name in _BACKENDS:
    raise ValueError(f"backend name {name!r} is empty or already registered")
  _BACKENDS[name] = factory


def available_backends() -> tuple[str, ...]:
  """Names accepted by `make_attention(backend=...)`."""
  return tuple(_BACKENDS)


def _dense_factory(pattern_config, *, dense_threshold, interpret, platform,
                   implementation, dense_implementation, vs_layout):
  del pattern_config, dense_threshold, platform  # every head dense
  del implementation, vs_layout
  return DenseAttention(implementation=dense_implementation or "auto",
                        interpret=interpret)


def _sparse_factory(backend: SparseBackend, dense_default: DenseImpl):
  def factory(pattern_config, *, dense_threshold, interpret, platform,
              implementation, dense_implementation, vs_layout):
    del platform
    dense = DenseAttention(
        implementation=dense_implementation or dense_default,
        interpret=interpret)
    if pattern_config is None:
      return dense
    return MInferenceAttention(
        pattern_config=pattern_config, backend=backend,
        implementation=implementation, vs_layout=vs_layout,
        dense_threshold=dense_threshold or 0, interpret=interpret,
        dense=dense,
    )

  return factory


def _auto_factory(pattern_config, *, dense_threshold, platform, **options):
  backend = "pallas" if platform == "gpu" else "xla"
  threshold = (
      DEFAULT_DENSE_THRESHOLDS if dense_threshold is None else dense_threshold
  )
  return _sparse_factory(backend, "auto")(
      pattern_config, dense_threshold=threshold, platform=platform,
      **options,
  )


register_backend("dense", _dense_factory)
register_backend("xla", _sparse_factory("xla", "xla"))
register_backend("pallas", _sparse_factory("pallas", "pallas_triton"))
register_backend("auto", _auto_factory)


def make_attention(
    pattern_config: PatternConfig | Pattern | None = None,
    backend: str = "auto",
    *,
    dense_threshold: int | Mapping[str | PatternKind, int] | None = None,
    implementation: str | Sequence[str] | Mapping | None = None,
    vs_layout: Literal["expanded", "chain"] = "expanded",
    interpret: bool = False,
    platform: str | None = None,
) -> AttentionFn:
  """Builds the attention callable that models take at construction.

  Backends:
  - "dense": causal dense attention everywhere (cuDNN on GPU where dtype and
    head dim allow, else the chunked XLA path); the config is ignored.
  - "xla": the sparse ops' XLA implementations (any device); dense heads,
    decode steps and a `None` config use the chunked XLA dense path.
  - "pallas": the Pallas kernels (Mosaic GPU where it takes the inputs,
    else Pallas-Triton; `interpret=True` runs Pallas-Triton on CPU); dense
    heads use the Pallas-Triton flash kernel.
  - "auto": "pallas" on GPU and "xla" elsewhere, with cuDNN/XLA dense, and
    dense attention for prefills shorter than `dense_threshold` (default
    `DEFAULT_DENSE_THRESHOLDS`, per pattern kind).

  Args:
    pattern_config: per-layer, per-head patterns; a single Pattern for every
      head; or None for dense attention everywhere.
    backend: a name from `available_backends()`.
    dense_threshold: prefills shorter than this many tokens run dense: one
      int, or a mapping from pattern kind ("a_shape", "vertical_slash",
      "block_sparse" or a PatternKind) to int, kinds not given: 0 (for
      "xla"/"pallas" the default is 0: always sparse).
    implementation: for an ablation, the implementations each sparse kind
      tries in order instead of the backend's: a name ("pallas_mosaic_gpu",
      "pallas_triton", "xla") or a sequence of names for every sparse kind,
      or a mapping from pattern kind to a name or names; the kind "dense"
      takes a dense implementation ("auto", "cudnn", "pallas_triton",
      "xla"). A single name runs that implementation or fails; several
      fall through to the next where one does not take the inputs.
    vs_layout: the Vertical-Slash layout, "expanded" or "chain" (O(T) index
      memory per head; its heads then run Pallas-Triton); see
      `MInferenceAttention`.
    interpret: run Pallas kernels in interpret mode.
    platform: overrides `jax.default_backend()` for "auto" ("gpu", "cpu").

  Returns:
    A frozen, hashable callable `attn(q, k, v, *, layer_idx, q_offset=0)`.

  Warns:
    IgnoredOptionWarning: for each option that has no effect with the
      others (e.g. a pattern_config with backend "dense", vs_layout "chain"
      with an XLA Vertical-Slash order, interpret=True where no Pallas
      kernel runs, an implementation for a kind the config lacks).

  Raises:
    ValueError: on an unknown backend, kind, implementation or layout, or a
      negative threshold.
    TypeError: on a pattern_config of the wrong type.
  """
  if backend not in _BACKENDS:
    raise ValueError(
        f"unknown backend {backend!r}; available: {available_backends()}"
    )
  if pattern_config is not None and not isinstance(
      pattern_config, (PatternConfig, *PATTERN_TYPES)
  ):
    raise TypeError(
        "pattern_config must be a PatternConfig, a Pattern or None, got"
        f" {type(pattern_config).__name__}"
    )
  if vs_layout not in ("expanded", "chain"):
    raise ValueError(
        f"vs_layout must be 'expanded' or 'chain', got {vs_layout!r}"
    )
  per_kind, dense_implementation = parse_implementation(implementation)
  threshold = parse_thresholds(dense_threshold)
  attention = _BACKENDS[backend](
      pattern_config,
      dense_threshold=threshold,
      interpret=bool(interpret),
      platform=platform or jax.default_backend(),
      implementation=per_kind,
      dense_implementation=dense_implementation,
      vs_layout=vs_layout,
  )
  if isinstance(attention, (DenseAttention, MInferenceAttention)):
    for message in ignored_options(
        attention, pattern_config, backend=backend, per_kind=per_kind,
        dense_threshold=threshold, vs_layout=vs_layout,
        interpret=bool(interpret)):
      warnings.warn(message, IgnoredOptionWarning, stacklevel=2)
  return attention
