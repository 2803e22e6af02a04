"""Tile plans: which key tiles a 64-row query block attends to, and masks.

A sparse pattern drives the pipeline (`pipeline.tile_list_attention`) through
a plan of one (batch, head), traced inside the kernel:
- `count(m)`: the number of key tiles of query block m;
- `key_start(m, i)`: the first key row of tile i, in [0, S - key_rows]. It
  must be 8-aligned: Mosaic GPU's TMA into the tiled SMEM that wgmma reads
  takes only rows aligned to the (8, swizzle / 2) tiling;
- `segments(m)`: consecutive step ranges, each with a static mask kind:
  None (mask-free) or a function `mask(i, rows, cols) -> bool [64, KR]` of
  the absolute query rows and key columns of tile i (causal diagonal,
  window edges, ...). Only the tiles that need a mask pay for one.

This is the GPU form of a block-sparse mask's block lists (the per-row-block
compressed lists of MInference, Jiang et al. 2024, and of splash attention's
mask info): the kernel reads the lists as scalars from GMEM and the mask-free
segments skip the mask arithmetic. A stream plan (`stream.StreamPlan`) is the
other kind of plan.
"""

from typing import Callable, NamedTuple, Protocol, Sequence

import jax

from pallas_kernels._mosaic_gpu.stream import StreamMask

# mask(i, rows, cols) -> keep: step i's absolute query rows / key columns,
# both int32 [64, KR] in the WGMMA layout; keep is bool [64, KR].
MaskFn = Callable[[jax.Array, jax.Array, jax.Array], jax.Array]


class Segment(NamedTuple):
  """Steps [previous segment's end, end) of a query block's tile list."""

  end: jax.Array  # int32 []
  mask: MaskFn | StreamMask | None  # static: None = mask-free


class TilePlan(Protocol):
  """One (batch, head)'s key tiles per query block m (traced in-kernel)."""

  def count(self, m: jax.Array) -> jax.Array:
    """int32 []: tiles of query block m."""

  def key_start(self, m: jax.Array, i: jax.Array) -> jax.Array:
    """int32 []: first key row of tile i < count(m), in [0, S - KR]
    (8-aligned; see the module doc)."""

  def segments(self, m: jax.Array) -> Sequence[Segment]:
    """Ascending ends, the last == count(m); one static mask kind each."""


# plan_fn(index_refs, batch, head) -> TilePlan (or StreamPlan); index_refs
# are the GMEM refs of `tile_list_attention`'s `index_args`, read as scalars.
PlanFn = Callable[[tuple, jax.Array, jax.Array], TilePlan]


def causal_mask(i, rows, cols):
  """Key column <= query row (the diagonal tile)."""
  del i
  return cols <= rows
