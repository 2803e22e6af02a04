"""The search of one layer: every head, every candidate, at once.

MInference (Jiang et al., 2024), Alg. 1 for one layer: estimate once per
head, bring every candidate to the target cost (ChangeSpace), score every
(candidate, head) against dense attention on the calibration samples, and
keep per head the candidate with the best aggregated objective. Pure
apart from host-side bookkeeping: no file IO, no printing.
"""

import dataclasses
from collections.abc import Sequence
from typing import Literal

import jax
import jax.numpy as jnp
import numpy as np

from minference_jax.patterns import AShape, Dense, Pattern, VerticalSlash
from minference_jax.search.change_space import change_space, iterations
from minference_jax.search.cost import a_shape_tiles, dense_tiles, num_blocks
from minference_jax.search.estimate import HeadEstimates, head_estimates
from minference_jax.search.keysets import (
    KeySets,
    PatternArrays,
    build_keysets,
    kernel_tiles,
    pattern_arrays,
    pattern_from_sizes,
    static_tiles,
)
from minference_jax.search.score import PRECISIONS, Scores, score_keysets
from minference_jax.search.space import (
    CostTarget,
    SearchPattern,
    SearchSpace,
    adjustable_field,
    budget_bounds,
)

Objective = Literal["output", "recall"]
Aggregate = Literal["mean", "worst"]


@dataclasses.dataclass(frozen=True)
class SearchSettings:
  """How candidates are scored and compared.

  Attributes:
    objective: "output" (the paper's: relative error of the attention
      output vs dense, V included; lower wins) or "recall" (MInference's
      public code: dense softmax mass on the key set; higher wins).
    aggregate: over calibration samples, "mean" or "worst" (the worst
      sample's loss).
    row_blocks: 64-row query blocks per scoring step.
    key_chunk: keys per scoring step (a multiple of 64).
    precision: "highest" or "default" matmul precision while scoring.
    first_row: rows below it are not scored (MInference's code: 2500).
  """

  objective: Objective = "output"
  aggregate: Aggregate = "mean"
  row_blocks: int = 1
  key_chunk: int = 512
  precision: str = "highest"
  first_row: int = 0

  def __post_init__(self):
    if self.objective not in ("output", "recall"):
      raise ValueError(f"objective must be 'output' or 'recall', got"
                       f" {self.objective!r}")
    if self.aggregate not in ("mean", "worst"):
      raise ValueError(f"aggregate must be 'mean' or 'worst', got"
                       f" {self.aggregate!r}")
    if self.precision not in PRECISIONS:
      raise ValueError(f"precision must be one of {sorted(PRECISIONS)}, got"
                       f" {self.precision!r}")
    for name in ("row_blocks", "key_chunk"):
      value = getattr(self, name)
      if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive int, got {value!r}")
    if self.key_chunk % 64:
      raise ValueError(f"key_chunk must be a multiple of 64, got"
                       f" {self.key_chunk}")
    if self.first_row < 0:
      raise ValueError(f"first_row must be >= 0, got {self.first_row}")

  def check_length(self, seq_len: int) -> None:
    """Raises ValueError unless the scoring fits `seq_len` tokens: rows
    from `first_row` on are scored, so it must be below seq_len, and a
    scoring step of `row_blocks` 64-row query blocks must not exceed the
    sequence's ceil(seq_len / 64) blocks."""
    if self.first_row >= seq_len:
      raise ValueError(f"first_row={self.first_row} leaves none of the"
                       f" {seq_len} rows to score (first_row < seq_len)")
    blocks = num_blocks(seq_len)
    if self.row_blocks > blocks:
      raise ValueError(f"row_blocks={self.row_blocks} query blocks of 64"
                       f" rows per step, but {seq_len} tokens have"
                       f" {blocks} (row_blocks <= {blocks})")


class NonFiniteInput(ValueError):
  """A layer's q, k or v holds NaN or inf: dense attention on it is not a
  reference any pattern can be scored against.

  Attributes:
    tensor: "q", "k" or "v".
    sample: the first calibration sample (batch row) concerned.
    head: its first query head (q) or KV head (k, v) concerned.
  """

  def __init__(self, tensor: str, sample: int, head: int, group: int):
    self.tensor, self.sample, self.head = tensor, sample, head
    if tensor == "q":
      where = f"query head {head}"
    else:
      where = (f"KV head {head} (query heads {head * group}.."
               f"{head * group + group - 1})")
    super().__init__(f"{tensor} of {where} holds NaN or inf in calibration"
                     f" sample {sample}")


def check_finite(q: jax.Array, k: jax.Array, v: jax.Array | None = None
                 ) -> None:
  """Raises NonFiniteInput naming the first (tensor, sample, head) of
  q [B, T, N, D], k, v [B, T, K, D] with a NaN or inf (one reduction per
  tensor, read on the host)."""
  group = q.shape[2] // k.shape[2]
  for name, x in (("q", q), ("k", k), ("v", v)):
    if x is None:
      continue
    ok = np.asarray(jnp.all(jnp.isfinite(x), axis=(1, 3)))  # [B, heads]
    if not ok.all():
      sample, head = (int(i) for i in np.argwhere(~ok)[0])
      raise NonFiniteInput(name, sample, head, group)


def _check_shapes(q, k, v=None) -> None:
  if q.ndim != 4 or k.ndim != 4 or (v is not None and v.shape != k.shape):
    raise ValueError(f"expected q [B, T, N, D] and k, v [B, T, K, D]; got"
                     f" q{q.shape}, k{k.shape}"
                     + ("" if v is None else f", v{v.shape}"))
  b, t, n, _ = q.shape
  if k.shape[:2] != (b, t) or n % k.shape[2] or k.shape[3] != q.shape[3]:
    raise ValueError(f"q{q.shape} and k{k.shape} disagree (batch, length,"
                     " head dim, or N % K != 0)")


def target_tiles(target: CostTarget, seq_len: int) -> float:
  """The target kernel cost in 64x64 tiles at `seq_len`."""
  if target.density is not None:
    return float(target.density * dense_tiles(seq_len))
  a = target.a_shape_at(seq_len)
  return float(a_shape_tiles(a.n_init, a.n_local, seq_len))


def minimum_tiles(pattern: SearchPattern, low: int, seq_len: int) -> int:
  """A lower bound of a candidate's cost when its adjustable budget is
  `low`: exact for A-shape and Block-Sparse; Tb (the diagonal windows) for
  Vertical-Slash, whose cost depends on the data."""
  tb = num_blocks(seq_len)
  if isinstance(pattern, VerticalSlash):
    return tb
  if adjustable_field(pattern) == "top_k":
    return sum(min(m + 1, low) for m in range(tb))
  return int(a_shape_tiles(pattern.n_init, low, seq_len))


def check_target(space: SearchSpace, target: CostTarget,
                 seq_len: int) -> float:
  """The target in tiles, after checking that some candidate can reach it.

  Raises:
    ValueError: the target is below every candidate's minimum cost.
  """
  tiles = target_tiles(target, seq_len)
  floors = [minimum_tiles(p, lo, seq_len) for p, (lo, _) in
            zip(space.at_length(seq_len), space.bounds(seq_len))]
  if tiles < min(floors) * (1 - space.tolerance):
    raise ValueError(
        f"target cost {tiles:.0f} tiles ({target.describe(seq_len)};"
        f" kernel density {tiles / dense_tiles(seq_len):.4f}) is below every"
        f" candidate's minimum cost (lowest: {min(floors)} tiles) at"
        f" T={seq_len}")
  return tiles


@dataclasses.dataclass(frozen=True)
class LayerSearch:
  """One layer's search result (host arrays).

  Attributes:
    seq_len: T.
    target_tiles: the target cost in 64x64 tiles.
    candidates: [C] the candidates' starting points at T.
    adjusted: [C][N] each candidate after ChangeSpace on each head.
    tiles: [B, C, N] kernel cost of each adjusted candidate per sample.
    recall, output_error, covered: [B, C, N] (see `Scores`; output_error is
      NaN with the recall objective).
    loss: [C, N] the aggregated objective (lower wins; inf: infeasible).
    winner: [N] index of each head's winning candidate.
    baselines: [Cb][N] reference candidates after ChangeSpace (not scored).
    baseline_tiles: [Cb, N] their mean cost.
  """

  seq_len: int
  target_tiles: float
  candidates: tuple[SearchPattern, ...]
  adjusted: tuple[tuple[SearchPattern, ...], ...]
  tiles: np.ndarray
  recall: np.ndarray
  output_error: np.ndarray
  covered: np.ndarray
  loss: np.ndarray
  winner: np.ndarray
  baselines: tuple[tuple[SearchPattern, ...], ...] = ()
  baseline_tiles: np.ndarray | None = None

  @property
  def patterns(self) -> tuple[SearchPattern, ...]:
    """The winning pattern of every head."""
    return tuple(self.adjusted[c][h] for h, c in enumerate(self.winner))


_kernel_tiles_jit = jax.jit(kernel_tiles, static_argnums=2)


def _adjust(est, rows, bounds, space: SearchSpace, target, n_heads,
            seq_len):
  """ChangeSpace for `rows` (one kind group): arrays [C, N], cost [C, N]."""
  start = pattern_arrays([[p] * n_heads for p in rows])
  data = any(isinstance(p, VerticalSlash) for p in rows)
  if not space.adjust:
    if data:
      cost = jnp.mean(_kernel_tiles_jit(est, start, seq_len).astype(
          jnp.float32), axis=0)
    else:
      cost = static_tiles(start, seq_len).astype(jnp.float32)
    return start, cost
  flags = tuple(adjustable_field(p) in ("n_vertical", "top_k") for p in rows)
  base = [getattr(p, adjustable_field(p)) for p in rows]
  spans = [-(-(hi - b) // space.step) + -(-(b - lo) // space.step)
           for b, (lo, hi) in zip(base, bounds)]
  lo = jnp.asarray([b[0] for b in bounds], jnp.int32)
  hi = jnp.asarray([b[1] for b in bounds], jnp.int32)
  return change_space(
      est, start, lo, hi, jnp.float32(target), space.tolerance,
      adjust_first=flags, seq_len=seq_len, step=space.step,
      grid_iters=iterations(max(spans)), fine_iters=iterations(space.step),
      data_dependent=data)


def _to_patterns(arrays: PatternArrays) -> tuple[tuple[SearchPattern, ...]]:
  kind, first, second = (np.asarray(x) for x in
                         (arrays.kind, arrays.first, arrays.second))
  return tuple(
      tuple(pattern_from_sizes(*map(int, (kind[c, h], first[c, h],
                                          second[c, h])))
            for h in range(kind.shape[1]))
      for c in range(kind.shape[0]))


def adjust_candidates(est: HeadEstimates, rows: Sequence[SearchPattern],
                      space: SearchSpace, target: float, n_heads: int,
                      seq_len: int):
  """ChangeSpace for candidates at `seq_len` (kinds grouped: the
  Vertical-Slash ones read the data, the others are arithmetic).

  Returns:
    (PatternArrays [C, N], mean cost [C, N] as numpy, at_floor [C, N]
    bool: the adjusted budget is at the low end of its range).
  """
  rows = tuple(rows)
  bounds = budget_bounds(rows, seq_len, space.adjust)
  is_vs = [isinstance(p, VerticalSlash) for p in rows]
  groups = [[i for i, v in enumerate(is_vs) if v],
            [i for i, v in enumerate(is_vs) if not v]]
  kind = np.zeros((len(rows), n_heads), np.int32)
  first, second = kind.copy(), kind.copy()
  cost = np.zeros((len(rows), n_heads), np.float32)
  for idx in groups:
    if not idx:
      continue
    arrays, c = _adjust(est, [rows[i] for i in idx],
                        [bounds[i] for i in idx], space, target, n_heads,
                        seq_len)
    kind[idx], first[idx], second[idx] = (np.asarray(x) for x in (
        arrays.kind, arrays.first, arrays.second))
    cost[idx] = np.asarray(c)
  arrays = PatternArrays(jnp.asarray(kind), jnp.asarray(first),
                         jnp.asarray(second))
  budget = np.where(np.asarray([adjustable_field(p) in ("n_vertical", "top_k")
                                for p in rows])[:, None], first, second)
  at_floor = budget <= np.asarray([b[0] for b in bounds])[:, None]
  return arrays, cost, at_floor


def _scale_to(rows: Sequence[SearchPattern], space: SearchSpace,
              seq_len: int) -> tuple[SearchPattern, ...]:
  if not rows:
    return ()
  return dataclasses.replace(space, candidates=tuple(rows)).at_length(
      seq_len)


def search_layer(
    q: jax.Array,
    k: jax.Array,
    v: jax.Array,
    space: SearchSpace,
    target: CostTarget,
    settings: SearchSettings = SearchSettings(),
    baselines: Sequence[SearchPattern] = (),
) -> tuple[LayerSearch, jax.Array]:
  """MInference's kernel-aware search (Alg. 1) for one layer.

  Args:
    q: [B, T, N, D] queries of B calibration samples (RoPE applied).
    k, v: [B, T, K, D] keys and values (N % K == 0).
    space: the search space (sizes scaled from its reference length).
    target: the cost target.
    settings: objective, aggregation and scoring tiles.
    baselines: extra candidates (written at the space's reference length)
      brought to the target cost per head but not scored, e.g. uniform
      baselines for a validation at equal cost.

  Returns:
    (LayerSearch, dense attention output [B, T, N, D] in q's dtype).

  Raises:
    ValueError: inconsistent shapes, settings that do not fit T, or a head
      where every candidate's minimum cost exceeds the target beyond the
      tolerance.
    NonFiniteInput: q, k or v holds NaN or inf (naming sample and head).
  """
  _check_shapes(q, k, v)
  _, t, n, _ = q.shape
  settings.check_length(t)
  check_finite(q, k, v)
  tgt = check_target(space, target, t)
  rows = space.at_length(t)
  extra = _scale_to(baselines, space, t)
  est = head_estimates(q, k)
  arrays, cost, at_floor = adjust_candidates(est, rows + extra, space, tgt,
                                             n, t)
  c = len(rows)
  # A candidate still over the target at the low end of its range cannot
  # reach it on that head (without ChangeSpace, costs are as written).
  feasible = np.ones((c, n), bool)
  if space.adjust:
    feasible = ~(at_floor[:c] & (cost[:c] > tgt * (1 + space.tolerance)))
  if not feasible.any(axis=0).all():
    bad = int(np.flatnonzero(~feasible.any(axis=0))[0])
    raise ValueError(
        f"head {bad}: every candidate's minimum cost exceeds the target"
        f" {tgt:.0f} tiles (costs {cost[:c, bad].round(0).tolist()})")
  cand = PatternArrays(arrays.kind[:c], arrays.first[:c], arrays.second[:c])
  keysets = build_keysets(est, cand, t)
  scores, out = score_keysets(
      q, k, v, keysets, output=settings.objective == "output",
      row_blocks=settings.row_blocks, key_chunk=settings.key_chunk,
      precision=settings.precision, first_row=settings.first_row)
  recall = np.asarray(scores.recall)
  error = np.asarray(scores.output_error)
  per_sample = error if settings.objective == "output" else 1.0 - recall
  loss = (per_sample.mean(axis=0) if settings.aggregate == "mean"
          else per_sample.max(axis=0))
  loss = np.where(feasible, loss, np.inf)
  adjusted = _to_patterns(arrays)
  return LayerSearch(
      seq_len=t,
      target_tiles=tgt,
      candidates=rows,
      adjusted=adjusted[:c],
      tiles=np.asarray(keysets.tiles),
      recall=recall,
      output_error=error,
      covered=np.asarray(scores.covered),
      loss=loss,
      winner=np.argmin(loss, axis=0),
      baselines=adjusted[c:],
      baseline_tiles=cost[c:],
  ), out


def score_patterns(
    q: jax.Array,
    k: jax.Array,
    v: jax.Array,
    rows: Sequence[Sequence[SearchPattern]],
    settings: SearchSettings = SearchSettings(),
):
  """Scores given per-head patterns (e.g. whole pattern configs) at once.

  Args:
    q: [B, T, N, D]; k, v: [B, T, K, D].
    rows: [C][N] patterns (A-shape, Vertical-Slash or Block-Sparse): row c
      is one configuration of the layer's heads.
    settings: scoring tiles and precision (both metrics are computed).

  Returns:
    (Scores [B, C, N], kernel tiles [B, C, N], dense output [B, T, N, D]).

  Raises:
    ValueError: inconsistent shapes or settings that do not fit T.
    NonFiniteInput: q, k or v holds NaN or inf (naming sample and head).
  """
  _check_shapes(q, k, v)
  t = q.shape[1]
  settings.check_length(t)
  check_finite(q, k, v)
  est = head_estimates(q, k)
  keysets = build_keysets(est, pattern_arrays(rows), t)
  scores, out = score_keysets(
      q, k, v, keysets, output=True, row_blocks=settings.row_blocks,
      key_chunk=settings.key_chunk, precision=settings.precision,
      first_row=settings.first_row)
  return scores, keysets.tiles, out


def measure_patterns(
    q: jax.Array,
    k: jax.Array,
    patterns: Sequence[Pattern],
    *,
    row_blocks: int = 4,
    key_chunk: int = 512,
) -> tuple[KeySets, Scores]:
  """The key sets of one layer's per-head patterns, with their attention
  recall and covered pairs: a pattern config's per-layer density and
  recall on a real prompt.

  Any mix of kinds and budgets runs one compiled program per shape (the
  budgets are traced), where building each kind's layout with static
  budgets compiles once per distinct layer. The key sets are what the
  layouts compute (tested against the index builders); Dense heads are
  measured as AShape(0, T), exactly causal dense attention.

  Args:
    q: [B, T, N, D] queries (RoPE applied); k: [B, T, K, D] keys.
    patterns: N patterns, one per query head (Vertical-Slash with the
      estimate's last_q of 64).
    row_blocks, key_chunk: scoring tiles (see `score_keysets`).

  Returns:
    (KeySets with one candidate, Scores [B, 1, N] without the output
    error): density of head n = covered / (T (T + 1) / 2).

  Raises:
    ValueError: inconsistent shapes, a pattern count other than N, or a
      Vertical-Slash last_q other than 64.
  """
  _check_shapes(q, k)
  _, t, n, _ = q.shape
  if len(patterns) != n:
    raise ValueError(f"{len(patterns)} patterns for {n} query heads")
  row = [AShape(n_init=0, n_local=t) if isinstance(p, Dense) else p
         for p in patterns]
  keysets = build_keysets(head_estimates(q, k), pattern_arrays([row]), t)
  scores, _ = score_keysets(q, k, None, keysets, output=False,
                            row_blocks=min(row_blocks, num_blocks(t)),
                            key_chunk=key_chunk)
  return keysets, scores
