"""The layer search: ChangeSpace against the paper's sequential walk, cost
matching, planted heads of each kind, and clear errors."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from minference_jax.patterns import AShape, BlockSparse, VerticalSlash
from minference_jax.search import (
    CostTarget,
    SearchSettings,
    SearchSpace,
    adjust_candidates,
    check_target,
    dense_tiles,
    head_estimates,
    kernel_tiles,
    pattern_arrays,
    search_layer,
    target_tiles,
)
from minference_jax.search.space import adjustable_field, budget_bounds


def fresh_rng() -> tuple[np.random.Generator, int]:
  """A generator from OS entropy and its seed (printed on failure)."""
  seed = int(np.random.SeedSequence().entropy % (2**32))
  return np.random.default_rng(seed), seed


PAPER_SPACE = {"a_shape": [[1024, 4096]],
               "vertical_slash": [[30, 2048], [100, 1800], [500, 1500],
                                  [3000, 200]],
               "block_sparse": [100]}


def walk_change_space(costs, base, lo, hi, step, target, tol):
  """The paper's ChangeSpace as a plain walk over a cost table: move the
  budget by `step` toward the target until the cost crosses it, keep the
  nearer of the two; where that misses the tolerance, walk single values
  between them."""
  def nearer(a, b):
    return b if abs(costs[b] - target) < abs(costs[a] - target) else a

  p = base
  if costs[p] < target:
    while p < hi and costs[p] < target:
      prev, p = p, min(p + step, hi)
    if costs[p] < target:
      return p
    a, b = prev, p
  else:
    while p > lo and costs[p] >= target:
      prev, p = p, max(p - step, lo)
    if costs[p] >= target:
      return p
    a, b = p, prev
  best = nearer(a, b)
  if abs(costs[best] - target) <= tol * target:
    return best
  x = a
  while costs[x + 1] < target:
    x += 1
  return nearer(x, x + 1)


def test_change_space_is_the_papers_walk():
  """Bisection equals the sequential walk wherever the cost grows with the
  adjusted budget (always for Block-Sparse top-k and Vertical-Slash
  verticals). A longer A-shape window or one more slash can cost a tile
  less now and then (a sink tile falls inside the window; a new window
  merges two), so there the result is checked to sit at a crossing."""
  rng, seed = fresh_rng()
  t, n, step, tol = 640, 3, 20, 0.02
  q = jnp.asarray(rng.standard_normal((2, t, n, 16)), jnp.float32)
  k = jnp.asarray(rng.standard_normal((2, t, n, 16)), jnp.float32)
  k = k.at[:, 100:].add(0.7 * q[:, :-100])  # one strong slash
  rows = (VerticalSlash(30, 200), VerticalSlash(300, 50), AShape(20, 100),
          BlockSparse(3))
  space = SearchSpace(candidates=rows, reference_length=None, step=step,
                      tolerance=tol)
  target = 0.4 * dense_tiles(t)
  est = head_estimates(q, k)
  arrays, cost, _ = adjust_candidates(est, rows, space, target, n, t)
  # The cost of every budget in every candidate's range, in one call.
  bounds = budget_bounds(rows, t)
  table_rows, spans = [], []
  for p, (lo, hi) in zip(rows, bounds):
    field = adjustable_field(p)
    spans.append(np.arange(lo, hi + 1))
    table_rows += [dataclasses.replace(p, **{field: int(x)})
                   for x in spans[-1]]
  tables = np.asarray(jax.jit(kernel_tiles, static_argnums=2)(
      est, pattern_arrays([[p] * n for p in table_rows]), t)).mean(0)
  start = 0
  for c, (p, (lo, hi), budgets) in enumerate(zip(rows, bounds, spans)):
    table = tables[start:start + len(budgets)]  # [budgets, N]
    start += len(budgets)
    field = adjustable_field(p)
    monotone = (np.diff(table, axis=0) >= 0).all(axis=0)  # [N]
    if field in ("n_vertical", "top_k"):
      assert monotone.all(), (seed, p)
    got = np.asarray(arrays.first if field in ("n_vertical", "top_k")
                     else arrays.second)[c]
    for h in range(n):
      costs = dict(zip(budgets.tolist(), table[:, h].tolist()))
      assert cost[c, h] == pytest.approx(costs[got[h]]), (seed, p, h)
      if monotone[h]:
        want = walk_change_space(costs, getattr(p, field), lo, hi, step,
                                 target, tol)
        assert got[h] == want, (seed, p, h)
        continue
      g = got[h]
      crossing = [x for x in (g - 1, g) if lo <= x < hi
                  and costs[x] < target <= costs[x + 1]]
      assert (abs(costs[g] - target) <= tol * target or crossing
              or g in (lo, hi)), (seed, p, h)


def test_costs_meet_the_target_within_the_tolerance():
  """At 8K a budget step moves the cost by at most ~Tb = 128 tiles (one
  tile per row block), under 5% of these targets, so every candidate lands
  within the tolerance (at 2K the steps can exceed it)."""
  rng, seed = fresh_rng()
  t = 8192
  q = jnp.asarray(rng.standard_normal((1, t, 2, 16)), jnp.float32)
  k = jnp.asarray(rng.standard_normal((1, t, 2, 16)), jnp.float32)
  space = SearchSpace.from_dict(PAPER_SPACE, tolerance=0.05)
  for target in (CostTarget(), CostTarget(density=0.2)):
    tiles = target_tiles(target, t)
    est = head_estimates(q, k)
    _, cost, _ = adjust_candidates(est, space.at_length(t), space, tiles, 2,
                                   t)
    assert np.abs(cost / tiles - 1).max() <= 0.05, (seed, target, cost)


# ------------------------------------------------------------- planted
def planted_qkv(rng, t=2048, d=64, batch=4):
  """q, k, v [B, T, 3, D] with one planted head of each kind.

  Head 0, A-shape-like: attention decays with distance (an ALiBi slope of
  1/60 per token from q_i = [-i, T] / 60, k_j = [1, j / T]) plus 40 sink
  tokens (more than the smallest Vertical-Slash candidate's 30 columns,
  so no Vertical-Slash budget of the same cost holds both the sinks and
  the local band); the last 64 queries, which Vertical-Slash estimates
  from, read only the sinks. Head 1, vertical-slash: 20 strong key columns and two
  slash lines at offsets 700 and 1300 (q_i . k_j = sum_f cos(f (i - j -
  offset)) over random high frequencies). Head 2, clustered blocks: each
  64-token block belongs to one of 8 clusters and reads the blocks of its
  cluster. Each of the `batch` samples is a fresh draw; the search
  averages its loss over them (with 2 samples, about 1 seed in 20 let a
  Vertical-Slash budget tie the A-shape head or Block-Sparse the
  Vertical-Slash head; 4 samples and 40 sinks: none in 150 seeds x
  objectives).
  """
  pos = np.arange(t)
  q, k = np.zeros((batch, t, 3, d)), np.zeros((batch, t, 3, d))
  for b in range(batch):
    qa, ka = np.zeros((t, d)), np.zeros((t, d))
    slope = 1 / 60
    qa[:, 0], qa[:, 1] = -slope * pos, slope * t
    ka[:, 0], ka[:, 1] = 1.0, pos / t
    qa[:, 2], qa[:, 3] = slope * pos, 1.0  # sinks: logit slope * j + 1
    ka[:40, 2], ka[:40, 3] = 1.0, 1.0
    qa[-64:, :3], qa[-64:, 3] = 0.0, 8.0
    qv, kv = np.zeros((t, d)), np.zeros((t, d))
    qv[:, 0] = 1.0
    kv[rng.choice(t, 20, replace=False), 0] = 16.0
    for s, off in enumerate((700, 1300)):
      f = rng.uniform(0.5, np.pi, 15)
      cos, sin = slice(1 + 30 * s, 16 + 30 * s), slice(16 + 30 * s,
                                                       31 + 30 * s)
      qv[:, cos], qv[:, sin] = (1.2 * np.cos(pos[:, None] * f),
                                1.2 * np.sin(pos[:, None] * f))
      kv[:, cos], kv[:, sin] = (np.cos((pos[:, None] + off) * f),
                                np.sin((pos[:, None] + off) * f))
    emb = rng.standard_normal((8, d))
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    e = emb[rng.integers(0, 8, -(-t // 64))[pos // 64]]
    for h, (qq, kk) in enumerate(((qa, ka), (qv, kv), (3 * e, 3 * e))):
      q[b, :, h] = qq * d**0.25 + 0.02 * rng.standard_normal((t, d))
      k[b, :, h] = kk * d**0.25 + 0.02 * rng.standard_normal((t, d))
  v = rng.standard_normal((batch, t, 3, d))
  return tuple(jnp.asarray(x, jnp.float32) for x in (q, k, v))


@pytest.mark.slow  # ~20 s for both on 2 cores (two scorer compilations)
@pytest.mark.parametrize("objective", ["output", "recall"])
def test_planted_heads_get_their_kind(objective):
  rng, seed = fresh_rng()
  q, k, v = planted_qkv(rng)
  res, _ = search_layer(q, k, v, SearchSpace.from_dict(PAPER_SPACE),
                        CostTarget(), SearchSettings(objective=objective))
  kinds = [type(p) for p in res.patterns]
  assert kinds == [AShape, VerticalSlash, BlockSparse], (seed, res.patterns,
                                                         res.loss)


# -------------------------------------------------------------- errors
def test_bad_spaces_are_named():
  with pytest.raises(ValueError, match="unknown pattern kind 'streaming'"):
    SearchSpace.from_dict({"streaming": [[1, 2]]})
  with pytest.raises(ValueError, match=r"vertical_slash\[0\].*two ints"):
    SearchSpace.from_dict({"vertical_slash": [[30, 200, 5]]})
  with pytest.raises(ValueError, match=r"block_sparse\[1\].*top_k"):
    SearchSpace.from_dict({"block_sparse": [100, [1, 2]]})
  with pytest.raises(ValueError, match=r"a_shape\[0\]: n_local"):
    SearchSpace.from_dict({"a_shape": [[10, 0]]})
  with pytest.raises(ValueError, match="at least one candidate"):
    SearchSpace.from_dict({})
  with pytest.raises(ValueError, match="duplicate"):
    SearchSpace.from_dict({"block_sparse": [100, 100]})
  with pytest.raises(ValueError, match="density"):
    CostTarget(density=1.5)


def test_a_target_below_every_minimum_is_refused():
  space = SearchSpace.from_dict(PAPER_SPACE)
  with pytest.raises(ValueError, match="below every candidate's minimum"):
    check_target(space, CostTarget(density=0.001), 8192)
  assert check_target(space, CostTarget(density=0.05), 8192) > 0
  # Vertical-Slash's data-dependent floor: 30 sink columns and 100 local
  # diagonals cost ~3 tiles per row block, more than this target.
  rng, _ = fresh_rng()
  q = jnp.asarray(rng.standard_normal((1, 1024, 2, 16)), jnp.float32)
  vs_only = SearchSpace.from_dict({"vertical_slash": [[30, 500]]},
                                  reference_length=None)
  with pytest.raises(ValueError, match="every candidate's minimum cost"):
    search_layer(q, q[:, :, :1], q[:, :, :1], vs_only,
                 CostTarget(density=17 / dense_tiles(1024)))
