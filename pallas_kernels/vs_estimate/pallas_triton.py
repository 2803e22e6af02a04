"""Pallas-Triton Vertical-Slash estimate: line scores of the last queries.

MInference ranks a head's vertical lines (key columns) and slash lines
(diagonals) by the softmax of its last L queries against all keys: column
sums and diagonal sums of P = softmax(q[T - L:] k^T / sqrt(D)) [L, S]. The
XLA form (`minference_jax.index_vs`) writes the [N, L, S] logits and reads
them three times (row stats, column sums, diagonal sums); at 1M tokens that
is most of the estimate. Here two launches read only K, twice:

1. Row stats: per key chunk, the running max m and sum z of exp(logits - m)
   of every (head, row); the chunks are merged in XLA (a few MB).
2. Scores: recompute the logits tile by tile, P = exp(logits - m) / z; the
   column sums are a reduction over the rows. The diagonal sums need each
   row shifted by its index (row l of the tile moves by L - 1 - l), which a
   Triton register tile cannot do. The tile goes through a small
   per-program scratch instead (it stays in L2): stored plainly, then read
   back with skewed addresses, so that column x of the skewed tile holds
   one diagonal; a tile's diagonals spill L columns into the next tile
   ("tail"), added in XLA. This round trip (8 bytes per probability) is
   what makes the second pass 3x slower than the first on an H200.

Logits are rounded to the input dtype before the softmax, as in MInference;
the softmax and the sums are f32. Query head n reads KV head n // G; the
program's rows are `heads_per_program` heads of one KV group, so each K tile
feeds one [R, D] x [D, BK] dot with R = heads_per_program * Lp.
"""

import dataclasses
import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
from beartype import beartype
from jax import lax
from jax.experimental import pallas as pl
from jax.experimental.pallas import triton as plt
from jaxtyping import Array, Float, jaxtyped

from pallas_kernels import common


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class Config:
  """Launch knobs of the estimate kernels.

  Attributes:
    block_k: keys per tile (power of two >= 16 and >= the padded last_q).
    programs: target number of programs per launch; the key range is split
      into that many chunks over (batch, head group).
    num_warps: Triton warps per program.
    num_stages: Triton pipelining depth of the tile loop.
    heads_per_program: query heads of one KV group per program (a power of
      two dividing G). More heads share each K tile but make the register
      tiles larger; on an H200 one head per program was fastest
      (experiments/results/vs_estimate_pallas_h200.json).
  """

  block_k: int = 64
  programs: int = 1024
  num_warps: int = 4
  num_stages: int = 3
  heads_per_program: int = 1

  def __post_init__(self):
    common.check_block("block_k", self.block_k)
    h = self.heads_per_program
    if (isinstance(h, bool) or not isinstance(h, int)
        or not common.is_power_of_two(h)):
      raise ValueError(f"heads_per_program={h!r} must be a power of two")
    common.check_launch(self.num_warps, self.num_stages)
    if isinstance(self.programs, bool) or not isinstance(self.programs, int):
      raise TypeError(f"programs must be an int, got {self.programs!r}")
    if self.programs < 1:
      raise ValueError(f"programs={self.programs} must be >= 1")


@dataclasses.dataclass(frozen=True)
class _Plan:
  """Static sizes of one launch (all derived from the shapes and Config)."""

  t: int  # sequence length
  last_q: int  # real estimate rows per head (L)
  rows_pad: int  # Lp = power of two >= max(16, L)
  heads: int  # heads per program (power of two dividing G)
  block_k: int
  tiles_per_chunk: int
  chunks: int
  head_groups: int  # N // heads
  d: int
  d_pad: int

  @property
  def rows(self) -> int:  # R, rows of one program
    return self.heads * self.rows_pad

  @property
  def chunk_len(self) -> int:
    return self.tiles_per_chunk * self.block_k

  @property
  def t_pad(self) -> int:
    return self.chunks * self.chunk_len

  @property
  def n_tiles(self) -> int:  # tiles holding at least one real key
    return pl.cdiv(self.t, self.block_k)


def _plan(b: int, t: int, n: int, g: int, d: int, last_q: int,
          config: Config) -> _Plan:
  rows_pad = max(16, pl.next_power_of_2(last_q))
  if rows_pad > config.block_k:
    raise ValueError(
        f"vs_line_scores: last_q={last_q} (padded to {rows_pad}) must not"
        f" exceed Config.block_k={config.block_k}"
    )
  heads = config.heads_per_program
  if g % heads:
    raise ValueError(
        f"vs_line_scores: heads_per_program={heads} must divide the query"
        f" heads per KV head G={g}")
  head_groups = n // heads
  n_tiles = pl.cdiv(t, config.block_k)
  want = max(1, config.programs // (b * head_groups))
  tiles_per_chunk = pl.cdiv(n_tiles, min(want, n_tiles))
  chunks = pl.cdiv(n_tiles, tiles_per_chunk)
  return _Plan(t, last_q, rows_pad, heads, config.block_k, tiles_per_chunk,
               chunks, head_groups, d, common.padded_head_dim(d))


def _row_positions(plan: _Plan) -> jax.Array:
  """[R] absolute query position of each program row; -1 for pad rows (they
  see no key)."""
  l = common.iota(plan.rows) % plan.rows_pad
  return jnp.where(l < plan.last_q, plan.t - plan.last_q + l, -1)


def _tile_logits(q, k_ref, tile, plan: _Plan, positions, scale, precision):
  """Masked f32 logits [R, BK] of the program rows against key tile `tile`,
  rounded to the input dtype first, and the [R, BK] visibility mask."""
  bk = plan.block_k
  j0 = pl.multiple_of(tile * bk, bk)
  cols = j0 + common.iota(bk)  # [BK]
  k = common.load_rows(k_ref, j0, bk, plan.d, plan.d_pad,
                       cols < plan.t)  # [BK, Dp]
  s = lax.dot_general(
      q, k, (((1,), (1,)), ((), ())), precision=precision,
      preferred_element_type=jnp.float32,
  ) * scale  # [R, BK]
  s = s.astype(q.dtype).astype(jnp.float32)
  visible = cols[None, :] <= positions[:, None]  # [R, BK]
  return jnp.where(visible, s, common.MASK_VALUE), visible


def _chunk_tiles(plan: _Plan):
  """(first tile, number of tiles with real keys) of this program's chunk."""
  first = pl.program_id(0) * plan.tiles_per_chunk
  count = jnp.clip(plan.n_tiles - first, 0, plan.tiles_per_chunk)
  return first, count


def _stats_kernel(q_ref, k_ref, m_ref, z_ref, *, plan: _Plan, scale,
                  precision):
  """Per row: max m and sum z of exp(logits - m) over this chunk's keys."""
  q = common.load_rows(q_ref, 0, plan.rows, plan.d, plan.d_pad, None)
  positions = _row_positions(plan)
  first, count = _chunk_tiles(plan)

  def tile_step(i, carry):
    m, z = carry
    s, _ = _tile_logits(q, k_ref, first + i, plan, positions, scale,
                        precision)
    m_new = jnp.maximum(m, jnp.max(s, axis=1))
    z = z * jnp.exp(m - m_new) + jnp.sum(jnp.exp(s - m_new[:, None]), axis=1)
    return m_new, z

  init = (jnp.full((plan.rows,), common.MASK_VALUE, jnp.float32),
          jnp.zeros((plan.rows,), jnp.float32))
  m, z = lax.fori_loop(0, count, tile_step, init)
  m_ref[...] = m
  z_ref[...] = z


def _skewed_read(scratch_ref, plan: _Plan, width: int,
                 first_col: int) -> jax.Array:
  """[R, width] skewed read of the scratch tile: out[r, x] = tile[r, c] with
  c = first_col + x - (Lp - 1) + l (l = r mod Lp), 0 where c is outside the
  tile.

  A masked load: entries outside the tile (a triangle of the read) are not
  fetched, which matters because this round trip through L2 bounds the
  kernel. The addresses are rebuilt per call (iota arithmetic) rather than
  kept live across the tile loop, which would cost registers.
  """
  rows = common.iota(plan.rows)[:, None]  # [R, 1]
  x = lax.broadcasted_iota(jnp.int32, (1, width), 1)  # [1, width]
  c = first_col + x - (plan.rows_pad - 1) + rows % plan.rows_pad
  valid = (c >= 0) & (c < plan.block_k)  # [R, width]
  return plt.load(scratch_ref.at[rows, c], mask=valid, other=0.0)


def _per_head_sum(x: jax.Array, plan: _Plan) -> jax.Array:
  """[R, W] -> [heads, W]: sum over each head's Lp rows."""
  return jnp.sum(x.reshape(plan.heads, plan.rows_pad, x.shape[-1]), axis=1)


def _scores_kernel(q_ref, k_ref, m_ref, z_ref, col_ref, diag_ref, tail_ref,
                   scratch_ref, *, plan: _Plan, scale, precision,
                   barrier: bool):
  """Column sums, and diagonal sums in skewed coordinates, of each tile.

  `barrier`: synchronise the CTA around the scratch round trip (GPU; the
  interpreter runs a program's threads as one and has no barrier)."""
  bk, lp = plan.block_k, plan.rows_pad
  q = common.load_rows(q_ref, 0, plan.rows, plan.d, plan.d_pad, None)
  positions = _row_positions(plan)
  m = m_ref[...]  # [R]
  z = z_ref[...]  # [R]
  first, count = _chunk_tiles(plan)

  def skewed_sum(width, first_col):
    return _per_head_sum(
        _skewed_read(scratch_ref, plan, width, first_col), plan)

  def tile_step(i, carry):
    s, visible = _tile_logits(q, k_ref, first + i, plan, positions, scale,
                              precision)
    p = jnp.where(visible, jnp.exp(s - m[:, None]) / z[:, None], 0.0)
    local = pl.multiple_of(i * bk, bk)
    col_ref[:, pl.ds(local, bk)] = _per_head_sum(p, plan)  # [heads, BK]
    scratch_ref[...] = p
    if barrier:  # the skewed read crosses threads
      plt.debug_barrier()
    # Diagonals that end in this tile, and those that continue in the next.
    diag_ref[:, pl.ds(local, bk)] = skewed_sum(bk, 0)  # [heads, BK]
    tail_ref[:, i, :] = skewed_sum(lp, bk)  # [heads, Lp]
    if barrier:  # before the next tile overwrites the scratch
      plt.debug_barrier()
    return carry

  lax.fori_loop(0, count, tile_step, 0)


class _Launch(NamedTuple):
  """What both launches share: the plan, q's estimate rows [B, N * Lp, D]
  (row n * Lp + l is query T - L + l of head n; pad rows 0), K (padded to
  one tile if shorter), the grid, and the q / K BlockSpecs."""

  plan: _Plan
  q_rows: jax.Array
  k: jax.Array
  grid: tuple[int, int, int]
  q_spec: pl.BlockSpec
  k_spec: pl.BlockSpec
  kernel_kw: dict
  params: object


def _launch(q, k, last_q: int, config: Config) -> _Launch:
  b, t, n, d = q.shape
  g = n // k.shape[2]
  plan = _plan(b, t, n, g, d, last_q, config)
  q_last = jnp.swapaxes(q[:, t - last_q:], 1, 2)  # [B, N, L, D]
  q_rows = jnp.pad(q_last, ((0, 0), (0, 0), (0, plan.rows_pad - last_q),
                            (0, 0))).reshape(b, n * plan.rows_pad, d)
  k = common.pad_short_kv(k, k, plan.block_k)[0]
  return _Launch(
      plan=plan, q_rows=q_rows, k=k,
      grid=(plan.chunks, plan.head_groups, b),
      q_spec=pl.BlockSpec((None, plan.rows, d), lambda ci, h, bb: (bb, h, 0)),
      k_spec=pl.BlockSpec(
          (None, k.shape[1], None, d),
          lambda ci, h, bb: (bb, 0, lax.div(h, g // plan.heads), 0)),
      kernel_kw=dict(plan=plan, scale=d**-0.5,
                     precision=common.dot_precision(q.dtype)),
      params=common.compiler_params(config.num_warps, config.num_stages),
  )


def _row_stats(run: _Launch, interpret: bool):
  """Launch 1: per row, m and z over all keys -> [B, N * Lp] f32 each."""
  plan, (_, _, b) = run.plan, run.grid
  stat_spec = pl.BlockSpec((None, None, plan.rows),
                           lambda ci, h, bb: (bb, ci, h))
  stat_shape = jax.ShapeDtypeStruct(
      (b, plan.chunks, plan.head_groups * plan.rows), jnp.float32)
  m_part, z_part = pl.pallas_call(
      functools.partial(_stats_kernel, **run.kernel_kw),
      out_shape=(stat_shape, stat_shape),
      grid=run.grid,
      in_specs=[run.q_spec, run.k_spec],
      out_specs=(stat_spec, stat_spec),
      compiler_params=run.params,
      interpret=interpret,
      name=f"minf_vs_estimate_stats_d{plan.d}",
  )(run.q_rows, run.k)  # [B, C, N * Lp] each: per key chunk
  m = jnp.max(m_part, axis=1)
  return m, jnp.sum(z_part * jnp.exp(m_part - m[:, None]), axis=1)


def _line_sums(run: _Launch, m, z, interpret: bool):
  """Launch 2: (vertical [B, N, T], slash [B, N, T]) from the row stats."""
  plan, (c, hg, b) = run.plan, run.grid
  n, t, lp, bk = hg * plan.heads, plan.t, plan.rows_pad, plan.block_k
  row_spec = pl.BlockSpec((None, plan.rows), lambda ci, h, bb: (bb, h))
  line_spec = pl.BlockSpec((None, plan.heads, plan.chunk_len),
                           lambda ci, h, bb: (bb, h, ci))
  tail_spec = pl.BlockSpec((None, plan.heads, plan.tiles_per_chunk, lp),
                           lambda ci, h, bb: (bb, h, ci, 0))
  scratch_spec = pl.BlockSpec(
      (None, plan.rows, bk),
      lambda ci, h, bb: ((bb * hg + h) * c + ci, 0, 0),
  )
  line_shape = jax.ShapeDtypeStruct((b, n, plan.t_pad), jnp.float32)
  n_tiles_pad = c * plan.tiles_per_chunk
  col, diag, tail, _ = pl.pallas_call(
      functools.partial(_scores_kernel, barrier=not interpret,
                        **run.kernel_kw),
      out_shape=(
          line_shape,
          line_shape,
          jax.ShapeDtypeStruct((b, n, n_tiles_pad, lp), jnp.float32),
          jax.ShapeDtypeStruct((b * hg * c, plan.rows, bk), jnp.float32),
      ),
      grid=run.grid,
      in_specs=[run.q_spec, run.k_spec, row_spec, row_spec],
      out_specs=(line_spec, line_spec, tail_spec, scratch_spec),
      compiler_params=run.params,
      interpret=interpret,
      name=f"minf_vs_estimate_scores_d{plan.d}",
  )(run.q_rows, run.k, m, z)
  # Tiles past the last real key are never written: mask them out (also NaN
  # in interpret mode).
  written = jnp.arange(plan.t_pad) < plan.n_tiles * bk  # [T_pad]
  col = jnp.where(written, col, 0.0)
  diag = jnp.where(written, diag, 0.0)
  tail = jnp.where((jnp.arange(n_tiles_pad) < plan.n_tiles)[:, None], tail,
                   0.0)
  # Skewed column u of tile j0 holds the diagonal o = (t - L + Lp - 1) - u
  # (u = j0 + x); a tile's tail columns are the next tile's first Lp.
  tail = jnp.pad(tail, ((0, 0), (0, 0), (0, 0), (0, bk - lp)))
  tail = tail.reshape(b, n, plan.t_pad)
  bk_pad = ((0, 0), (0, 0), (0, bk))
  skewed = (jnp.pad(diag, bk_pad)
            + jnp.pad(tail, bk_pad[:2] + ((bk, 0),)))  # [B, N, T_pad + BK]
  last_u = t - plan.last_q + lp - 1  # u of offset 0
  slash = lax.rev(skewed[..., last_u - t + 1 : last_u + 1], (2,))  # [B, N, T]
  return col[..., :t], slash


@functools.partial(jax.jit, static_argnames=("last_q", "config",
                                             "interpret"))
def _fwd(q, k, *, last_q: int, config: Config, interpret: bool):
  run = _launch(q, k, last_q, config)
  m, z = _row_stats(run, interpret)
  return _line_sums(run, m, z, interpret)


@functools.partial(jax.jit, static_argnames=("last_q", "config"))
def row_stats(q, k, *, last_q: int, config: Config):
  """Launch 1 alone, [B, N * Lp] row max and sum (for benchmarks)."""
  return _row_stats(_launch(q, k, last_q, config), interpret=False)


@jaxtyped(typechecker=beartype)
def vs_line_scores(
    q: Float[Array, "B T N D"],
    k: Float[Array, "B S K D"],
    last_q: int,
    *,
    config: Config | None = None,
    interpret: bool = False,
) -> tuple[Float[Array, "B N T"], Float[Array, "B N T"]]:
  """Vertical and slash scores of MInference's estimate, fused on the GPU.

  With P = softmax_f32(round(q[T - L:] k^T / sqrt(D))) [L, S] per query
  head (causal on the L x L corner, logits rounded to the input dtype):
  vertical[j] = sum_i P[i, j] and slash[o] = sum_i P[i, T - L + i - o].
  The same numbers as `minference_jax.index_vs`'s XLA scores up to f32
  summation order; K is read twice and the logits are never stored.

  Args:
    q: [B, T, N, D] queries (float32, bfloat16 or float16).
    k: [B, S, K, D] keys, S == T, N % K == 0.
    last_q: L, the number of trailing queries (1 <= L <= T, and its
      power-of-two padding at most `config.block_k`).
    config: launch knobs; `Config()` (block_k raised to the padded last_q)
      if None.
    interpret: run in Pallas interpret mode (CPU tests).

  Returns:
    (vertical [B, N, T], slash [B, N, T]) f32, nothing forced yet.

  Raises:
    ValueError: on inconsistent shapes or a last_q out of range.
    TypeError: on unsupported dtypes.
  """
  common.check_qkv(q, k, k, "vs_line_scores")
  if isinstance(last_q, bool) or not isinstance(last_q, int):
    raise TypeError(f"last_q must be an int, got {type(last_q).__name__}")
  if not 1 <= last_q <= q.shape[1]:
    raise ValueError(f"last_q={last_q} must be in [1, T={q.shape[1]}]")
  if config is None:
    rows_pad = max(16, pl.next_power_of_2(last_q))
    config = Config(block_k=max(Config().block_k, rows_pad))
  return _fwd(q, k, last_q=last_q, config=config, interpret=interpret)
