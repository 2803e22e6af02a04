"""The split of a layer's heads into launch groups: one index build and
kernel launch per pattern kind and static builder parameter."""

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
class LaunchGroup:
  """A pattern kind with the static parameter of its index builder
  (`last_q` for Vertical-Slash, `block` for Block-Sparse, else 0): heads
  with equal LaunchGroups share one index build and one kernel launch (the
  per-head budgets are arrays of the builders)."""

  kind: PatternKind
  param: int = 0


def launch_group(pattern: Pattern) -> LaunchGroup:
  """The launch group of a head's pattern."""
  if isinstance(pattern, VerticalSlash):
    return LaunchGroup(pattern.kind, pattern.last_q)
  if isinstance(pattern, BlockSparse):
    return LaunchGroup(pattern.kind, pattern.block)
  return LaunchGroup(pattern.kind)


def launch_order(group: LaunchGroup) -> tuple[int, int]:
  """The order groups launch in: by PatternKind, then parameter."""
  return list(PatternKind).index(group.kind), group.param


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
  """Splits a layer's heads into launch groups, in `launch_order`.

  One group per `launch_group` (Vertical-Slash heads split by `last_q`,
  Block-Sparse heads by `block`: the static scalars of the index builders;
  in practice <= 3 sparse groups). With `fold_dense_len = T`, Dense heads
  become AShape(0, T) heads (exactly causal dense attention) and share the
  A-shape launch, where the other heads cost nothing.
  """
  if fold_dense_len is not None:
    patterns = tuple(
        AShape(n_init=0, n_local=fold_dense_len) if isinstance(p, Dense)
        else p
        for p in patterns
    )
  keys = [launch_group(p) for p in patterns]
  return [HeadGroup(group.kind, tuple(k == group for k in keys), patterns)
          for group in sorted(set(keys), key=launch_order)]
