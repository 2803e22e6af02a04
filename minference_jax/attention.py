"""The attention seam: a factory of AttentionFn objects, dense or MInference."""

import dataclasses
from collections.abc import Mapping
from typing import Any, Callable, Literal

import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float

from minference_jax.pattern_config import PatternConfig
from minference_jax.patterns import (
    PATTERN_TYPES,
    AShape,
    BlockSparse,
    Dense,
    Pattern,
    PatternKind,
    VerticalSlash,
)
from minference_jax.types import AttentionFn

# Below these many tokens, backend="auto" runs a pattern kind's heads dense.
# Measured on an H200 (experiments/results/kernel_crossover_h200.json, bf16,
# N=32, K=8, D=128, MInference default budgets): index build + kernel beats
# cuDNN dense from 16K (A-shape), 32K (Block-Sparse) and 128K
# (Vertical-Slash, the pattern of almost every published head), so "auto" is
# never slower than dense for any kind.
DEFAULT_DENSE_THRESHOLDS = (
    (PatternKind.A_SHAPE, 16384),
    (PatternKind.BLOCK_SPARSE, 32768),
    (PatternKind.VERTICAL_SLASH, 131072),
)
# The largest of them: one threshold that is safe for every kind.
DEFAULT_DENSE_THRESHOLD = max(v for _, v in DEFAULT_DENSE_THRESHOLDS)
Thresholds = int | tuple[tuple[PatternKind, int], ...]

DenseImpl = Literal["auto", "cudnn", "xla", "pallas"]
SparseBackend = Literal["xla", "pallas"]


# ------------------------------------------------------------- validation
def _is_static_int(x: Any) -> bool:
  return isinstance(x, (int, np.integer)) and not isinstance(x, bool)


def _check_thresholds(threshold) -> None:
  """An int >= 0 or ((PatternKind, int >= 0), ...); raises ValueError."""
  values = (
      [threshold] if _is_static_int(threshold)
      else [v for _, v in threshold] if isinstance(threshold, tuple)
      and all(isinstance(p, tuple) and len(p) == 2
              and isinstance(p[0], PatternKind) for p in threshold)
      else None
  )
  if values is None or not all(_is_static_int(v) and v >= 0 for v in values):
    raise ValueError(
        "dense_threshold must be an int >= 0 or per-kind ints >= 0, got"
        f" {threshold!r}"
    )


def _check_inputs(q, k, v, layer_idx, q_offset) -> None:
  """Validates the AttentionFn arguments (shapes, dtypes, static ints)."""
  for name, x in (("q", q), ("k", k), ("v", v)):
    if not hasattr(x, "shape") or not hasattr(x, "dtype"):
      raise TypeError(f"{name} must be an array, got {type(x).__name__}")
  if q.ndim != 4 or k.ndim != 4 or v.ndim != 4:
    raise ValueError(
        "q must be [B, T, N, D] and k, v [B, S, K, D]; got q"
        f"{tuple(q.shape)}, k{tuple(k.shape)}, v{tuple(v.shape)}"
    )
  if k.shape != v.shape:
    raise ValueError(
        f"k{tuple(k.shape)} and v{tuple(v.shape)} must have the same shape"
    )
  b, t, n, d = q.shape
  if k.shape[0] != b:
    raise ValueError(f"batch differs: q{tuple(q.shape)}, k{tuple(k.shape)}")
  if k.shape[3] != d:
    raise ValueError(
        f"head dim differs: q{tuple(q.shape)}, k{tuple(k.shape)}"
    )
  if n % k.shape[2]:
    raise ValueError(
        f"query heads N={n} not divisible by KV heads K={k.shape[2]}"
        f" (q{tuple(q.shape)}, k{tuple(k.shape)})"
    )
  if not jnp.issubdtype(q.dtype, jnp.floating):
    raise TypeError(f"q must be floating point, got {q.dtype}")
  if not q.dtype == k.dtype == v.dtype:
    raise TypeError(
        f"q, k, v dtypes must agree, got {q.dtype}, {k.dtype}, {v.dtype}"
    )
  if not _is_static_int(layer_idx) or layer_idx < 0:
    raise TypeError(
        f"layer_idx must be a static int >= 0, got {layer_idx!r}"
    )
  if not _is_static_int(q_offset) or q_offset < 0:
    raise TypeError(f"q_offset must be a static int >= 0, got {q_offset!r}")
  if q_offset + t > k.shape[1]:
    raise ValueError(
        f"q_offset={q_offset} + T={t} exceeds the S={k.shape[1]} keys"
        f" (q{tuple(q.shape)}, k{tuple(k.shape)})"
    )


def _is_prefill(q, k, q_offset: int) -> bool:
  return q.shape[1] == k.shape[1] and q_offset == 0


# ------------------------------------------------------------------ dense
def _gpu_major() -> int | None:
  """Compute-capability major of the default GPU (None off GPU)."""
  if jax.default_backend() != "gpu":
    return None
  try:
    return int(str(jax.devices()[0].compute_capability).split(".")[0])
  except (AttributeError, ValueError):
    return 8


def _cudnn_supported(q) -> bool:
  """cuDNN flash attention constraints (fp16/bf16, D % 8, D <= 128/256)."""
  major = _gpu_major()
  if major is None or q.dtype not in (jnp.bfloat16, jnp.float16):
    return False
  d = q.shape[-1]
  return d % 8 == 0 and d <= (256 if major >= 9 else 128)


def _mosaic_gpu_supported(q) -> bool:
  """The Mosaic GPU sparse kernels' constraints: a Hopper GPU (wgmma/TMA,
  sm_90), fp16/bf16, D in {64, 128, 256}, T a multiple of 64."""
  from pallas_kernels import mosaic_gpu_core

  return _gpu_major() == 9 and mosaic_gpu_core.takes(q)


@dataclasses.dataclass(frozen=True)
class DenseAttention:
  """Causal dense attention (GQA without repeating K/V).

  Attributes:
    implementation: "cudnn" (`jax.nn.dot_product_attention`, GPU, fp16/bf16,
      full prefill only), "pallas" (`pallas_kernels.flash_attention`, full
      prefill only), "xla" (`sparse_xla.dense_attention_xla`, chunked, any
      device, also decode/chunked steps) or "auto" (cuDNN where supported,
      else XLA). Cases an implementation cannot serve (decode steps,
      unsupported dtype or head dim) run the XLA path.
    interpret: run Pallas kernels in interpret mode (CPU tests).
  """

  implementation: DenseImpl = "auto"
  interpret: bool = False

  def __post_init__(self):
    if self.implementation not in ("auto", "cudnn", "xla", "pallas"):
      raise ValueError(
          "implementation must be 'auto', 'cudnn', 'xla' or 'pallas', got"
          f" {self.implementation!r}"
      )

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
    _check_inputs(q, k, v, layer_idx, q_offset)
    return self.attend(q, k, v, q_offset=q_offset)

  def attend(self, q, k, v, *, q_offset: int = 0) -> jax.Array:
    """Like __call__ without validation (for callers that validated)."""
    impl = self.implementation
    with jax.named_scope("minf_dense"):
      if _is_prefill(q, k, q_offset):
        if impl in ("auto", "cudnn") and _cudnn_supported(q):
          return jax.nn.dot_product_attention(
              q, k, v, is_causal=True, implementation="cudnn"
          )
        if impl == "pallas":
          from pallas_kernels import flash_attention

          try:
            return flash_attention(q, k, v, interpret=self.interpret)
          except NotImplementedError:
            pass  # e.g. an unsupported head dim: the XLA path below
      from minference_jax.sparse_xla import dense_attention_xla

      return dense_attention_xla(q, k, v, q_offset=q_offset)


# ------------------------------------------------------- MInference layers
@dataclasses.dataclass(frozen=True)
class _Group:
  """Heads of one layer that share one index build and one kernel launch.

  `active[n]` says whether head n belongs to the group; `patterns` holds the
  layer's patterns (only those of active heads are read).
  """

  kind: PatternKind
  active: tuple[bool, ...]
  patterns: tuple[Pattern, ...]

  def values(self, field: str) -> tuple[int, ...]:
    """Per-head value of a pattern field; 0 for heads outside the group."""
    return tuple(
        getattr(p, field) if on else 0
        for p, on in zip(self.patterns, self.active)
    )


def _group_heads(
    patterns: tuple[Pattern, ...], fold_dense_len: int | None = None
) -> list[_Group]:
  """Splits a layer's heads into launch groups, in PatternKind order.

  One group per kind; Vertical-Slash heads are split further by `last_q`
  and Block-Sparse heads by `top_k` (these are static scalars of the index
  builders), which in practice still gives <= 3 sparse groups. With
  `fold_dense_len = T`, Dense heads become AShape(0, T) heads (exactly
  causal dense attention) and share the A-shape launch, where the other
  heads cost nothing.
  """
  if fold_dense_len is not None:
    patterns = tuple(
        AShape(n_init=0, n_local=fold_dense_len) if isinstance(p, Dense)
        else p
        for p in patterns
    )

  def key(p: Pattern):
    if isinstance(p, VerticalSlash):
      return p.last_q
    if isinstance(p, BlockSparse):
      return p.top_k
    return 0

  order = {kind: i for i, kind in enumerate(PatternKind)}
  keys = sorted({(order[p.kind], key(p)) for p in patterns})
  kinds = list(PatternKind)
  groups = []
  for kind_pos, param in keys:
    active = tuple(
        order[p.kind] == kind_pos and key(p) == param for p in patterns
    )
    groups.append(_Group(kinds[kind_pos], active, patterns))
  return groups


@dataclasses.dataclass(frozen=True)
class MInferenceAttention:
  """Per-layer, per-head MInference sparse prefill attention.

  For a full prefill (T == S, q_offset == 0) of at least `dense_threshold`
  tokens, the layer's heads are grouped by pattern kind (a Python loop over
  at most a few groups, never over heads); each group builds its index
  structure for ALL heads with the other heads inactive, runs its sparse
  path, and the group outputs are merged with a per-head select. Dense heads
  run `dense` attention (the "xla" backend) or join the Pallas A-shape launch
  as AShape(0, T) heads, which is exactly causal dense attention ("pallas").
  Decode and chunked steps (T != S or q_offset != 0) and all-dense layers
  always run `dense`. A sparse path that raises
  NotImplementedError (e.g. an unsupported head dim) falls back to dense.

  Attributes:
    pattern_config: a PatternConfig, or one Pattern used for every head of
      every layer.
    backend: "xla" (`minference_jax.sparse_xla`) or "pallas"
      (`pallas_kernels`) sparse paths.
    dense_threshold: full prefills shorter than this many tokens run dense;
      an int for every kind, or ((PatternKind, int), ...) per kind (kinds
      not listed: 0).
    interpret: run Pallas kernels in interpret mode (CPU tests).
    dense: the dense attention used for dense heads, short inputs and
      decode steps.
    kernels: the "pallas" backend's sparse kernels: "triton" (Pallas-Triton,
      A100 and newer, any shape), "mosaic_gpu" (Hopper: wgmma + TMA,
      warp-specialised; bf16/fp16, D in {64, 128, 256}, T % 64 == 0) or
      "auto" (see `use_mosaic_gpu`: every sparse kind on Hopper, 1.03-1.38x
      faster than Triton on an H200). The chain VS layout always uses
      Triton.
    vs_layout: Vertical-Slash layout for the "pallas" backend: "expanded"
      (`vertical_slash_layout`, [B, N, Tb, NS] int32, the faster kernel)
      or "chain" (`vertical_slash_chain_layout`, O(T) per head: about 15 GB
      less index memory per layer at 1M tokens, a 1.3-1.6x slower kernel on
      an H200). The "xla" backend always uses the expanded layout.
      The "pallas" backend also scores the Vertical-Slash estimate with the
      fused kernel (`vertical_slash_indices(scores="pallas")`) and builds
      the chain layout with its kernels (`builder="pallas"`).
  """

  pattern_config: PatternConfig | Pattern
  backend: SparseBackend = "xla"
  dense_threshold: Thresholds = 0
  interpret: bool = False
  dense: DenseAttention = DenseAttention()
  vs_layout: Literal["expanded", "chain"] = "expanded"
  kernels: Literal["auto", "triton", "mosaic_gpu"] = "auto"

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
    _check_thresholds(self.dense_threshold)
    if not isinstance(self.dense, DenseAttention):
      raise TypeError(f"dense must be a DenseAttention, got {self.dense!r}")
    if self.vs_layout not in ("expanded", "chain"):
      raise ValueError(
          f"vs_layout must be 'expanded' or 'chain', got {self.vs_layout!r}"
      )
    if self.kernels not in ("auto", "triton", "mosaic_gpu"):
      raise ValueError(
          "kernels must be 'auto', 'triton' or 'mosaic_gpu', got"
          f" {self.kernels!r}"
      )

  def use_mosaic_gpu(self, q, kind: PatternKind) -> bool:
    """Whether the "pallas" backend runs q's `kind` heads with the Mosaic
    GPU kernel: "mosaic_gpu" always (errors on inputs it cannot take),
    "triton" never, "auto" for every sparse kind on a Hopper GPU for
    inputs the kernels take (never in interpret mode). On an H200 the
    Mosaic GPU kernels are faster than the Triton ones at every measured
    length, 32K-1M (Vertical-Slash by 1.03-1.16x, docs/kernels.md)."""
    if self.backend != "pallas" or self.kernels == "triton":
      return False
    if self.kernels == "mosaic_gpu":
      return True
    if kind is PatternKind.VERTICAL_SLASH:
      from pallas_kernels.vertical_slash.pallas_mosaic_gpu import MAX_T

      if q.shape[1] > MAX_T:  # its tile headers' packing
        return False
    return (kind in (PatternKind.A_SHAPE, PatternKind.BLOCK_SPARSE,
                     PatternKind.VERTICAL_SLASH)
            and not self.interpret and _mosaic_gpu_supported(q))

  def threshold_for(self, kind: PatternKind) -> int:
    """Full prefills shorter than this run `kind`'s heads dense."""
    if _is_static_int(self.dense_threshold):
      return int(self.dense_threshold)
    return dict(self.dense_threshold).get(kind, 0)

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
    _check_inputs(q, k, v, layer_idx, q_offset)
    patterns = self.layer_patterns(layer_idx, q.shape[2])
    t = q.shape[1]
    sparse_kinds = {p.kind for p in patterns if not isinstance(p, Dense)}
    if not _is_prefill(q, k, q_offset) or all(
        t < self.threshold_for(kind) for kind in sparse_kinds
    ):  # (also true when every head is dense)
      return self.dense.attend(q, k, v, q_offset=q_offset)
    with jax.named_scope(f"minf_layer{layer_idx}"):
      out, dense_out = None, None
      # Pallas kernels skip inactive heads, so dense heads are cheapest as
      # full-window A-shape heads; the XLA paths compute every head.
      fold = t if self.backend == "pallas" else None
      for group in _group_heads(patterns, fold):
        o = None
        if (group.kind is not PatternKind.DENSE
            and t >= self.threshold_for(group.kind)):
          try:
            o = self._run_sparse(group, q, k, v)
          except NotImplementedError:
            o = None  # this backend cannot serve it: dense for these heads
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

  def _run_sparse(self, group: _Group, q, k, v) -> jax.Array:
    """Index building plus the sparse path for one group (all N heads)."""
    pallas = self.backend == "pallas"
    t = q.shape[1]
    if group.kind is PatternKind.A_SHAPE:
      from minference_jax.index import a_shape_layout

      n_init, n_local = group.values("n_init"), group.values("n_local")
      with jax.named_scope("minf_a_shape"):
        layout = a_shape_layout(n_init, n_local)
        if pallas and self.use_mosaic_gpu(q, group.kind):
          from pallas_kernels.a_shape.pallas_mosaic_gpu import (
              a_shape_attention_mgpu,
          )

          return a_shape_attention_mgpu(q, k, v, layout,
                                        interpret=self.interpret)
        if pallas:
          from pallas_kernels import a_shape_attention

          return a_shape_attention(q, k, v, layout, interpret=self.interpret)
        from minference_jax.sparse_xla import a_shape_attention_xla

        return a_shape_attention_xla(
            q, k, v, layout,
            max_init=min(max(n_init), t), max_local=min(max(n_local), t),
        )
    if group.kind is PatternKind.VERTICAL_SLASH:
      from minference_jax.index import (
          vertical_slash_chain_layout,
          vertical_slash_indices,
          vertical_slash_layout,
      )

      last_q = next(p.last_q for p, on in zip(group.patterns, group.active)
                    if on)
      with jax.named_scope("minf_estimate"):
        indices = vertical_slash_indices(
            q, k, group.values("n_vertical"), group.values("n_slash"),
            last_q, active=group.active,
            scores="pallas" if pallas else "xla", interpret=self.interpret,
        )
        chain = pallas and self.vs_layout == "chain"
        if chain:
          layout = vertical_slash_chain_layout(
              indices, t, builder="pallas", interpret=self.interpret)
        else:
          layout = vertical_slash_layout(indices, t)
      with jax.named_scope("minf_vertical_slash"):
        if pallas and not chain and self.use_mosaic_gpu(q, group.kind):
          from pallas_kernels.vertical_slash.pallas_mosaic_gpu import (
              vertical_slash_attention_mgpu,
          )

          return vertical_slash_attention_mgpu(q, k, v, layout,
                                               interpret=self.interpret)
        if pallas:
          from pallas_kernels import vertical_slash_attention

          return vertical_slash_attention(
              q, k, v, layout, interpret=self.interpret
          )
        from minference_jax.sparse_xla import vertical_slash_attention_xla

        return vertical_slash_attention_xla(q, k, v, layout)
    if group.kind is PatternKind.BLOCK_SPARSE:
      from minference_jax.index import block_sparse_indices

      pattern = next(p for p, on in zip(group.patterns, group.active) if on)
      with jax.named_scope("minf_estimate"):
        layout = block_sparse_indices(
            q, k, pattern.top_k, pattern.block, active=group.active
        )
      with jax.named_scope("minf_block_sparse"):
        if pallas and self.use_mosaic_gpu(q, group.kind):
          from pallas_kernels.block_sparse.pallas_mosaic_gpu import (
              block_sparse_attention_mgpu,
          )

          return block_sparse_attention_mgpu(q, k, v, layout,
                                             interpret=self.interpret)
        if pallas:
          from pallas_kernels import block_sparse_attention

          return block_sparse_attention(
              q, k, v, layout, interpret=self.interpret
          )
        from minference_jax.sparse_xla import block_sparse_attention_xla

        return block_sparse_attention_xla(q, k, v, layout)
    raise AssertionError(f"no sparse path for {group.kind}")


# --------------------------------------------------------------- registry
Factory = Callable[..., AttentionFn]
_BACKENDS: dict[str, Factory] = {}


def register_backend(name: str, factory: Factory) -> None:
  """Registers `factory(pattern_config, *, dense_threshold, interpret,
  platform) -> AttentionFn` under `name` for `make_attention`.

  Raises:
    ValueError: if the name is taken or empty.
  """
  if not isinstance(name, str) or not name or name in _BACKENDS:
    raise ValueError(f"backend name {name!r} is empty or already registered")
  _BACKENDS[name] = factory


def available_backends() -> tuple[str, ...]:
  """Names accepted by `make_attention(backend=...)`."""
  return tuple(_BACKENDS)


def _dense_factory(pattern_config, *, dense_threshold, interpret, platform):
  del pattern_config, dense_threshold, platform  # every head dense
  return DenseAttention("auto", interpret)


def _sparse_factory(backend: SparseBackend, dense_impl: DenseImpl):
  def factory(pattern_config, *, dense_threshold, interpret, platform):
    del platform
    dense = DenseAttention(dense_impl, interpret)
    if pattern_config is None:
      return dense
    return MInferenceAttention(
        pattern_config, backend, dense_threshold or 0, interpret, dense
    )

  return factory


def _auto_factory(pattern_config, *, dense_threshold, interpret, platform):
  backend = "pallas" if platform == "gpu" else "xla"
  threshold = (
      DEFAULT_DENSE_THRESHOLDS if dense_threshold is None else dense_threshold
  )
  return _sparse_factory(backend, "auto")(
      pattern_config, dense_threshold=threshold, interpret=interpret,
      platform=platform,
  )


register_backend("dense", _dense_factory)
register_backend("xla", _sparse_factory("xla", "xla"))
register_backend("pallas", _sparse_factory("pallas", "pallas"))
register_backend("auto", _auto_factory)


def make_attention(
    pattern_config: PatternConfig | Pattern | None = None,
    backend: str = "auto",
    *,
    dense_threshold: int | Mapping[str | PatternKind, int] | None = None,
    interpret: bool = False,
    platform: str | None = None,
) -> AttentionFn:
  """Builds the attention callable that models take at construction.

  Backends:
  - "dense": causal dense attention everywhere (cuDNN on GPU where dtype and
    head dim allow, else the chunked XLA path); the config is ignored.
  - "xla": the sparse XLA paths (any device); dense heads, decode steps and
    a `None` config use the chunked XLA dense path.
  - "pallas": the Pallas kernels (`interpret=True` runs them on CPU); dense
    heads use the Pallas flash kernel.
  - "auto": "pallas" on GPU and "xla" elsewhere, with cuDNN/XLA dense, and
    dense attention for prefills shorter than `dense_threshold` (default
    `DEFAULT_DENSE_THRESHOLDS`, per pattern kind, measured on an H200).

  Args:
    pattern_config: per-layer, per-head patterns; a single Pattern for every
      head; or None for dense attention everywhere.
    backend: a name from `available_backends()`.
    dense_threshold: prefills shorter than this many tokens run dense: one
      int, or a mapping from pattern kind ("a_shape", "vertical_slash",
      "block_sparse" or a PatternKind) to int, kinds not given: 0 (for
      "xla"/"pallas" the default is 0: always sparse).
    interpret: run Pallas kernels in interpret mode.
    platform: overrides `jax.default_backend()` for "auto" ("gpu", "cpu").

  Returns:
    A frozen, hashable callable `attn(q, k, v, *, layer_idx, q_offset=0)`.

  Raises:
    ValueError: on an unknown backend or a negative threshold.
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
  if dense_threshold is not None and not _is_static_int(dense_threshold):
    if not isinstance(dense_threshold, Mapping):
      raise ValueError(
          "dense_threshold must be an int >= 0, a mapping kind -> int or"
          f" None, got {dense_threshold!r}"
      )
    try:
      dense_threshold = tuple(sorted(
          ((PatternKind(kind), value) for kind, value in
           dense_threshold.items()), key=lambda kv: kv[0].value,
      ))
    except ValueError as e:
      raise ValueError(
          f"dense_threshold has an unknown pattern kind: {e}; kinds:"
          f" {[k.value for k in PatternKind]}"
      ) from None
  if dense_threshold is not None:
    _check_thresholds(dense_threshold)
  return _BACKENDS[backend](
      pattern_config,
      dense_threshold=dense_threshold,
      interpret=bool(interpret),
      platform=platform or jax.default_backend(),
  )
