"""ChangeSpace: bring every candidate's kernel cost to the target.

MInference (Jiang et al., 2024), Alg. 1, steps 1-2: each candidate's budget
is moved in steps of 50 until its kernel cost is within a tolerance of the
target. The cost grows with the budget (more lines, blocks or window keys
never remove a tile), so instead of walking we bisect: first over the step
grid base + j * step (within the candidate's bounds), then, where the best
grid point still misses the tolerance, over the single values between the
two grid points that bracket the target. All (candidate, head) pairs move
at once; a head's cost is its mean over the calibration samples, so every
head gets its own budgets (Vertical-Slash costs depend on the data; A-shape
and Block-Sparse costs do not).
"""

import functools
import math

import jax
import jax.numpy as jnp

from minference_jax.search.estimate import HeadEstimates
from minference_jax.search.keysets import (
    PatternArrays,
    static_tiles,
    kernel_tiles,
)


def _bisect(cost_of, a, b, ca, cb, target, iters: int):
  """Narrows brackets [a, b] (ints [C, N]) with cost(a) < target <= cost(b)
  to b - a <= 1; entries that are not brackets stay as they are."""

  def body(_, state):
    a, b, ca, cb = state
    active = (b - a > 1) & (ca < target) & (cb >= target)
    mid = jnp.where(active, (a + b) // 2, a)
    cm = cost_of(mid)
    right = active & (cm < target)
    left = active & ~right
    return (jnp.where(right, mid, a), jnp.where(left, mid, b),
            jnp.where(right, cm, ca), jnp.where(left, cm, cb))

  return jax.lax.fori_loop(0, iters, body, (a, b, ca, cb))


def _closer(a, b, ca, cb, target):
  """The point of {a, b} whose cost is nearer the target (a on ties)."""
  pick_b = jnp.abs(cb - target) < jnp.abs(ca - target)
  return jnp.where(pick_b, b, a), jnp.where(pick_b, cb, ca)


@functools.partial(
    jax.jit,
    static_argnames=("adjust_first", "seq_len", "step", "grid_iters",
                     "fine_iters", "data_dependent"))
def change_space(
    est: HeadEstimates,
    start: PatternArrays,
    lo: jax.Array,
    hi: jax.Array,
    target: jax.Array,
    tolerance: float,
    *,
    adjust_first: tuple[bool, ...],
    seq_len: int,
    step: int,
    grid_iters: int,
    fine_iters: int,
    data_dependent: bool = True,
) -> tuple[PatternArrays, jax.Array]:
  """Adjusts one budget per candidate so its mean cost nears `target`.

  Args:
    est: the layer's HeadEstimates (B calibration samples).
    start: [C, N] initial candidates (same budgets on every head).
    lo, hi: [C] int32 bounds of the adjusted budget.
    target: scalar target cost in 64x64 tiles.
    tolerance: relative tolerance; finer steps are taken only where the
      best grid point misses it.
    adjust_first: static per candidate: adjust `first` (n_vertical, top_k)
      or `second` (n_local, n_slash).
    seq_len: static T.
    step: the grid step (the paper's 50).
    grid_iters, fine_iters: static bisection rounds (ceil(log2) of the
      largest grid span and of `step`).
    data_dependent: False when no candidate is Vertical-Slash (the cost is
      then arithmetic and the estimates are not read).

  Returns:
    (adjusted PatternArrays [C, N], mean cost [C, N] f32 in tiles).
  """
  first_mask = jnp.asarray(adjust_first)[:, None]  # [C, 1]
  base = jnp.where(first_mask, start.first, start.second)  # [C, N]
  lo, hi = lo[:, None], hi[:, None]
  target = jnp.asarray(target, jnp.float32)

  def with_budget(p):
    return PatternArrays(
        kind=start.kind,
        first=jnp.where(first_mask, p, start.first),
        second=jnp.where(first_mask, start.second, p))

  def cost(p):
    arrays = with_budget(p)
    if not data_dependent:
      return static_tiles(arrays, seq_len).astype(jnp.float32)
    tiles = kernel_tiles(est, arrays, seq_len)
    return jnp.mean(tiles.astype(jnp.float32), axis=0)

  # Grid phase over j: budget(j) = clip(base + j * step, lo, hi).
  j_lo = -((base - lo + step - 1) // step)
  j_hi = (hi - base + step - 1) // step
  at = lambda j: jnp.clip(base + j * step, lo, hi)
  c_lo, c_hi = cost(at(j_lo)), cost(at(j_hi))
  a, b, ca, cb = _bisect(lambda j: cost(at(j)), j_lo, j_hi, c_lo, c_hi,
                         target, grid_iters)
  bracketed = (ca < target) & (cb >= target)
  pa, pb = at(a), at(b)
  best, best_cost = _closer(pa, pb, ca, cb, target)
  # Fine phase between the bracketing grid points where the grid misses.
  a2, b2, ca2, cb2 = _bisect(cost, pa, pb, ca, cb, target, fine_iters)
  fine, fine_cost = _closer(a2, b2, ca2, cb2, target)
  refine = bracketed & (jnp.abs(best_cost - target) > tolerance * target)
  best = jnp.where(refine, fine, best)
  best_cost = jnp.where(refine, fine_cost, best_cost)
  return with_budget(best), best_cost


def iterations(span: int) -> int:
  """Bisection rounds that shrink a bracket of `span` to width 1."""
  return max(1, math.ceil(math.log2(max(span, 2))))
