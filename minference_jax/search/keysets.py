"""Candidates as arrays, and the key sets and kernel cost they give.

A candidate of any kind, on any head, is three integers (kind, first,
second): A-shape (n_init, n_local), Vertical-Slash (n_vertical, n_slash),
Block-Sparse (top_k, 0). Budgets are traced values, so one compiled program
serves every candidate and every ChangeSpace step. From the shared
`HeadEstimates` a budget selects its lines or blocks by rank; the
Vertical-Slash windows and columns come from the public layout builder
(`minference_jax.index.vertical_slash_layout`), so the key set scored and
the cost counted are what the kernels compute.
"""

import dataclasses
import functools
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Bool, Int

from minference_jax.index import VerticalSlashIndices, vertical_slash_layout
from minference_jax.patterns import (
    VS_MIN_SLASH,
    VS_MIN_VERTICAL,
    AShape,
    BlockSparse,
    VerticalSlash,
)
from minference_jax.search.cost import (
    a_shape_tiles,
    block_sparse_tiles,
    num_blocks,
    vertical_slash_tiles,
)
from minference_jax.search.estimate import HeadEstimates
from minference_jax.search.space import SearchPattern

A_SHAPE, VERTICAL_SLASH, BLOCK_SPARSE = 0, 1, 2
_KIND_IDS = {AShape: A_SHAPE, VerticalSlash: VERTICAL_SLASH,
             BlockSparse: BLOCK_SPARSE}


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class PatternArrays:
  """Per (candidate, head) patterns as int32 arrays [C, N].

  Fields:
    kind: A_SHAPE (0), VERTICAL_SLASH (1) or BLOCK_SPARSE (2).
    first: n_init | n_vertical | top_k.
    second: n_local | n_slash | 0.
  """

  kind: Int[Array, "C N"]
  first: Int[Array, "C N"]
  second: Int[Array, "C N"]


def pattern_arrays(rows: Sequence[Sequence[SearchPattern]]) -> PatternArrays:
  """[C][N] patterns -> PatternArrays (host side; Vertical-Slash last_q must
  be the estimate's 64).

  Raises:
    ValueError: a Dense pattern, ragged rows, or last_q != 64.
  """
  kind, first, second = [], [], []
  n = len(rows[0]) if rows else 0
  for c, row in enumerate(rows):
    if len(row) != n:
      raise ValueError(f"candidate row {c} has {len(row)} heads, not {n}")
    for h, p in enumerate(row):
      if type(p) not in _KIND_IDS:
        raise ValueError(f"row {c}, head {h}: {p} cannot be searched or"
                         " scored (A-shape, Vertical-Slash or Block-Sparse)")
      if isinstance(p, VerticalSlash) and p.last_q != 64:
        raise ValueError(f"row {c}, head {h}: last_q={p.last_q}; the search"
                         " estimates from the last 64 queries")
  for row in rows:
    kind.append([_KIND_IDS[type(p)] for p in row])
    first.append([_sizes(p)[0] for p in row])
    second.append([_sizes(p)[1] for p in row])
  as_i32 = lambda x: jnp.asarray(np.asarray(x, np.int32).reshape(-1, n))
  return PatternArrays(as_i32(kind), as_i32(first), as_i32(second))


def _sizes(p: SearchPattern) -> tuple[int, int]:
  if isinstance(p, AShape):
    return p.n_init, p.n_local
  if isinstance(p, VerticalSlash):
    return p.n_vertical, p.n_slash
  return p.top_k, 0


def pattern_from_sizes(kind: int, first: int, second: int) -> SearchPattern:
  """The pattern of one (kind, first, second) triple (host side)."""
  if kind == A_SHAPE:
    return AShape(n_init=int(first), n_local=int(second))
  if kind == VERTICAL_SLASH:
    return VerticalSlash(n_vertical=int(first), n_slash=int(second))
  if kind == BLOCK_SPARSE:
    return BlockSparse(top_k=int(first))
  raise ValueError(f"unknown kind id {kind}")


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class KeySets:
  """The keys every (sample, candidate, head) computes, and their cost.

  Row r of query block m = r // 64 reads key j <= r iff
  window(m, j) | vertical[j] | block[m, j // 64] | j < n_init
  | r - j < n_local.

  Fields:
    window_start: Int[B, C, N, Tb, W], Vertical-Slash 64-wide key windows of
                  each row block (starts; any column), W = min(T, Tb).
    window_count: Int[B, C, N, Tb], valid windows.
    vertical:     Bool[B, C, N, T], Vertical-Slash key columns.
    block:        Bool[B, C, N, Tb, Tb], Block-Sparse key blocks per query
                  block.
    n_init:       Int[C, N], A-shape sinks (0 for other kinds).
    n_local:      Int[C, N], A-shape window (0 for other kinds).
    tiles:        Int[B, C, N], kernel cost in 64x64 tiles.
  """

  window_start: Int[Array, "B C N Tb W"]
  window_count: Int[Array, "B C N Tb"]
  vertical: Bool[Array, "B C N T"]
  block: Bool[Array, "B C N Tb Tb"]
  n_init: Int[Array, "C N"]
  n_local: Int[Array, "C N"]
  tiles: Int[Array, "B C N"]


def vs_budgets(arrays: PatternArrays, seq_len: int):
  """Effective Vertical-Slash budgets [C, N] (the estimate's clamps to
  >= 30 / >= 50 and <= T; 0 for other kinds)."""
  on = arrays.kind == VERTICAL_SLASH
  kv = jnp.minimum(seq_len, jnp.maximum(arrays.first, VS_MIN_VERTICAL))
  ks = jnp.minimum(seq_len, jnp.maximum(arrays.second, VS_MIN_SLASH))
  return jnp.where(on, kv, 0), jnp.where(on, ks, 0)


def _slash_list(selected):
  """Selected offsets of selected [R, T] sorted descending, padded with 0
  to [R, T] (the layout builder's slash list)."""
  r, t = selected.shape
  before = jnp.cumsum(selected, axis=-1, dtype=jnp.int32)  # inclusive
  slot = jnp.where(selected, before[:, -1:] - before, t)  # t: dropped
  rows = jax.lax.broadcasted_iota(jnp.int32, (r, t), 0)
  pos = jax.lax.broadcasted_iota(jnp.int32, (r, t), 1)
  return jnp.zeros((r, t), jnp.int32).at[rows, slot].set(pos, mode="drop")


def vs_windows(slash_rank, ks, seq_len: int):
  """Windows of one sample's Vertical-Slash layouts for every (candidate,
  head), from `minference_jax.index.vertical_slash_layout`.

  Args:
    slash_rank: [N, T] slash ranks of one sample.
    ks: [C, N] effective slash budgets (0: inactive).
    seq_len: static T.

  Returns:
    block_count [C, N, Tb] and window starts [C, N, Tb, min(T, Tb)]
    (ascending; entries past the count are 0).
  """
  c, n = ks.shape
  t = seq_len
  selected = slash_rank[None] < ks[..., None]  # [C, N, T]
  indices = VerticalSlashIndices(
      # Verticals do not move windows; they are counted separately.
      vertical=jnp.full((c, n, 1), t - 1, jnp.int32),
      vertical_count=jnp.zeros((c, n), jnp.int32),
      slash=_slash_list(selected.reshape(c * n, t)).reshape(c, n, t),
      slash_count=ks,
  )
  layout = vertical_slash_layout(indices, t)  # its B axis: candidates
  width = min(t, num_blocks(t))
  return layout.block_count, layout.block_offset[..., :width]


def vs_column_count(vertical, block_count, starts):
  """Gathered columns per row block: the verticals left of the last window
  that no window covers (the layout builder's rule), counted with prefix
  sums: #verticals < last start minus those inside the earlier windows.

  Args:
    vertical: [..., T] bool selected key columns.
    block_count: [..., Tb] windows per row block (>= 1 where active).
    starts: [..., Tb, W] ascending window starts.

  Returns:
    [..., Tb] int32.
  """
  t = vertical.shape[-1]
  w = starts.shape[-1]
  prefix = jnp.pad(jnp.cumsum(vertical, axis=-1, dtype=jnp.int32),
                   [(0, 0)] * (vertical.ndim - 1) + [(1, 0)])  # [..., T+1]
  at = lambda x: jnp.take_along_axis(
      prefix[..., None, :], jnp.clip(x, 0, t), axis=-1)
  last = jnp.take_along_axis(
      starts, jnp.maximum(block_count - 1, 0)[..., None], axis=-1)
  inside = at(starts + 64) - at(starts)  # [..., Tb, W]
  earlier = jnp.arange(w) < (block_count - 1)[..., None]
  count = at(last)[..., 0] - jnp.sum(jnp.where(earlier, inside, 0), -1)
  return jnp.where(block_count > 0, count, 0)


def kernel_tiles(est: HeadEstimates, arrays: PatternArrays,
                 seq_len: int) -> jax.Array:
  """Kernel cost [B, C, N] in 64x64 tiles of every (sample, candidate,
  head); samples one at a time (peak memory of one sample's layouts)."""
  kv, ks = vs_budgets(arrays, seq_len)

  def one_sample(ranks):
    v_rank, s_rank = ranks
    count, starts = vs_windows(s_rank, ks, seq_len)
    vertical = v_rank[None] < kv[..., None]  # [C, N, T]
    columns = vs_column_count(vertical, count, starts)
    return vertical_slash_tiles(count, columns)  # [C, N]

  vs = jax.lax.map(one_sample, (est.vertical_rank, est.slash_rank))
  return vs + static_tiles(arrays, seq_len)[None]


def static_tiles(arrays: PatternArrays, seq_len: int) -> jax.Array:
  """A-shape and Block-Sparse costs [C, N] (they do not depend on data)."""
  a = jnp.where(arrays.kind == A_SHAPE,
                a_shape_tiles(arrays.first, arrays.second, seq_len), 0)
  bs = jnp.where(arrays.kind == BLOCK_SPARSE,
                 block_sparse_tiles(arrays.first, seq_len), 0)
  return a + bs


@functools.partial(jax.jit, static_argnums=(2,))
def build_keysets(est: HeadEstimates, arrays: PatternArrays,
                  seq_len: int) -> KeySets:
  """Key sets and kernel cost of every (sample, candidate, head).

  Args:
    est: the layer's HeadEstimates [B, N, ...].
    arrays: [C, N] patterns.
    seq_len: static T.

  Returns:
    KeySets.
  """
  tb = num_blocks(seq_len)
  kv, ks = vs_budgets(arrays, seq_len)

  def one_sample(ranks):
    v_rank, s_rank, b_rank = ranks
    count, starts = vs_windows(s_rank, ks, seq_len)
    vertical = v_rank[None] < kv[..., None]  # [C, N, T]
    columns = vs_column_count(vertical, count, starts)
    k_eff = jnp.where(arrays.kind == BLOCK_SPARSE,
                      jnp.minimum(arrays.first, tb), 0)  # [C, N]
    row_k = jnp.minimum(jnp.arange(1, tb + 1), k_eff[..., None])  # [C,N,Tb]
    block = b_rank[None] < row_k[..., None]  # [C, N, Tb, Tb]
    return starts, count, vertical, block, vertical_slash_tiles(count,
                                                                columns)

  starts, counts, vertical, block, vs_tiles = jax.lax.map(
      one_sample, (est.vertical_rank, est.slash_rank, est.block_rank))
  is_a = arrays.kind == A_SHAPE
  return KeySets(
      window_start=starts,
      window_count=counts,
      vertical=vertical,
      block=block,
      n_init=jnp.where(is_a, arrays.first, 0),
      n_local=jnp.where(is_a, arrays.second, 0),
      tiles=vs_tiles + static_tiles(arrays, seq_len)[None],
  )
