"""The split of a layer's heads into launch groups, one per pattern kind."""

import dataclasses

from minference_jax.patterns import (
    AShape,
    BlockSparse,
    Dense,
    Pattern,
    PatternKind,
    VerticalSlash,
)


@dataclasses.dataclass(frozen=True)
class HeadGroup:
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

  def first(self) -> Pattern:
    """The pattern of the group's first head."""
    return next(p for p, on in zip(self.patterns, self.active) if on)


def group_heads(
    patterns: tuple[Pattern, ...], fold_dense_len: int | None = None
) -> list[HeadGroup]:
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
    groups.append(HeadGroup(kinds[kind_pos], active, patterns))
  return groups
