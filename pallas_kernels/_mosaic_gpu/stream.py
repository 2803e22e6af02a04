"""Stream plans: key tiles handed to the producer in order, with gathered tiles.

A stream plan gives `tile_list_attention(..., stream=True)` its key tiles one
producer step at a time, in order, instead of per-index tile starts:
- primary tiles: whole 64-row tiles at 8-aligned starts, each with a header
  word that the producer writes into SMEM beside the ring slot and the
  consumer's `StreamMask` reads (the producer decides the mask: no per-step
  GMEM reads in the compute warpgroup);
- gathered tiles: a primary step may leave one 8-row chunk (an 8-aligned key
  row plus plan bits < 8) to gather; GATHER = 8 pending chunks become one
  gathered 64-row tile (eight 8-row TMA copies: the (8, 64) SMEM tiling with
  the 128-byte swizzle takes 8-row boxes at 8-aligned rows), inserted as the
  next step; the last chunks are gathered after the last primary tile.
  Hopper has no TMA gather, so this is how keys outside whole tiles reach
  the tensor cores: scattered keys permuted into one dense tile, as PIT
  (Zheng et al. 2023) does for sparse columns.
`stream_advance` is the producer's schedule, shared with the tests.
"""

from typing import Callable, NamedTuple, Protocol, Sequence

import jax
import jax.numpy as jnp

GATHER = 8  # 8-row chunks of a gathered key tile (GATHER * 8 = 64 rows)
CHUNK = 8  # rows of a chunk: one (8, swizzle / 2) SMEM tile row
# The first SMEM word of a paired stream step's padding half (no sub-step
# left: an in-range tile, all masked); words of real sub-steps are >= 0.
EMPTY_HALF = -2


class StreamStep(NamedTuple):
  """A stream plan's primary (whole 64-row) tile, as its producer sees it.

  `header` is written into SMEM for the consumer (`StreamMask`), so the
  masks need no GMEM reads; `chunk` (if `has_chunk`) is an 8-row chunk to
  gather into a later gathered tile: an 8-aligned key row plus plan bits
  < 8 (e.g. how many of its keys to keep; 0 must mean none: the slots of a
  gathered tile past its last chunk repeat chunk 0's row with bits 0).
  """

  start: jax.Array  # int32 []: first key row, 8-aligned, in [0, S - 64]
  header: jax.Array  # int32 [] in [0, 2**30)
  has_chunk: jax.Array  # bool []
  chunk: jax.Array  # int32 []: row + bits, row in [0, S - 8]


class StreamMask(NamedTuple):
  """The mask kind of a stream plan's segment, decided per step from the
  words its producer wrote: a primary tile's `header` picks one of `masks`
  (`kind(header)`: 0 = mask-free, k = masks[k - 1](header, rows, cols)); a
  gathered tile takes `gathered(chunks, rows, cols)` with the GATHER chunk
  words. rows: absolute query rows, cols: tile-local key columns (0..63),
  both int32 [64, 64] in the WGMMA layout; masks return bool [64, 64]. The
  step runs as a `lax.switch`; the softmax keeps the all-masked-row guard
  on every step of the segment.
  """

  kind: Callable  # header -> int32 [] in [0, len(masks)]
  masks: tuple  # of (header, rows, cols) -> bool [64, 64]
  gathered: Callable  # (chunks: tuple of GATHER int32 [], rows, cols) -> bool


class StreamPlan(Protocol):
  """A plan whose producer walks its tiles in order (`stream=True`).

  `count(m)` counts the primary tiles and the gathered ones (one per GATHER
  chunks, rounded up); `segments(m)` is one `Segment(count(m),
  StreamMask(...))`.
  """

  def count(self, m: jax.Array) -> jax.Array:
    """int32 []: primary + gathered tiles of query block m."""

  def primary_count(self, m: jax.Array) -> jax.Array:
    """int32 []: primary tiles of query block m."""

  def stream_init(self, m: jax.Array):
    """The stream state (a pytree of int32 []) before primary tile 0."""

  def stream_next(self, m: jax.Array, p: jax.Array, state):
    """(StreamStep of primary tile p < primary_count(m), next state)."""

  def segments(self, m: jax.Array) -> Sequence:
    """(plans.Segment(count(m), StreamMask(...)),)."""


class StreamState(NamedTuple):
  """The producer's walk of one stream: `p` primary tiles issued, `pending`
  chunks waiting to be gathered, the plan's own state."""

  p: jax.Array  # int32 []
  pending: jax.Array  # int32 [] in [0, GATHER]
  plan: object


def stream_advance(state: StreamState, step: StreamStep, next_plan,
                   n_primary, live):
  """One producer step of a stream: (gathered, primary, next state).

  The step gathers the pending chunks (`gathered`) when GATHER are pending
  or the primary tiles are done and some are pending; else (`primary`) it
  is primary tile state.p: `step, next_plan = stream_next(m, state.p,
  state.plan)`, whose chunk, if any, joins the pending ones. `live`: bool
  [], the step is below `count(m)`; a step that is not changes nothing.
  """
  pending = state.pending
  gathered = live & ((pending == GATHER)
                     | ((state.p >= n_primary) & (pending > 0)))
  primary = live & ~gathered
  keep = lambda new, old: jnp.where(primary, new, old)
  return gathered, primary, StreamState(
      p=keep(state.p + 1, state.p),
      pending=jnp.where(gathered, 0,
                        pending + (primary & step.has_chunk).astype(
                            jnp.int32)),
      plan=jax.tree.map(keep, next_plan, state.plan))
