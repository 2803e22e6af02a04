"""The producer warpgroups of the tile-list pipeline: TMA copies into the rings.

The producer of FlashAttention-3's warp specialisation (Shah et al. 2024,
section 3.1): it reads the plan's tile starts as scalars from GMEM and copies
key/value tile i of ring w into slot i % depth as soon as step i - depth has
released it (one barrier per slot and operand each way), with few registers
(`setmaxnreg`), so the compute warpgroups get the rest. One producer serves
every ring, or (`Config.ring_producers`) one producer per ring.

For a stream plan it also walks the plan in order (`stream.stream_advance`),
writes each step's words into SMEM for the consumer's masks, and gathers the
pending 8-row chunks into a 64-row tile (eight 8-row copies).
"""

import functools
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
from jax import lax
from jax.experimental import pallas as pl
from jax.experimental.pallas import mosaic_gpu as plgpu

from pallas_kernels._mosaic_gpu.config import BLOCK
from pallas_kernels._mosaic_gpu.cta import Cta, block_of, plan_tiles
from pallas_kernels._mosaic_gpu.stream import (
    CHUNK,
    EMPTY_HALF,
    GATHER,
    StreamState,
    stream_advance,
)


class _Producer(NamedTuple):
  """What a producer knows of its CTA's rings."""

  cta: Cta
  kv_head: jax.Array  # int32 []: the KV head of the CTA's query head
  blocks: list  # per ring w: block_of(w), (m, valid, steps)
  n_primary: list | None  # stream: per ring, the plan's primary tiles
  n_tiles: list | None  # stream: per ring, the plan's tiles


class _Half(NamedTuple):
  """One 64-row half of a stream step, as the producer planned it (carried
  a step ahead with `Config.plan_ahead`)."""

  empty: jax.Array  # bool []: a paired step's padding half
  gathered: jax.Array  # bool []: the half is a gathered tile
  left: tuple  # (wrote, index, chunk) of the earlier halves of the step
  pending: jax.Array  # int32 []: chunks pending before this half
  tile: Any  # stream.StreamStep: the plan's next primary tile
  whole: jax.Array  # bool []: the half copies one whole 64-row tile


def producer_warpgroups(cta: Cta) -> None:
  """The producer warpgroup(s): fill the rings, then refill each slot as it
  is released, to the longest ring's step count + depth."""
  launch = cta.launch
  wgs = launch.wgs
  plgpu.set_max_registers(launch.config.registers()[1], action="decrease")
  kv_head = lax.div(cta.head, jnp.int32(launch.dims.g))
  blocks = [block_of(cta, w) for w in range(wgs)]
  n_primary = n_tiles = None
  if launch.stream:
    n_primary = [cta.plan.primary_count(blocks[w][0]) for w in range(wgs)]
    n_tiles = [plan_tiles(cta, w)[2] for w in range(wgs)]
  prod = _Producer(cta, kv_head, blocks, n_primary, n_tiles)
  if launch.config.producers == 1:
    _produce(prod, tuple(range(wgs)))
    return
  for w in range(wgs):  # producer wgs + w drives ring w alone
    pl.when(cta.wg == wgs + w)(functools.partial(_produce, prod, (w,)))


def _produce(prod: _Producer, rings: tuple[int, ...]) -> None:
  """The producer of the rings `rings`: fills them, then refills each slot
  as it is released, to the longest ring's count + depth."""
  depth = prod.cta.launch.depth
  longest = prod.blocks[rings[0]][2]
  for w in rings[1:]:
    longest = jnp.maximum(longest, prod.blocks[w][2])
  if prod.cta.launch.stream:
    _produce_stream(prod, rings, longest)
    return

  for i in range(depth):  # fill the rings
    for w in rings:
      _issue_tile(prod, w, i, wait=False)

  @pl.loop(depth, longest + depth)
  def _(i):
    for w in rings:
      _issue_tile(prod, w, i, wait=True)


def _issue_tile(prod: _Producer, w: int, i, wait: bool) -> None:
  """Step i of ring w: wait for slot i % depth to be released by step
  i - depth (if `wait`), then copy key/value tile i into it (if any).

  The waits run to count + depth, so the producer observes every release
  (Mosaic GPU interpret mode checks that no barrier phase goes unobserved;
  on the GPU the drain is idle time at the end).
  """
  cta = prod.cta
  depth, key_rows = cta.launch.depth, cta.launch.key_rows
  m, _, count = prod.blocks[w]
  slot = lax.rem(i, depth)
  # Read before the wait (an in-range tile even past the count).
  start = cta.plan.key_start(m, jnp.clip(i, 0, jnp.maximum(count - 1, 0)))

  def copy(src_ref, dst_ref, bar):
    @pl.when(i < count)
    def _():
      plgpu.copy_gmem_to_smem(
          src_ref.at[cta.batch, pl.ds(start, key_rows), prod.kv_head],
          dst_ref.at[w, slot], bar.at[w * depth + slot])

  if not wait:
    copy(cta.refs.k, cta.smem.k, cta.bars.k)
    copy(cta.refs.v, cta.smem.v, cta.bars.v)
    return

  @pl.when(i < count + depth)
  def _():
    with jax.named_scope("wait_k_free"):
      plgpu.barrier_wait(cta.bars.k_free.at[w * depth + slot])
    with jax.named_scope("copy_k"):
      copy(cta.refs.k, cta.smem.k, cta.bars.k)
    with jax.named_scope("wait_v_free"):
      plgpu.barrier_wait(cta.bars.v_free.at[w * depth + slot])
    with jax.named_scope("copy_v"):
      copy(cta.refs.v, cta.smem.v, cta.bars.v)


def _produce_stream(prod: _Producer, rings: tuple[int, ...], longest):
  """`_produce` for a stream plan: the carry of each step is each ring's
  `StreamState` (and, with `Config.plan_ahead`, the step's planned
  halves, read during the previous step)."""
  cta = prod.cta
  depth = cta.launch.depth
  carry = tuple(StreamState(jnp.int32(0), jnp.int32(0),
                            cta.plan.stream_init(prod.blocks[w][0]))
                for w in rings)
  if cta.launch.config.plan_ahead:
    first = [_plan_stream_step(prod, w, 0, state)
             for w, state in zip(rings, carry)]
    carry = (tuple(state for _, state in first),
             tuple(planned for planned, _ in first))
  for i in range(depth):  # fill the rings
    carry = _issue_stream_step(prod, rings, carry, i, wait=False)

  @pl.loop(depth, longest + depth, init_carry=carry)
  def _(i, carry):
    return _issue_stream_step(prod, rings, carry, i, wait=True)


def _issue_stream_step(prod: _Producer, rings, carry, i, wait: bool):
  """Step i of the rings `rings` (the plan's reads, the K and V copies);
  the carry is each ring's `StreamState` after step i - 1, and with
  `Config.plan_ahead` also step i's `_plan_stream_step` (read during step
  i - 1). Returns the carry of step i + 1."""
  if not prod.cta.launch.config.plan_ahead:  # ring by ring
    states = list(carry)
    for j, w in enumerate(rings):
      planned, states[j] = _plan_stream_step(prod, w, i, states[j])
      _load_stream_step(prod, w, i, planned, wait, ("k", "v"))
    return tuple(states)
  states, plans = carry
  for j, w in enumerate(rings):
    _load_stream_step(prod, w, i, plans[j], wait, ("k",))
  ahead = [_plan_stream_step(prod, w, i + 1, states[j])
           for j, w in enumerate(rings)]
  for j, w in enumerate(rings):
    _load_stream_step(prod, w, i, plans[j], wait, ("v",))
  return (tuple(state for _, state in ahead),
          tuple(planned for planned, _ in ahead))


def _plan_stream_step(prod: _Producer, w: int, i, state: StreamState):
  """Step i of ring w for a stream plan: the plan's next `halves` tiles,
  each its next primary tile or a gathered tile (`stream_advance`), for
  the slot's 64-row halves; a paired step past the plan's last tile loads
  an in-range tile as an EMPTY_HALF. Only the plan's scalar reads (GMEM)
  and no waits, so that with `Config.plan_ahead` they run a step ahead,
  between the K and the V copies. Returns (the halves and the chunks they
  leave, for `_load_stream_step`; the next `StreamState`)."""
  plan = prod.cta.plan
  halves = prod.cta.launch.halves
  m, _, count = prod.blocks[w]
  n_primary, n_tiles = prod.n_primary[w], prod.n_tiles[w]
  subs, left = [], []
  with jax.named_scope("plan"):
    for half in range(halves):
      # Read before the wait (an in-range primary even past the last).
      p_in = jnp.clip(state.p, 0, jnp.maximum(n_primary - 1, 0))
      tile, next_plan = plan.stream_next(m, p_in, state.plan)
      live = i * halves + half < n_tiles
      gathered, primary, next_state = stream_advance(
          state, tile, next_plan, n_primary, live)
      empty = (i < count) & ~live
      # A gathered half takes its pending chunks from SMEM, except those
      # the earlier halves of this step left (`left`: passed on in
      # registers; every new chunk is stored after the step's copies, so
      # no half's SMEM reads race a store of the same step).
      subs.append(_Half(tile=tile, gathered=gathered,
                        whole=primary | empty, empty=empty,
                        pending=state.pending, left=tuple(left)))
      left.append((primary & tile.has_chunk, state.pending, tile.chunk))
      state = next_state
  return (subs, tuple(left)), state


def _chunk_words(pending_ref, sub: _Half):
  """A gathered half's GATHER chunk words; the slots past its pending
  chunks repeat chunk 0's row with bits 0 (an in-range copy whose keys the
  mask drops)."""
  words = [pending_ref[j] for j in range(GATHER)]
  for wrote, index, chunk in sub.left:
    words = [jnp.where(wrote & (index == j), chunk, word)
             for j, word in enumerate(words)]
  blank = words[0] - (words[0] & (CHUNK - 1))
  return [jnp.where(j < sub.pending, word, blank)
          for j, word in enumerate(words)]


def _load_stream_step(prod: _Producer, w: int, i, planned, wait: bool,
                      which: tuple[str, ...]) -> None:
  """`_issue_tile` for a stream plan and the tiles `which` ("k", "v"):
  waits for ring w's slot (if `wait`), copies step i's halves
  (`_plan_stream_step`) into it (the K copies with each half's words for
  the consumer); after the V copies, stores the step's new pending
  chunks."""
  cta = prod.cta
  depth = cta.launch.depth
  subs, left = planned
  _, _, count = prod.blocks[w]
  slot = lax.rem(i, depth)
  bar = w * depth + slot
  pending_ref = cta.smem.pending.at[w]  # [GATHER]
  load = functools.partial(_copy_halves, prod, w, i, subs, pending_ref, slot,
                           bar)
  parts = {"k": (cta.refs.k, cta.smem.k, cta.bars.k, cta.bars.k_free, True),
           "v": (cta.refs.v, cta.smem.v, cta.bars.v, cta.bars.v_free, False)}
  for part in which:
    src, dst, bars, free, with_words = parts[part]
    if wait:
      @pl.when(i < count + depth)
      def _():
        with jax.named_scope(f"wait_{part}_free"):
          plgpu.barrier_wait(free.at[bar])
        with jax.named_scope(f"copy_{part}"):
          load(src, dst, bars, with_words)
    else:
      with jax.named_scope(f"copy_{part}"):
        load(src, dst, bars, with_words)
  if "v" not in which:  # the V copies still read the pending chunks
    return
  for wrote, index, chunk in left:
    @pl.when(wrote)
    def _():
      pending_ref[index] = chunk


def _copy_halves(prod: _Producer, w: int, i, subs, pending_ref, slot, bar,
                 src_ref, dst_ref, bars, with_words: bool) -> None:
  """The copies of step i's halves from src_ref (K or V) into ring w's
  slot: a whole 64-row tile (its header word first, if `with_words`) or a
  gathered tile of eight 8-row chunks (chunk 0 on the slot's barrier,
  chunks 1..7 on its gather barrier; the chunk words first)."""
  cta = prod.cta
  depth, halves = cta.launch.depth, cta.launch.halves
  for half, sub in enumerate(subs):
    tile, empty = sub.tile, sub.empty
    words_ref = cta.smem.words.at[w, lax.rem(i, 2 * depth), half]
    rows = half * BLOCK

    @pl.when(sub.whole)
    def _():
      if with_words:
        words_ref[0] = jnp.where(empty, EMPTY_HALF, tile.header * 2)
      start = jnp.where(empty, 0, tile.start)
      plgpu.copy_gmem_to_smem(
          src_ref.at[cta.batch, pl.ds(pl.multiple_of(start, 8), BLOCK),
                     prod.kv_head],
          dst_ref.at[w, slot, pl.ds(rows, BLOCK)], bars.at[bar])

    @pl.when(sub.gathered)
    def _():
      chunks = _chunk_words(pending_ref, sub)
      if with_words:
        words_ref[0] = jnp.int32(1)
        for j, word in enumerate(chunks):
          words_ref[1 + j] = word
      for j, word in enumerate(chunks):
        row = pl.multiple_of(word - (word & (CHUNK - 1)), CHUNK)
        plgpu.copy_gmem_to_smem(
            src_ref.at[cta.batch, pl.ds(row, CHUNK), prod.kv_head],
            dst_ref.at[w, slot, pl.ds(rows + j * CHUNK, CHUNK)],
            bars.at[bar] if j == 0 else
            cta.bars.gather.at[bar * halves + half])
