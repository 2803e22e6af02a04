"""The benchmark's one door into the library below `make_attention`.

The whole-model cases go through `make_attention` only. Two things need
more: the phase breakdown times the index build on its own, and replayed
index sets must reach the Vertical-Slash kernel without the online
estimate choosing them. Both use the public entry points named here
(`minference_jax.index` builders, the per-op kernels), so a change of those
entry points is fixed in this file alone.
"""

from collections.abc import Sequence

import jax

from minference_jax import (
    DenseAttention,
    PatternConfig,
    PatternKind,
    VerticalSlash,
    make_attention,
)
from minference_jax.attention import DEFAULT_DENSE_THRESHOLDS
from minference_jax.index import (
    VerticalSlashIndices,
    block_sparse_indices,
    vertical_slash_indices,
    vertical_slash_layout,
)
from minference_jax.types import AttentionFn
from pallas_kernels.vertical_slash import vertical_slash_attention

_BACKEND = {"auto": "auto", "triton": "pallas", "mosaic_gpu": "pallas",
            "xla": "xla"}
# The benchmark's short names -> the ops' implementation names.
_LIBRARY_NAMES = {"triton": "pallas_triton",
                  "mosaic_gpu": "pallas_mosaic_gpu", "xla": "xla"}


def hopper_gpu() -> bool:
  """Whether the default device is a Hopper GPU (compute capability 9)."""
  if jax.default_backend() != "gpu":
    return False
  cc = str(getattr(jax.devices()[0], "compute_capability", ""))
  return cc.split(".")[0] == "9"


def resolve_implementation(implementation: str, interpret: bool) -> str:
  """"auto" -> the kernels `make_attention(backend="auto")` runs here:
  Mosaic GPU on Hopper, Triton on other GPUs, XLA elsewhere (and in
  interpret mode, Triton)."""
  if implementation != "auto":
    return implementation
  if interpret:
    return "triton"
  if jax.default_backend() != "gpu":
    return "xla"
  return "mosaic_gpu" if hopper_gpu() else "triton"


def default_threshold(kind: PatternKind = PatternKind.VERTICAL_SLASH) -> int:
  """`make_attention(backend="auto")`'s dense threshold for a pattern kind."""
  return dict(DEFAULT_DENSE_THRESHOLDS).get(kind, 0)


def build_attention(
    patterns: PatternConfig | VerticalSlash | None,
    implementation: str,
    dense_threshold: int | None,
    interpret: bool,
) -> AttentionFn:
  """The library's attention for a case (the path users run).

  Args:
    patterns: None for dense, else a config or one pattern for every head.
    implementation: "auto" | "triton" | "mosaic_gpu" | "xla".
    dense_threshold: None: make_attention's default ("auto") or 0.
    interpret: Pallas interpret mode.

  """
  backend = _BACKEND[implementation]
  if patterns is None:
    if implementation == "xla":
      return DenseAttention(implementation="xla", interpret=interpret)
    return make_attention(None, "dense", interpret=interpret)
  if dense_threshold is None and backend != "auto":
    dense_threshold = 0
  return make_attention(patterns, backend, dense_threshold=dense_threshold,
                        implementation=_LIBRARY_NAMES.get(implementation),
                        interpret=interpret)


# ---------------------------------------------------------- index builds
def vs_estimate(q, k, n_vertical: int | Sequence[int],
                n_slash: int | Sequence[int], *, implementation: str,
                interpret: bool) -> VerticalSlashIndices:
  """The online Vertical-Slash estimate the given kernels' backend runs
  (fused Pallas scores on GPU, XLA scores elsewhere)."""
  scores = "xla" if implementation == "xla" else "pallas"
  return vertical_slash_indices(q, k, n_vertical, n_slash, scores=scores,
                                interpret=interpret and scores == "pallas")


def vs_layout(indices: VerticalSlashIndices, seq_len: int):
  """The expanded kernel layout of Vertical-Slash lines."""
  return vertical_slash_layout(indices, seq_len)


def layer_index_build(q, k, layer: Sequence, *, implementation: str,
                      interpret: bool):
  """Everything `MInferenceAttention` builds before its kernels for one
  layer: per pattern kind group, the estimate and the layout (A-shape and
  dense heads need none). Returns a pytree of the layouts.

  Args:
    q, k: the layer's [B, T, N, D] / [B, T, K, D].
    layer: the layer's per-head patterns.
  """
  t = q.shape[1]
  out = []
  vs = [p if isinstance(p, VerticalSlash) else None for p in layer]
  if any(vs):
    for last_q in sorted({p.last_q for p in vs if p is not None}):
      active = tuple(p is not None and p.last_q == last_q for p in vs)
      nv = tuple(p.n_vertical if on else 0 for p, on in zip(vs, active))
      ns = tuple(p.n_slash if on else 0 for p, on in zip(vs, active))
      scores = "xla" if implementation == "xla" else "pallas"
      ind = vertical_slash_indices(
          q, k, nv, ns, last_q, active=active, scores=scores,
          interpret=interpret and scores == "pallas")
      out.append(vertical_slash_layout(ind, t))
  bs = [p for p in layer if p.kind is PatternKind.BLOCK_SPARSE]
  for top_k in sorted({p.top_k for p in bs}):
    active = tuple(p.kind is PatternKind.BLOCK_SPARSE and p.top_k == top_k
                   for p in layer)
    block = next(p.block for p in bs if p.top_k == top_k)
    out.append(block_sparse_indices(q, k, top_k, block, active=active))
  return out


# ----------------------------------------------------------------- kernels
def vs_kernel(q, k, v, layout, *, implementation: str, interpret: bool):
  """Vertical-Slash attention over an expanded layout.

  Args:
    implementation: "triton", "mosaic_gpu" or "xla" (resolved, not "auto").
  """
  return vertical_slash_attention(
      q, k, v, layout, implementation=_LIBRARY_NAMES[implementation],
      interpret=interpret)


def dense_kernel(q, k, v, *, implementation: str, interpret: bool):
  """Causal dense attention (cuDNN on GPU where it applies, else XLA)."""
  impl = "xla" if implementation == "xla" else "auto"
  return DenseAttention(implementation=impl,
                        interpret=interpret).attend(q, k, v)
