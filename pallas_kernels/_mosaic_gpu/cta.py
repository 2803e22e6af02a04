"""What every warpgroup of a tile-list CTA shares: the launch's static shape,
its GMEM refs, SMEM scratch and barriers, and the CTA's place in the grid."""

import dataclasses
import math
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
from jax import lax
from jax.experimental import pallas as pl
from jax.experimental.pallas import mosaic_gpu as plgpu

from pallas_kernels._mosaic_gpu.config import BLOCK, Config, Dims

LOG2E = math.log2(math.e)


@dataclasses.dataclass(frozen=True)
class Launch:
  """Static parameters of one tile-list launch.

  Attributes:
    dims: the problem's static dims (`config.check_inputs`).
    config: the launch knobs.
    dtype: q/k/v/o dtype (bf16 or fp16).
    key_rows: rows of a K/V ring slot ([key_rows, D] tiles).
    stream: the plan is a stream plan (`stream.StreamPlan`).
    seeded: a seed (output, log-sum-exp) is merged at the end.
    fused: P @ V is one register-operand wgmma (False in interpret mode).
  """

  dims: Dims
  config: Config
  dtype: Any
  key_rows: int
  stream: bool
  seeded: bool
  fused: bool

  @property
  def wgs(self) -> int:
    """Compute warpgroups per CTA."""
    return self.config.compute_wgs

  @property
  def depth(self) -> int:
    """Slots of each warpgroup's K/V ring."""
    return self.config.max_concurrent_steps

  @property
  def halves(self) -> int:
    """64-row tiles per step: 2 for a stream's 128-row (paired) slots."""
    return self.key_rows // BLOCK if self.stream else 1

  @property
  def schedule(self) -> bool:
    """Whether the two compute warpgroups run the ping-pong schedule."""
    return self.config.use_schedule_barrier and self.wgs == 2

  @property
  def n_pairs(self) -> int:
    """CTAs per head: groups of `wgs` consecutive query blocks."""
    return pl.cdiv(self.dims.tb, self.wgs)

  @property
  def qk_scale(self) -> float:
    """Softmax scale in base 2 (the kernel uses exp2)."""
    return self.dims.d**-0.5 * LOG2E


class Refs(NamedTuple):
  """The kernel's GMEM refs."""

  index: tuple  # the plan's int32 index arrays
  q: Any  # [B, T, N, D]
  k: Any  # [B, T, K, D]
  v: Any  # [B, T, K, D]
  seed: tuple  # () or (o [B, T, N, D], lse [B, N, T] f32)
  out: Any  # [B, T, N, D]


class Smem(NamedTuple):
  """SMEM scratch, per compute warpgroup w (leading axis)."""

  qo: Any  # [wgs, 64, D]: q, then the seed's output, then o
  k: Any  # [wgs, depth, key_rows, D] ring
  v: Any  # [wgs, depth, key_rows, D] ring
  lse: Any  # [wgs, 64] f32 seed lse, or None
  words: Any  # stream: [wgs, 2 * depth, halves, 1 + GATHER] int32, or None
  pending: Any  # stream: [wgs, GATHER] int32 pending chunks, or None


class Barriers(NamedTuple):
  """mbarriers; ring barriers are indexed w * depth + slot."""

  q: Any  # [wgs]: q tile loaded
  k: Any  # [wgs * depth]: K tile loaded (one arrival per 64-row half)
  v: Any  # [wgs * depth]: V tile loaded
  k_free: Any  # [wgs * depth]: K slot released by the consumer
  v_free: Any  # [wgs * depth]: V slot released
  schedule: Any  # ping-pong barrier, or None
  seed: Any  # ([wgs] seed output, [wgs] seed lse) loaded, or None
  gather: Any  # stream: [wgs * depth * halves] chunks 1..7 of K and V


class Cta(NamedTuple):
  """One CTA's view: the launch, its refs and scratch, and where it is."""

  launch: Launch
  refs: Refs
  smem: Smem
  bars: Barriers
  batch: jax.Array  # int32 []
  head: jax.Array  # int32 []: query head
  pair: jax.Array  # int32 []: group of `wgs` query blocks
  wg: jax.Array  # int32 []: this thread's warpgroup
  plan: Any  # the (stream) tile plan of (batch, head)


def plan_tiles(cta: Cta, w) -> tuple[jax.Array, jax.Array, jax.Array]:
  """(m clamped to a real block, valid, the plan's count(m)) of compute
  warpgroup w; the pairs run from the last query blocks (most keys) to the
  first."""
  tb = cta.launch.dims.tb
  m = cta.pair * cta.launch.wgs + w
  valid = m < tb
  m_c = jnp.minimum(m, tb - 1)
  return m_c, valid, jnp.where(valid, cta.plan.count(m_c), 0)


def block_of(cta: Cta, w) -> tuple[jax.Array, jax.Array, jax.Array]:
  """(m clamped to a real block, valid, count) of compute warpgroup w;
  count: steps (a paired stream's steps take two of the plan's tiles)."""
  m, valid, tiles = plan_tiles(cta, w)
  halves = cta.launch.halves
  return m, valid, lax.div(tiles + halves - 1, jnp.int32(halves))


def schedule_sync(cta: Cta) -> None:
  """One ping-pong hand-over between the compute warpgroups (if on)."""
  if cta.launch.schedule:
    plgpu.barrier_arrive(cta.bars.schedule)
    plgpu.barrier_wait(cta.bars.schedule)
