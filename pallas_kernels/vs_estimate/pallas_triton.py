"""Pallas-Triton Vertical-Slash estimate: line scores of the last queries.

MInference ranks a head's vertical lines (key columns) and slash lines
(diagonals) by the softmax of its last L queries against all keys: column
sums and diagonal sums of P = softmax(q[T - L:] k^T / sqrt(D)) [L, S]. The
XLA form (`minference_jax.index_vs_estimate`) writes the [N, L, S] logits
and reads them three times (row stats, column sums, diagonal sums); at 1M
tokens that is most of the estimate. Here two launches read only K, twice:

1. Row stats: per key chunk, the running max m and sum z of exp(logits - m)
   of every (head, row); the chunks are merged in XLA (a few MB).
2. Scores: recompute the logits tile by tile, P = exp(logits - m) / z; the
   column sums are a reduction over the rows. The diagonal sums need each
   row shifted by its index (row l of the tile moves by L - 1 - l), which a
   Triton register tile cannot do. The tile goes through a small
   per-program scratch instead (it stays in L1/L2): stored at skewed
   addresses (row l shifted right by Lp - 1 - l), then read back plainly,
   so that column x of the read holds one diagonal; a tile's diagonals
   spill Lp columns into the next tile ("tail"), added in XLA.

Both loops first run the tiles that lie before every estimate row without
masks, then the last ones with them (timings of both passes and of the
scratch variants: docs/kernels.md).

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

SCRATCH_KINDS = ("skewed_store", "probs", "logits")


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
      tiles larger (the defaults: the fastest knobs measured,
      docs/kernels.md).
    scratch: how the scores pass skews the rows through its scratch:
      "skewed_store" (the f32 probabilities stored at skewed addresses
      into a [R, 2 BK] scratch whose unwritten triangles stay 0, read back
      plainly), "probs" (stored plainly, read at skewed addresses, masked)
      or "logits" (as "probs", with the rounded logits in the input dtype,
      2 bytes for bf16, normalised after the read at the cost of one more
      exp per element read).
    exp2: exponentials as exp2((s - m) log2(e)) (a multiply and the
      hardware exp2) instead of libdevice's expf: the stats pass is
      ALU-bound, and this costs an extra rounding of ~1e-7 relative per
      exponent.
    stats_block_k, stats_num_stages: block_k and num_stages of launch 1
      (row stats), which has no scratch and so its own best tile.
  """

  block_k: int = 128
  programs: int = 1024
  num_warps: int = 4
  num_stages: int = 2
  heads_per_program: int = 1
  scratch: str = "skewed_store"
  exp2: bool = True
  stats_block_k: int = 64
  stats_num_stages: int = 3

  def __post_init__(self):
    common.check_block("block_k", self.block_k)
    common.check_block("stats_block_k", self.stats_block_k)
    common.check_launch(self.num_warps, self.stats_num_stages)
    h = self.heads_per_program
    if (isinstance(h, bool) or not isinstance(h, int)
        or not common.is_power_of_two(h)):
      raise ValueError(f"heads_per_program={h!r} must be a power of two")
    common.check_launch(self.num_warps, self.num_stages)
    if isinstance(self.programs, bool) or not isinstance(self.programs, int):
      raise TypeError(f"programs must be an int, got {self.programs!r}")
    if self.programs < 1:
      raise ValueError(f"programs={self.programs} must be >= 1")
    if not isinstance(self.exp2, bool):
      raise TypeError(f"exp2 must be a bool, got {self.exp2!r}")
    if self.scratch not in SCRATCH_KINDS:
      raise ValueError(
          f"scratch={self.scratch!r} must be one of {SCRATCH_KINDS}")

  def for_stats(self) -> "Config":
    """The knobs of launch 1 (row stats): its own tile and stages."""
    return dataclasses.replace(self, block_k=self.stats_block_k,
                               num_stages=self.stats_num_stages)


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

  @property
  def full_tiles(self) -> int:  # leading tiles every real row sees whole
    return (self.t - self.last_q + 1) // self.block_k


def _plan(b: int, t: int, n: int, g: int, d: int, last_q: int,
          config: Config) -> _Plan:
  rows_pad = max(16, pl.next_power_of_2(last_q))
  if rows_pad > config.block_k:
    raise ValueError(
        f"vs_line_scores: last_q={last_q} (padded to {rows_pad}) must not"
        f" exceed the tile of {config.block_k} keys (Config.block_k and"
        " Config.stats_block_k)"
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


def _tile_logits(q, k_ref, tile, plan: _Plan, positions, scale, precision,
                 masked: bool):
  """f32 logits [R, BK] of the program rows against key tile `tile`,
  rounded to the input dtype first; with `masked`, keys past T or a row's
  position are MASK_VALUE (else the tile must lie before every real row,
  and pad rows see garbage that their m' = +inf later zeroes)."""
  bk = plan.block_k
  j0 = pl.multiple_of(tile * bk, bk)
  cols = j0 + common.iota(bk)  # [BK]
  k = common.load_rows(k_ref, j0, bk, plan.d, plan.d_pad,
                       (cols < plan.t) if masked else None)  # [BK, Dp]
  s = lax.dot_general(
      q, k, (((1,), (1,)), ((), ())), precision=precision,
      preferred_element_type=jnp.float32,
  ) * scale  # [R, BK]
  s = s.astype(q.dtype).astype(jnp.float32)
  if not masked:
    return s
  visible = cols[None, :] <= positions[:, None]  # [R, BK]
  return jnp.where(visible, s, common.MASK_VALUE)


def _tile_loop(plan: _Plan, body, init):
  """Runs body(i, carry, masked) over this program's tiles (i = 0 .. count
  - 1 from its first tile): first the tiles before every real row's
  position without masks (the compares and selects are a noticeable part
  of these ALU-bound loops), then the rest with them. Returns the carry."""
  first = pl.program_id(0) * plan.tiles_per_chunk
  count = jnp.clip(plan.n_tiles - first, 0, plan.tiles_per_chunk)
  n_full = jnp.clip(plan.full_tiles - first, 0, count)
  carry = lax.fori_loop(0, n_full, lambda i, c: body(first, i, c, False),
                        init)
  return lax.fori_loop(n_full, count, lambda i, c: body(first, i, c, True),
                       carry)


def _exp_minus(s, m, exp2: bool):
  """exp(s - m), f32, for s [R, W] and m [R, 1] (or both [R]). The
  difference comes first, so MASK_VALUE - MASK_VALUE is 0 (a row that sees
  no key of a chunk gets a finite z there, weighted 0 in the merge) and a
  masked logit minus a real m stays finite before the scaling."""
  if exp2:
    return jnp.exp2((s - m) * common.LOG2E)
  return jnp.exp(s - m)


def _stats_kernel(q_ref, k_ref, m_ref, z_ref, *, plan: _Plan, scale,
                  precision, exp2: bool):
  """Per row: max m and sum z of exp(logits - m) over this chunk's keys
  (pad rows: anything, possibly NaN; the scores pass zeroes them)."""
  q = common.load_rows(q_ref, 0, plan.rows, plan.d, plan.d_pad, None)
  positions = _row_positions(plan)

  def tile_step(first, i, carry, masked):
    m, z = carry
    s = _tile_logits(q, k_ref, first + i, plan, positions, scale, precision,
                     masked)
    m_new = jnp.maximum(m, jnp.max(s, axis=1))
    z = (z * _exp_minus(m, m_new, exp2)
         + jnp.sum(_exp_minus(s, m_new[:, None], exp2), axis=1))
    return m_new, z

  init = (jnp.full((plan.rows,), common.MASK_VALUE, jnp.float32),
          jnp.zeros((plan.rows,), jnp.float32))
  m, z = _tile_loop(plan, tile_step, init)
  m_ref[...] = m
  z_ref[...] = z


def _skewed_read(scratch_ref, plan: _Plan, width: int, first_col: int,
                 other) -> jax.Array:
  """[R, width] skewed read of the scratch tile: out[r, x] = tile[r, c] with
  c = first_col + x - (Lp - 1) + l (l = r mod Lp), `other` where c is
  outside the tile.

  A masked load: entries outside the tile (a triangle of the read) are not
  fetched, which matters because this round trip through L2 bounds the
  kernel. The addresses are rebuilt per call (iota arithmetic) rather than
  kept live across the tile loop, which would cost registers.
  """
  rows = common.iota(plan.rows)[:, None]  # [R, 1]
  x = lax.broadcasted_iota(jnp.int32, (1, width), 1)  # [1, width]
  c = first_col + x - (plan.rows_pad - 1) + rows % plan.rows_pad
  valid = (c >= 0) & (c < plan.block_k)  # [R, width]
  return plt.load(scratch_ref.at[rows, c], mask=valid, other=other)


def _per_head_sum(x: jax.Array, plan: _Plan) -> jax.Array:
  """[R, W] -> [heads, W]: sum over each head's Lp rows."""
  return jnp.sum(x.reshape(plan.heads, plan.rows_pad, x.shape[-1]), axis=1)


def _row_normaliser(m, z, plan: _Plan):
  """(m' [R, 1], 1/z' [R, 1]) with P = exp(s - m') / z' for a logit tile
  s [R, W]: m' = +inf and 1/z' = 0 on pad rows, so their P is 0 without a
  mask whatever their stats (masked logits are MASK_VALUE, or -inf in f16,
  and give 0 on real rows too). Multiplying by 1/z instead of dividing
  differs by an ulp at most."""
  real = _row_positions(plan) >= 0  # [R]
  return (jnp.where(real, m, jnp.inf)[:, None],
          jnp.where(real, 1.0 / z, 0.0)[:, None])


def _skewed_store(scratch_ref, p, plan: _Plan) -> None:
  """scratch[r, c + Lp - 1 - l] = p[r, c] (l = r mod Lp) for p [R, BK]: row
  r's diagonals land in columns [Lp - 1 - l, Lp - 1 - l + BK) of the
  [R, 2 BK] scratch. The columns outside are never written, so they keep
  the zeros stored once per program. Along a row the addresses stay
  contiguous, so the store is as coalesced as a plain one."""
  rows = common.iota(plan.rows)[:, None]  # [R, 1]
  c = lax.broadcasted_iota(jnp.int32, (1, plan.block_k), 1)  # [1, BK]
  plt.store(scratch_ref.at[rows, c + (plan.rows_pad - 1) - rows
                           % plan.rows_pad], p)


def _scores_kernel(q_ref, k_ref, m_ref, z_ref, col_ref, diag_ref, tail_ref,
                   scratch_ref, *, plan: _Plan, scale, precision,
                   barrier: bool, scratch: str, exp2: bool):
  """Column sums, and diagonal sums in skewed coordinates, of each tile.

  scratch="skewed_store": the tile is stored skewed and read back with
  plain (vectorised) loads, columns [0, BK) holding the diagonals that end
  in this tile and [BK, BK + Lp) those that continue in the next.
  "probs" / "logits": stored plainly and read skewed with masked gathers;
  the skew only moves entries within a row, so with "logits" the tile is
  stored as its rounded logits (exact in the input dtype) and normalised
  after the read with the same per-row m and z.

  `barrier`: synchronise the CTA around the scratch round trip (GPU; the
  interpreter runs a program's threads as one and has no barrier)."""
  bk, lp = plan.block_k, plan.rows_pad
  q = common.load_rows(q_ref, 0, plan.rows, plan.d, plan.d_pad, None)
  positions = _row_positions(plan)
  m, inv_z = _row_normaliser(m_ref[...], z_ref[...], plan)  # [R, 1] each
  probs = lambda s: _exp_minus(s.astype(jnp.float32), m, exp2) * inv_z
  sync = plt.debug_barrier if barrier else lambda: None

  def skewed_sums(s, p):
    """(diagonals ending in this tile [heads, BK], continuing [heads, Lp])."""
    if scratch == "skewed_store":
      _skewed_store(scratch_ref, p, plan)
      sync()  # the read crosses threads
      return (_per_head_sum(scratch_ref[:, pl.ds(0, bk)], plan),
              _per_head_sum(scratch_ref[:, pl.ds(bk, lp)], plan))
    logits = scratch == "logits"
    scratch_ref[...] = s.astype(scratch_ref.dtype) if logits else p
    sync()
    other, post = (-jnp.inf, probs) if logits else (0.0, lambda x: x)
    return tuple(
        _per_head_sum(post(_skewed_read(scratch_ref, plan, width, first_col,
                                        other)), plan)
        for width, first_col in ((bk, 0), (lp, bk)))

  def tile_step(first, i, carry, masked):
    s = _tile_logits(q, k_ref, first + i, plan, positions, scale, precision,
                     masked)
    p = probs(s)  # [R, BK]
    local = pl.multiple_of(i * bk, bk)
    col_ref[:, pl.ds(local, bk)] = _per_head_sum(p, plan)  # [heads, BK]
    diag, tail = skewed_sums(s, p)
    diag_ref[:, pl.ds(local, bk)] = diag  # [heads, BK]
    tail_ref[:, i, :] = tail  # [heads, Lp]
    sync()  # before the next tile overwrites the scratch
    return carry

  if scratch == "skewed_store":  # the triangles no tile writes
    scratch_ref[...] = jnp.zeros(scratch_ref.shape, scratch_ref.dtype)
    sync()
  _tile_loop(plan, tile_step, 0)


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
  scratch: str  # Config.scratch


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
                     precision=common.dot_precision(q.dtype),
                     exp2=config.exp2),
      scratch=config.scratch,
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
  scratch_width = 2 * bk if run.scratch == "skewed_store" else bk
  scratch_spec = pl.BlockSpec(
      (None, plan.rows, scratch_width),
      lambda ci, h, bb: ((bb * hg + h) * c + ci, 0, 0),
  )
  line_shape = jax.ShapeDtypeStruct((b, n, plan.t_pad), jnp.float32)
  n_tiles_pad = c * plan.tiles_per_chunk
  col, diag, tail, _ = pl.pallas_call(
      functools.partial(_scores_kernel, barrier=not interpret,
                        scratch=run.scratch, **run.kernel_kw),
      out_shape=(
          line_shape,
          line_shape,
          jax.ShapeDtypeStruct((b, n, n_tiles_pad, lp), jnp.float32),
          jax.ShapeDtypeStruct(
              (b * hg * c, plan.rows, scratch_width),
              run.q_rows.dtype if run.scratch == "logits" else jnp.float32),
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
  m, z = _row_stats(_launch(q, k, last_q, config.for_stats()), interpret)
  return _line_sums(_launch(q, k, last_q, config), m, z, interpret)


@functools.partial(jax.jit, static_argnames=("last_q", "config"))
def row_stats(q, k, *, last_q: int, config: Config):
  """Launch 1 alone, [B, N * Lp] row max and sum (for benchmarks)."""
  return _row_stats(_launch(q, k, last_q, config.for_stats()),
                    interpret=False)


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
  The same numbers as `minference_jax.index_vs_estimate`'s XLA scores up to
  f32 summation order; K is read twice and the logits are never stored.

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
    config = Config(block_k=max(Config().block_k, rows_pad),
                    stats_block_k=max(Config().stats_block_k, rows_pad))
  return _fwd(q, k, last_q=last_q, config=config, interpret=interpret)
