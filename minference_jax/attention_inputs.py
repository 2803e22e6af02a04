"""Checks and normalisation of the attention seam's arguments and options."""

from collections.abc import Mapping, Sequence
from typing import Any, Literal

import jax.numpy as jnp
import numpy as np

from minference_jax.patterns import PatternKind
from pallas_kernels import dispatch

Thresholds = int | tuple[tuple[PatternKind, int], ...]
# The sparse ops' implementations and the dense attention's policies.
SPARSE_IMPLEMENTATIONS = (dispatch.PALLAS_MOSAIC_GPU, dispatch.PALLAS_TRITON,
                          dispatch.XLA)
DenseImpl = Literal["auto", "cudnn", "pallas_triton", "xla"]
DENSE_IMPLEMENTATIONS = ("auto", "cudnn", "pallas_triton", "xla")
# Per sparse kind, the implementations tried in order (overrides of the
# backend's order): ((PatternKind, (name, ...)), ...).
PerKind = tuple[tuple[PatternKind, tuple[str, ...]], ...]
SPARSE_KINDS = (PatternKind.A_SHAPE, PatternKind.VERTICAL_SLASH,
                PatternKind.BLOCK_SPARSE)


def is_static_int(x: Any) -> bool:
  """A Python or NumPy int that is not a bool."""
  return isinstance(x, (int, np.integer)) and not isinstance(x, bool)


def check_thresholds(threshold) -> None:
  """An int >= 0 or ((PatternKind, int >= 0), ...); raises ValueError."""
  values = (
      [threshold] if is_static_int(threshold)
      else [v for _, v in threshold] if isinstance(threshold, tuple)
      and all(isinstance(p, tuple) and len(p) == 2
              and isinstance(p[0], PatternKind) for p in threshold)
      else None
  )
  if values is None or not all(is_static_int(v) and v >= 0 for v in values):
    raise ValueError(
        "dense_threshold must be an int >= 0 or per-kind ints >= 0, got"
        f" {threshold!r}"
    )


def check_inputs(q, k, v, layer_idx, q_offset) -> None:
  """Validates the AttentionFn arguments (shapes, dtypes, static ints).

  Raises:
    TypeError: non-arrays, non-float or mismatched dtypes, non-static or
      negative layer_idx / q_offset.
    ValueError: wrong ranks, mismatched batch or head dim, N % K != 0, or
      q_offset + T > S.
  """
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
  if not is_static_int(layer_idx) or layer_idx < 0:
    raise TypeError(
        f"layer_idx must be a static int >= 0, got {layer_idx!r}"
    )
  if not is_static_int(q_offset) or q_offset < 0:
    raise TypeError(f"q_offset must be a static int >= 0, got {q_offset!r}")
  if q_offset + t > k.shape[1]:
    raise ValueError(
        f"q_offset={q_offset} + T={t} exceeds the S={k.shape[1]} keys"
        f" (q{tuple(q.shape)}, k{tuple(k.shape)})"
    )


def is_prefill(q, k, q_offset: int) -> bool:
  """A full prefill: T == S and q_offset == 0."""
  return q.shape[1] == k.shape[1] and q_offset == 0


def check_per_kind(implementation) -> None:
  """((sparse PatternKind, (name, ...)), ...) with known names."""
  ok = isinstance(implementation, tuple) and all(
      isinstance(e, tuple) and len(e) == 2 and e[0] in SPARSE_KINDS
      and isinstance(e[1], tuple) and e[1]
      and all(name in SPARSE_IMPLEMENTATIONS for name in e[1])
      for e in implementation
  )
  if not ok:
    raise ValueError(
        "implementation must be ((sparse PatternKind, (name, ...)), ...)"
        f" with names in {SPARSE_IMPLEMENTATIONS}, got {implementation!r}"
    )


def _kind(key) -> PatternKind:
  """A PatternKind or its value -> the PatternKind; ValueError if unknown."""
  try:
    return PatternKind(key)
  except ValueError:
    raise ValueError(
        f"unknown pattern kind {key!r}; kinds: {[k.value for k in PatternKind]}"
    ) from None


def _names(value, allowed: tuple[str, ...], what: str) -> tuple[str, ...]:
  """A name or a non-empty sequence of names from `allowed` -> a tuple."""
  names = (value,) if isinstance(value, str) else (
      tuple(value) if isinstance(value, Sequence) else None)
  if not names or not all(isinstance(n, str) and n in allowed
                          for n in names):
    raise ValueError(
        f"{what} must be one of {allowed} or a sequence of them, got"
        f" {value!r}"
    )
  return names


def parse_implementation(implementation) -> tuple[PerKind, DenseImpl | None]:
  """make_attention's `implementation` -> (per sparse kind orders, the
  dense attention's implementation or None).

  A name or a sequence of names applies to every sparse kind; a mapping
  gives them per kind (PatternKind or its value), the kind "dense" one of
  DENSE_IMPLEMENTATIONS.

  Raises:
    ValueError: on an unknown kind or name, or an empty sequence.
  """
  if implementation is None:
    return (), None
  if not isinstance(implementation, Mapping):
    names = _names(implementation, SPARSE_IMPLEMENTATIONS, "implementation")
    return tuple((kind, names) for kind in SPARSE_KINDS), None
  per_kind, dense = {}, None
  for key, value in implementation.items():
    kind = _kind(key)
    if kind is PatternKind.DENSE:
      if value not in DENSE_IMPLEMENTATIONS:
        raise ValueError(
            f"implementation['dense'] must be one of {DENSE_IMPLEMENTATIONS},"
            f" got {value!r}"
        )
      dense = value
    else:
      per_kind[kind] = _names(value, SPARSE_IMPLEMENTATIONS,
                              f"implementation[{kind.value!r}]")
  return tuple((k, per_kind[k]) for k in SPARSE_KINDS if k in per_kind), dense


def parse_thresholds(dense_threshold) -> Thresholds | None:
  """make_attention's `dense_threshold` (None, an int, or a mapping pattern
  kind -> int) -> None, an int or ((PatternKind, int), ...) sorted by kind.

  Raises:
    ValueError: on an unknown kind or a negative or non-int value.
  """
  if dense_threshold is not None and not is_static_int(dense_threshold):
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
    check_thresholds(dense_threshold)
  return dense_threshold


class IgnoredOptionWarning(UserWarning):
  """An option of `make_attention` has no effect with the others given."""


def ignored_options(attention: Any, pattern_config: Any, *, backend: str,
                    per_kind: PerKind, dense_threshold: Any, vs_layout: str,
                    interpret: bool) -> list[str]:
  """What the built attention ignores of what `make_attention` was given.

  Args:
    attention: the built DenseAttention or MInferenceAttention.
    pattern_config: the config given (a PatternConfig, a Pattern or None).
    backend: the backend name given.
    per_kind: the parsed per-kind implementation orders given.
    dense_threshold: the parsed threshold given (None: not given).
    vs_layout: the layout given.
    interpret: the interpret flag given.

  Returns:
    One sentence per ignored option (empty: everything takes effect).
  """
  out = []
  if not hasattr(attention, "pattern_config"):  # every head runs dense
    why = (f"backend {backend!r} runs every head dense" if pattern_config
           is not None else "pattern_config is None: every head runs dense")
    if pattern_config is not None:
      out.append(f"pattern_config is ignored: {why}")
    if per_kind:
      kinds = [k.value for k, _ in per_kind]
      out.append(f"implementation for {kinds} is ignored: {why}")
    if dense_threshold is not None:
      out.append(f"dense_threshold is ignored: {why}")
    if vs_layout != "expanded":
      out.append(f"vs_layout={vs_layout!r} is ignored: {why}")
    orders = [attention.implementation_order()]
  else:
    cfg = attention.pattern_config
    kinds = ({cfg.kind} if not hasattr(cfg, "layers")
             else {p.kind for layer in cfg.layers for p in layer})
    kinds.discard(PatternKind.DENSE)
    for kind, _ in per_kind:
      if kind not in kinds:
        out.append(f"implementation[{kind.value!r}] is ignored: the pattern"
                   f" config has no {kind.value} heads")
    if dense_threshold is not None and not is_static_int(dense_threshold):
      for kind, _ in dense_threshold:
        if kind not in kinds and kind is not PatternKind.DENSE:
          out.append(f"dense_threshold[{kind.value!r}] is ignored: the"
                     f" pattern config has no {kind.value} heads")
    if vs_layout == "chain":
      if PatternKind.VERTICAL_SLASH not in kinds:
        out.append("vs_layout='chain' is ignored: the pattern config has no"
                   " vertical_slash heads")
      elif not attention.uses_chain_layout():
        out.append("vs_layout='chain' is ignored: the Vertical-Slash"
                   " implementations include 'xla', which takes the expanded"
                   " layout only")
    orders = ([attention.dense.implementation_order()]
              + [attention.implementation_order(k) for k in kinds])
  pallas = (dispatch.PALLAS_TRITON, dispatch.PALLAS_MOSAIC_GPU)
  if interpret and not any(n in pallas for order in orders for n in order):
    out.append(f"interpret=True is ignored: no Pallas kernel runs (the"
               f" implementations tried are {sorted({*sum(orders, ())})})")
  return out
