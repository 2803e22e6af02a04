"""Sparse attention patterns: small frozen, hashable dataclasses.

Being hashable, a pattern (or a tuple of them) can be a static argument of
`jax.jit`. Constants and defaults follow MInference 1.0 (arXiv 2407.02490 and
its reference implementation).
"""

import dataclasses
import enum
from typing import Union


class PatternKind(enum.Enum):
  DENSE = "dense"
  A_SHAPE = "a_shape"
  VERTICAL_SLASH = "vertical_slash"
  BLOCK_SPARSE = "block_sparse"


# MInference forces these into every Vertical-Slash estimate.
VS_MIN_VERTICAL = 30  # the first 30 key columns (sinks) are always kept
VS_MIN_SLASH = 50  # budgets are clamped to >= 30 verticals, >= 50 slashes
VS_FORCED_SLASH_OFFSETS = 100  # diagonals with offset 0..99 are always kept
VS_LAST_Q = 64  # queries used for the estimate
# A head missing from a published MInference config gets this pattern.
MINFERENCE_DEFAULT_VS = (1000, 6096)


def _check_int(name: str, value, minimum: int) -> None:
  if isinstance(value, bool) or not isinstance(value, int):
    raise TypeError(f"{name} must be an int, got {type(value).__name__}")
  if value < minimum:
    raise ValueError(f"{name} must be >= {minimum}, got {value}")


@dataclasses.dataclass(frozen=True)
class Dense:
  """Full causal attention."""

  kind = PatternKind.DENSE


@dataclasses.dataclass(frozen=True)
class AShape:
  """Sink tokens plus a causal local window (StreamingLLM-style).

  Query t reads keys j <= t with j < n_init or t - j < n_local.
  MInference's `stream_llm` heads store v = n_init and s = n_local.
  """

  n_init: int = 128
  n_local: int = 3968
  kind = PatternKind.A_SHAPE

  def __post_init__(self):
    _check_int("n_init", self.n_init, 0)
    _check_int("n_local", self.n_local, 1)


@dataclasses.dataclass(frozen=True)
class VerticalSlash:
  """A few key columns every query reads plus diagonals at fixed offsets.

  Indices are estimated online from the last `last_q` queries. The effective
  budgets are clamped to >= 30 verticals / >= 50 slashes and <= T.
  """

  n_vertical: int = 1000
  n_slash: int = 6096
  last_q: int = VS_LAST_Q
  kind = PatternKind.VERTICAL_SLASH

  def __post_init__(self):
    _check_int("n_vertical", self.n_vertical, 0)
    _check_int("n_slash", self.n_slash, 0)
    _check_int("last_q", self.last_q, 1)


@dataclasses.dataclass(frozen=True)
class BlockSparse:
  """Top-k key blocks per query block from mean-pooled block scores."""

  top_k: int = 100
  block: int = 64
  kind = PatternKind.BLOCK_SPARSE

  def __post_init__(self):
    _check_int("top_k", self.top_k, 1)
    _check_int("block", self.block, 1)
    if self.block != 64:
      raise ValueError(
          f"block={self.block}: only 64-token blocks are supported (the"
          " kernels and MInference's estimate use 64x64 tiles)"
      )


Pattern = Union[Dense, AShape, VerticalSlash, BlockSparse]
PATTERN_TYPES = (Dense, AShape, VerticalSlash, BlockSparse)
