"""The compute (consumer) warpgroups of the tile-list pipeline.

Compute warpgroup w owns query block m = pair * compute_wgs + w: its q tile
(loaded once into SMEM, reused for the output), its own K/V ring (the query
blocks walk different key tiles) and the online-softmax state in registers
(FlashAttention-3, Shah et al. 2024, section 3.1). Per step: wait for the
slot's K, QK^T by wgmma, release the K slot, mask (only in segments whose
plan says so), softmax update, wait for V, P @ V by wgmma (meanwhile waiting
for the next K), release the V slot.
"""

import functools
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
from jax import lax
from jax.experimental import pallas as pl
from jax.experimental.pallas import mosaic_gpu as plgpu

from pallas_kernels._mosaic_gpu import softmax
from pallas_kernels._mosaic_gpu.config import BLOCK
from pallas_kernels._mosaic_gpu.cta import Cta, block_of, schedule_sync
from pallas_kernels._mosaic_gpu.stream import GATHER, StreamMask


class _Block(NamedTuple):
  """The query block of one compute warpgroup."""

  w: jax.Array  # int32 []: the warpgroup (its ring and q/o tile)
  m: jax.Array  # int32 []: the query block (clamped to a real one)
  r0: jax.Array  # int32 []: its first query row
  count: jax.Array  # int32 []: its steps
  qo: Any  # its [64, D] q/o SMEM tile


def compute_warpgroup(cta: Cta) -> None:
  """Attention of this warpgroup's query block over its plan's key tiles,
  written to the output (rows without any key are zero)."""
  launch = cta.launch
  plgpu.set_max_registers(launch.config.registers()[0], action="increase")
  w = cta.wg
  m, valid, count = block_of(cta, w)
  r0 = m * BLOCK
  blk = _Block(w, m, r0, count, cta.smem.qo.at[w])
  plgpu.copy_gmem_to_smem(cta.refs.q.at[cta.batch, pl.ds(r0, BLOCK), cta.head],
                          blk.qo, cta.bars.q.at[w])
  if launch.seeded:  # the lse tile, read at the end
    plgpu.copy_gmem_to_smem(
        cta.refs.seed[1].at[cta.batch, cta.head, pl.ds(r0, BLOCK)],
        cta.smem.lse.at[w], cta.bars.seed[1].at[w])
  acc, m_i, l_i = softmax.empty_state(launch.dims.d)
  plgpu.barrier_wait(cta.bars.q.at[w])

  @pl.when(count > 0)
  def _():
    plgpu.barrier_wait(cta.bars.k.at[w * launch.depth])

  if launch.schedule:
    pl.when(w == 1)(functools.partial(schedule_sync, cta))
  acc, m_i, l_i = _walk_segments(cta, blk, (acc, m_i, l_i))
  if launch.schedule:
    _idle_until_the_other(cta, blk)
  if launch.seeded:
    acc, l_i = _merge_seed(cta, blk, acc, m_i, l_i)
  _store_output(cta, blk, valid, acc, l_i)


def _walk_segments(cta: Cta, blk: _Block, carry):
  """The steps of the plan's segments in order, one `fori_loop` each (a
  static mask kind per segment); carry: (acc, m, l)."""
  start = jnp.int32(0)
  for seg in cta.plan.segments(blk.m):
    end = jnp.minimum(seg.end, blk.count)
    carry = lax.fori_loop(
        start, end, functools.partial(_step, cta, blk, seg.mask), carry)
    start = jnp.maximum(start, end)
  return carry


def _step(cta: Cta, blk: _Block, mask, i, carry):
  """Step i of the query block's key tiles (ring slot i % depth)."""
  launch = cta.launch
  acc, m_i, l_i = carry
  w, depth = blk.w, launch.depth
  slot = lax.rem(i, depth)
  words = None
  if isinstance(mask, StreamMask):  # before the slot is released
    with jax.named_scope("words"):
      words = _stream_words(cta, w, i)
  with jax.named_scope("qk"):
    s_all = _qk_scores(cta, blk, slot)
  # [64, KR] scores; a paired stream's two [64, 64] halves, sliced from one
  # N = 128 wgmma.
  halves = launch.halves
  s = tuple(s_all[:, j * BLOCK:(j + 1) * BLOCK] for j in range(halves)
            ) if halves > 1 else (s_all,)
  plgpu.barrier_arrive(cta.bars.k_free.at[w * depth + slot])
  with jax.named_scope("mask"):
    s = _mask_scores(cta, blk, mask, i, s, words)
  with jax.named_scope("softmax"):
    p, acc, m_new, l_i = softmax.softmax_update(
        s, m_i, l_i, acc, launch.qk_scale, masked=mask is not None)
    p16 = tuple(p_j.astype(launch.dtype) for p_j in p)
  if launch.schedule:
    acc, l_i, m_new, p16 = lax.optimization_barrier((acc, l_i, m_new, p16))
    plgpu.barrier_arrive(cta.bars.schedule)
  with jax.named_scope("wait_v"):
    plgpu.barrier_wait(cta.bars.v.at[w * depth + slot])
  if launch.schedule:
    plgpu.barrier_wait(cta.bars.schedule)

  def wait_next_k():  # overlaps the in-flight P @ V wgmma
    nxt = i + 1

    @pl.when(nxt < blk.count)
    def _():
      plgpu.barrier_wait(cta.bars.k.at[w * depth + lax.rem(nxt, depth)])

  with jax.named_scope("pv_wait_k"):  # P @ V, then the next K
    acc = softmax.wgmma_accumulate(acc, p16, _slot_tiles(cta, w, slot),
                                   wait_next_k, fused=launch.fused)
  plgpu.barrier_arrive(cta.bars.v_free.at[w * depth + slot])
  return acc, m_new, l_i


def _qk_scores(cta: Cta, blk: _Block, slot):
  """[64, key_rows] f32 scores q @ K^T of the slot: one wgmma over the
  whole slot (then the ping-pong hand-over, if on)."""
  def compute_qk(acc_ref):
    plgpu.wgmma(acc_ref, blk.qo, cta.smem.k.at[blk.w, slot].transpose((1, 0)))
    schedule_sync(cta)
    return acc_ref[...]

  return pl.run_scoped(compute_qk, plgpu.ACC((BLOCK, cta.launch.key_rows),
                                             jnp.float32))


def _mask_scores(cta: Cta, blk: _Block, mask, i, s, words):
  """The step's score tiles s (a tuple) masked as the segment says: a
  stream's words per half, a mask function on the tile's key columns, or
  none."""
  if isinstance(mask, StreamMask):
    return tuple(softmax.apply_stream_mask(s_j, mask, first, read, blk.r0)
                 for s_j, (first, read) in zip(s, words, strict=True))
  if mask is None:
    return s
  (s,) = s
  key_start = cta.plan.key_start(blk.m, i)
  return (softmax.masked_scores(s, mask, i, blk.r0, key_start),)


def _slot_tiles(cta: Cta, w, slot):
  """The V slot's tile, or a paired stream's two 64-row halves (the
  P @ V operands)."""
  ring = cta.smem.v
  if cta.launch.halves == 1:
    return (ring.at[w, slot],)
  return tuple(ring.at[w, slot, pl.ds(j * BLOCK, BLOCK)]
               for j in range(cta.launch.halves))


def _stream_words(cta: Cta, w, i):
  """The words the producer wrote for ring w's step i, one pair per 64-row
  half: (header * 2 + gathered, a function that reads its GATHER chunk
  words); on a gathered half, waits for its chunks 1..7 of K and V.

  The words sit in a ring of 2 * depth entries: the producer rewrites step
  i's only for step i + 2 * depth, after step i + depth has released its K
  slot. So the chunk words, read in the mask branch after step i's QK wgmma
  and release, still see step i's words."""
  depth, halves = cta.launch.depth, cta.launch.halves
  slot = lax.rem(i, depth)
  entry = lax.rem(i, 2 * depth)

  def half_words(half):
    word = lambda j: cta.smem.words[w, entry, half, j]
    first = word(0)

    @pl.when((first & 1) != 0)
    def _():
      plgpu.barrier_wait(cta.bars.gather.at[(w * depth + slot) * halves
                                            + half])

    return first, lambda: tuple(word(1 + j) for j in range(GATHER))

  return tuple(half_words(half) for half in range(halves))


def _idle_until_the_other(cta: Cta, blk: _Block) -> None:
  """Keeps the ping-pong in step with the other warpgroup's longer list."""
  other = block_of(cta, 1 - blk.w)[2]

  def idle(i, _):
    schedule_sync(cta)
    schedule_sync(cta)

  lax.fori_loop(blk.count, jnp.maximum(blk.count, other), idle, None)
  pl.when(blk.w == 0)(functools.partial(schedule_sync, cta))


def _merge_seed(cta: Cta, blk: _Block, acc, m_i, l_i):
  """Merges the warpgroup's seed (its output tile loaded into the free q/o
  tile, its lse copy issued at the start) into (acc, l)."""
  w = blk.w
  o_seed, _ = cta.refs.seed
  seed_o_bar, seed_lse_bar = cta.bars.seed
  plgpu.copy_gmem_to_smem(
      o_seed.at[cta.batch, pl.ds(blk.r0, BLOCK), cta.head], blk.qo,
      seed_o_bar.at[w])
  plgpu.barrier_wait(seed_o_bar.at[w])
  plgpu.barrier_wait(seed_lse_bar.at[w])
  return softmax.merge_seed(acc, m_i, l_i, blk.qo, cta.smem.lse.at[w])


def _store_output(cta: Cta, blk: _Block, valid, acc, l_i) -> None:
  """acc / l through the q/o tile into the output (a clamped block that is
  not real is not stored). l >= 1 on every row that saw a key (its max
  contributes exp2(0)), and acc == l == 0 on rows without keys: max(l, 1)
  gives zeros."""
  acc = acc / lax.broadcast_in_dim(jnp.maximum(l_i, 1.0), acc.shape, [0])
  blk.qo[...] = acc.astype(cta.launch.dtype)
  plgpu.commit_smem()

  @pl.when(valid)
  def _():
    plgpu.copy_smem_to_gmem(
        blk.qo, cta.refs.out.at[cta.batch, pl.ds(blk.r0, BLOCK), cta.head])

  plgpu.wait_smem_to_gmem(0)
