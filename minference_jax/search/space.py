"""The search space and the cost target of the offline pattern search.

MInference (Jiang et al., 2024), section 3.2 and Alg. 1: every head picks
one pattern out of a small space of candidates (A-shape, Vertical-Slash,
Block-Sparse with given budgets) whose kernel cost has been brought to a
common target first (ChangeSpace). Here the space is data: candidates per
kind, written for a reference length and scaled to the search length, plus
the ChangeSpace settings (step, tolerance, how far a budget may move).
"""

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any

from minference_jax.patterns import (
    VS_MIN_SLASH,
    VS_MIN_VERTICAL,
    AShape,
    BlockSparse,
    PatternKind,
    VerticalSlash,
)

SearchPattern = AShape | VerticalSlash | BlockSparse
KINDS = (PatternKind.A_SHAPE, PatternKind.VERTICAL_SLASH,
         PatternKind.BLOCK_SPARSE)
TILE = 64  # the kernels' query-block and key-block size
# The paper's search length (a ~30K-token KV-retrieval prompt) and cost
# target (A-shape with 1K sink + 4K local tokens), section 3.2 / App. C.2.
PAPER_REFERENCE_LENGTH = 30_000
PAPER_TARGET_A_SHAPE = (1024, 4096)


def _is_int(x: Any) -> bool:
  return isinstance(x, int) and not isinstance(x, bool)


def scale_size(size: int, seq_len: int, reference_length: int | None,
               minimum: int = 1) -> int:
  """size * seq_len / reference_length, rounded, at least `minimum`."""
  if reference_length is None:
    return max(size, minimum)
  return max(minimum, round(size * seq_len / reference_length))


def adjustable_field(pattern: SearchPattern) -> str:
  """The budget ChangeSpace moves: A-shape's window, Block-Sparse's top-k,
  and Vertical-Slash's larger budget (slashes on a tie), so a candidate
  keeps its character (mostly lines of one kind) while its cost moves."""
  if isinstance(pattern, AShape):
    return "n_local"
  if isinstance(pattern, BlockSparse):
    return "top_k"
  return "n_vertical" if pattern.n_vertical > pattern.n_slash else "n_slash"


def field_minimum(field: str) -> int:
  """Smallest meaningful value of an adjustable budget (the estimate
  clamps Vertical-Slash budgets to >= 30 verticals, >= 50 slashes)."""
  return {"n_local": 1, "top_k": 1, "n_vertical": VS_MIN_VERTICAL,
          "n_slash": VS_MIN_SLASH}[field]


@dataclasses.dataclass(frozen=True)
class SearchSpace:
  """Candidates per kind and the ChangeSpace settings.

  Attributes:
    candidates: initial candidates, sizes at `reference_length`; kinds
      A-shape, Vertical-Slash and Block-Sparse (no Dense).
    reference_length: the length the sizes were written for; every size is
      scaled by seq_len / reference_length (None: used as written).
    adjust: run ChangeSpace (False keeps the scaled sizes, as MInference's
      public search does).
    step: ChangeSpace's step in lines / tokens / blocks (the paper's 50);
      finer steps are taken only where a step of `step` misses the
      tolerance.
    tolerance: allowed |cost - target| / target.
  """

  candidates: tuple[SearchPattern, ...]
  reference_length: int | None = PAPER_REFERENCE_LENGTH
  adjust: bool = True
  step: int = 50
  tolerance: float = 0.05

  def __post_init__(self):
    if not isinstance(self.candidates, tuple) or not self.candidates:
      raise ValueError("a search space needs at least one candidate")
    for i, c in enumerate(self.candidates):
      if not isinstance(c, (AShape, VerticalSlash, BlockSparse)):
        raise ValueError(
            f"candidate {i}: expected AShape, VerticalSlash or BlockSparse,"
            f" got {type(c).__name__}")
    if len(set(self.candidates)) != len(self.candidates):
      raise ValueError(f"duplicate candidates in {self.candidates}")
    if self.reference_length is not None and (
        not _is_int(self.reference_length) or self.reference_length < 1):
      raise ValueError("reference_length must be a positive int or None,"
                       f" got {self.reference_length!r}")
    if not _is_int(self.step) or self.step < 1:
      raise ValueError(f"step must be a positive int, got {self.step!r}")
    if not 0 < self.tolerance < 1:
      raise ValueError(f"tolerance must be in (0, 1), got {self.tolerance}")

  @classmethod
  def from_dict(cls, data: Mapping[str, Any], **settings) -> "SearchSpace":
    """Builds a space from `{kind: [sizes, ...]}`.

    `a_shape: [[n_init, n_local], ...]`, `vertical_slash: [[n_vertical,
    n_slash], ...]`, `block_sparse: [top_k, ...]`, in that order.

    Raises:
      ValueError: on an unknown kind or a malformed entry, naming it.
    """
    if not isinstance(data, Mapping):
      raise ValueError(f"a search space is a mapping kind -> candidates, got"
                       f" {type(data).__name__}")
    known = [k.value for k in KINDS]
    for kind in data:
      if kind not in known:
        raise ValueError(f"unknown pattern kind {kind!r} in the search space;"
                         f" known kinds: {known}")
    out = []
    for kind in known:
      entries = data.get(kind) or ()
      if not isinstance(entries, (list, tuple)):
        raise ValueError(f"{kind}: expected a list of candidates, got"
                         f" {entries!r}")
      for i, entry in enumerate(entries):
        out.append(_candidate(kind, i, entry))
    return cls(candidates=tuple(out), **settings)

  def to_dict(self) -> dict[str, Any]:
    """The inverse of `from_dict` plus the settings (JSON-friendly)."""
    kinds: dict[str, list] = {k.value: [] for k in KINDS}
    for c in self.candidates:
      kinds[c.kind.value].append(_sizes(c))
    return {"candidates": {k: v for k, v in kinds.items() if v},
            "reference_length": self.reference_length, "adjust": self.adjust,
            "step": self.step, "tolerance": self.tolerance}

  def at_length(self, seq_len: int) -> tuple[SearchPattern, ...]:
    """The candidates with their sizes scaled to `seq_len` (ChangeSpace's
    starting points). Vertical-Slash budgets stay >= 30 / 50, Block-Sparse
    top-k <= the number of blocks."""
    if not _is_int(seq_len) or seq_len < 1:
      raise ValueError(f"seq_len must be a positive int, got {seq_len!r}")
    ref = self.reference_length
    blocks = -(-seq_len // TILE)
    out = []
    for c in self.candidates:
      if isinstance(c, AShape):
        out.append(AShape(
            n_init=scale_size(c.n_init, seq_len, ref, 0) if c.n_init else 0,
            n_local=min(seq_len, scale_size(c.n_local, seq_len, ref))))
      elif isinstance(c, VerticalSlash):
        out.append(VerticalSlash(
            n_vertical=min(seq_len, scale_size(c.n_vertical, seq_len, ref,
                                               VS_MIN_VERTICAL)),
            n_slash=min(seq_len, scale_size(c.n_slash, seq_len, ref,
                                            VS_MIN_SLASH)),
            last_q=c.last_q))
      else:
        out.append(BlockSparse(
            top_k=min(blocks, scale_size(c.top_k, seq_len, ref))))
    return tuple(out)

  def bounds(self, seq_len: int) -> tuple[tuple[int, int], ...]:
    """Per candidate at `seq_len`: the range [lo, hi] of its adjustable
    budget (a single point when adjust is False)."""
    return budget_bounds(self.at_length(seq_len), seq_len, self.adjust)


def budget_bounds(rows, seq_len: int,
                  adjust: bool = True) -> tuple[tuple[int, int], ...]:
  """[lo, hi] of each candidate's adjustable budget at `seq_len`: from the
  estimate's minimum to the whole sequence (all blocks for top-k), or its
  own value when not adjusting."""
  blocks = -(-seq_len // TILE)
  out = []
  for c in rows:
    field = adjustable_field(c)
    value = getattr(c, field)
    if not adjust:
      out.append((value, value))
      continue
    top = blocks if field == "top_k" else seq_len
    out.append((min(field_minimum(field), value), max(top, value)))
  return tuple(out)


def _sizes(c: SearchPattern) -> list[int] | int:
  if isinstance(c, AShape):
    return [c.n_init, c.n_local]
  if isinstance(c, VerticalSlash):
    return [c.n_vertical, c.n_slash]
  return c.top_k


def _candidate(kind: str, i: int, entry: Any) -> SearchPattern:
  where = f"{kind}[{i}]"
  if kind == PatternKind.BLOCK_SPARSE.value:
    if not _is_int(entry):
      raise ValueError(f"{where}: a block_sparse candidate is its top_k (an"
                       f" int), got {entry!r}")
    sizes: Sequence[Any] = (entry,)
  else:
    if (not isinstance(entry, (list, tuple)) or len(entry) != 2
        or not all(_is_int(x) for x in entry)):
      names = ("[n_init, n_local]" if kind == PatternKind.A_SHAPE.value
               else "[n_vertical, n_slash]")
      raise ValueError(f"{where}: expected {names} (two ints), got {entry!r}")
    sizes = entry
  try:
    if kind == PatternKind.A_SHAPE.value:
      return AShape(n_init=sizes[0], n_local=sizes[1])
    if kind == PatternKind.VERTICAL_SLASH.value:
      return VerticalSlash(n_vertical=sizes[0], n_slash=sizes[1])
    return BlockSparse(top_k=sizes[0])
  except (TypeError, ValueError) as e:
    raise ValueError(f"{where}: {e}") from None


@dataclasses.dataclass(frozen=True)
class CostTarget:
  """What every candidate's kernel cost is brought to.

  Either the cost of an A-shape pattern (the paper's: 1K sink + 4K local at
  its ~30K search length, scaled to the search length), or a fraction of
  the causal tiles (`density`).

  Attributes:
    a_shape: (n_init, n_local) at `reference_length`; ignored if density.
    reference_length: the length a_shape was written for (None: as is).
    density: kernel density in (0, 1]: the fraction of the causal 64x64
      tiles computed. Takes precedence over a_shape.
  """

  a_shape: tuple[int, int] = PAPER_TARGET_A_SHAPE
  reference_length: int | None = PAPER_REFERENCE_LENGTH
  density: float | None = None

  def __post_init__(self):
    if self.density is not None and not 0 < self.density <= 1:
      raise ValueError(f"target density must be in (0, 1], got"
                       f" {self.density}")
    if (not isinstance(self.a_shape, tuple) or len(self.a_shape) != 2
        or not all(_is_int(x) and x >= 0 for x in self.a_shape)
        or self.a_shape[1] < 1):
      raise ValueError("target a_shape must be (n_init >= 0, n_local >= 1),"
                       f" got {self.a_shape!r}")

  def a_shape_at(self, seq_len: int) -> AShape:
    """The target A-shape scaled to `seq_len`."""
    n_init, n_local = self.a_shape
    ref = self.reference_length
    return AShape(
        n_init=scale_size(n_init, seq_len, ref, 0) if n_init else 0,
        n_local=min(seq_len, scale_size(n_local, seq_len, ref)))

  def describe(self, seq_len: int) -> str:
    if self.density is not None:
      return f"kernel density {self.density:g}"
    a = self.a_shape_at(seq_len)
    return (f"A-shape {self.a_shape[0]}+{self.a_shape[1]} at"
            f" {self.reference_length} -> {a.n_init}+{a.n_local} at {seq_len}")
