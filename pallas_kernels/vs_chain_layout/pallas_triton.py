"""Pallas-Triton builder of the Vertical-Slash chain layout (O(T) per head).

`minference_jax.index_vs_layout.vertical_slash_chain_layout` builds four
[B, N, Y] int32 arrays (Y = T + bs + 1) from each head's slash and vertical
lists; its XLA form scatters histograms and runs full-length cumulative sums
and a cumulative max along the residue classes. The arrays are piecewise
functions of the two short sorted lists, so here every entry is computed
where it is stored:

1. `_table_kernel`, one program per tile of R x bs table indices
   (row p = i // bs, residue c = i % bs):
   - window_next[i]: with y = i - bs and n_ge = #{offsets >= y},
     window_next = min(y - bs, slash[n_ge]) + bs if y > 0 and an offset
     < y exists, else 0;
   - vertical_prefix[i] = #{verticals < i};
   - per residue, the tile's last "break" row: a row whose window is not
     adjacent to its successor (window_next[i] != i - bs or i - bs <= 0).
   Both counts come from a search of the sorted list: first for the tile's
   two ends (16-ary, 4 dependent gathers for 6096 slashes), then per
   element by binary lifting between those two counts (a tile holds few
   list entries, so 0 to 2 steps are typical).
2. XLA: the exclusive running max of the tiles' last breaks, [B N, tiles,
   bs] (a few MB), the last break before each tile.
3. `_runs_kernel`, same tiles: the last break at or below each row, from a
   32-bit mask per residue of the tile's adjacent rows (bit r: row r) and a
   count of leading ones (clz) of its shifted complement, or the carry of
   step 2 when the run reaches below the tile; run_length = p - that row +
   1, run_next = window_next[that row's index] (a gather of step 1's
   output).

The outputs equal the XLA builder's bit for bit (the tests compare them on
random lists); the lists must be sorted (slash descending, vertical
ascending over their counts), as `vertical_slash_indices` makes them.
Timings against the XLA builder: docs/kernels.md.
"""

import dataclasses
import functools

import jax
import jax.numpy as jnp
from jax import lax
from jax.experimental import pallas as pl
from jax.experimental.pallas import triton as plt

from pallas_kernels import common
from pallas_kernels.layouts import VerticalSlashChainLayout

# A tile's rows of bs indices share one 32-bit adjacency mask per residue.
MAX_ROWS_PER_TILE = 32


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class Config:
  """Launch knobs of the chain-layout builder.

  Attributes:
    rows_per_tile: R, rows of bs table indices per program (a power of two
      <= 32, the width of the adjacency mask); a tile is R * bs entries.
    num_warps: Triton warps per program.

  The defaults were the fastest setting of a sweep over R and warps at
  T = 1M, N = 32, bs = 64 (docs/kernels.md).
  """

  rows_per_tile: int = 16
  num_warps: int = 4

  def __post_init__(self):
    r = self.rows_per_tile
    if (isinstance(r, bool) or not isinstance(r, int)
        or not common.is_power_of_two(r) or r > MAX_ROWS_PER_TILE):
      raise ValueError(
          f"rows_per_tile={r!r} must be a power of two <= {MAX_ROWS_PER_TILE}")
    common.check_launch(self.num_warps, 1)


@dataclasses.dataclass(frozen=True)
class _Plan:
  t: int  # sequence length T
  bs: int  # window / row block size (a power of two)
  rows: int  # R, rows of bs indices per tile
  heads: int  # B * N

  @property
  def size(self) -> int:  # Y, entries per head of each table
    return self.t + self.bs + 1

  @property
  def tiles(self) -> int:
    return pl.cdiv(pl.cdiv(self.size, self.bs), self.rows)


def _tile_indices(plan: _Plan):
  """(row p [R, 1], table index i [R, bs]) of this program's tile."""
  rows = (pl.program_id(0) * plan.rows
          + lax.broadcasted_iota(jnp.int32, (plan.rows, 1), 0))  # [R, 1]
  cols = lax.broadcasted_iota(jnp.int32, (1, plan.bs), 1)  # [1, bs]
  return rows, rows * plan.bs + cols


def _bit_length(x):
  """Bits of a traced int32 scalar x >= 0 (0 for 0)."""
  return 32 - lax.clz(x)


def _lift(ref, h, start, limit, length: int, holds, probe, steps):
  """Binary lifting from `start`: the largest n in [start, limit] such that
  holds(ref[h, n - 1], probe) for every n' in (start, n], given that
  holds(ref[h, n' - 1], probe) is true for n' up to some point and false
  after it (a sorted list against a threshold). Steps 2^(steps - 1), ...,
  1 (so limit - start < 2^steps); each gathers one entry per element.

  Args:
    ref: [H, length] list ref; h: the row.
    start: scalar or array (shaped like probe), the known lower end.
    limit: scalar, the upper end (the list's valid count or a bound).
    holds: (entries, probe) -> bool, elementwise.
    probe: [...] int32 thresholds.
    steps: static int or traced int32 scalar (a dynamic trip count).
  """

  def lift(it, n):
    cand = n + lax.shift_left(jnp.int32(1), steps - 1 - it)
    entry = ref[h, jnp.clip(cand, 1, length) - 1]  # gather
    return jnp.where((cand <= limit) & holds(entry, probe), cand, n)

  n = jnp.broadcast_to(jnp.asarray(start, jnp.int32), probe.shape)
  return lax.fori_loop(0, steps, lift, n)


# Candidates per step of the tiles' end search (a 16-ary search: 4 dependent
# gathers for a 6096-entry list instead of 13).
_FAN = 16


def _count_at_ends(ref, h, n_valid, holds, ends):
  """`_lift`'s count for the two probes `ends` [2] by a _FAN-ary search:
  each step gathers _FAN candidates n + s, n + 2 s, ... at once and
  advances n by s times the number that hold (they hold on a prefix), so
  the dependent gathers number log_FAN(length) (a program's latency before
  its stores)."""
  length = ref.shape[1]
  stride = 1
  while stride * _FAN <= length:
    stride *= _FAN
  n = jnp.zeros(ends.shape, jnp.int32)  # [2]
  multiples = 1 + lax.broadcasted_iota(jnp.int32, (1, _FAN), 1)  # [1, FAN]
  while stride:
    cand = n[:, None] + stride * multiples  # [2, FAN]
    entry = ref[h, jnp.clip(cand, 1, length) - 1]  # gather
    ok = (cand <= n_valid) & holds(entry, ends[:, None])
    n = n + stride * jnp.sum(ok.astype(jnp.int32), axis=1)
    stride //= _FAN
  return n


def _count_prefix(ref, h, n_valid, holds, probe, tile_ends):
  """Per element of probe [R, bs], the number of leading entries of
  ref[h, :n_valid] that hold against it (true on a prefix of the list).

  First the counts at the tile's extreme probes `tile_ends` [2]
  (`_count_at_ends`), which bound every element's count as counts are
  monotone in the probe; then each element lifts only within those
  bounds, usually 0 to 2 steps since a tile holds few entries of the list
  (at most one per probe value)."""
  ends = _count_at_ends(ref, h, n_valid, holds, tile_ends)  # [2]
  lo, hi = jnp.min(ends), jnp.max(ends)
  return _lift(ref, h, lo, hi, ref.shape[1], holds, probe,
               _bit_length(hi - lo))


def _adjacent(window_next, i, bs: int):
  """True where index i's successor is the adjacent window i - bs (the
  run continues); i - bs <= 0 never is."""
  return (window_next == i - bs) & (i > bs)


def _table_kernel(slash_ref, s_count_ref, vertical_ref, v_count_ref,
                  next_ref, prefix_ref, last_break_ref, *, plan: _Plan):
  """window_next and vertical_prefix of one tile, and per residue the
  tile's last row that is not adjacent (-1 if none)."""
  h = pl.program_id(1)
  bs, ns = plan.bs, slash_ref.shape[1]
  rows, i = _tile_indices(plan)  # [R, 1], [R, bs]
  in_range = i < plan.size
  y = i - bs  # the walk's distance y = end - range end
  s_count = s_count_ref[h]
  tile_len = plan.rows * bs
  ends = (pl.program_id(0) * tile_len  # the tile's first and last index
          + lax.broadcasted_iota(jnp.int32, (2,), 0) * (tile_len - 1))
  n_ge = _count_prefix(slash_ref, h, s_count, lambda o, at: o >= at, y,
                       ends - bs)  # offsets >= y (slash descending)
  pred = slash_ref[h, jnp.minimum(n_ge, ns - 1)]  # largest offset < y
  nxt = jnp.where((y > 0) & (n_ge < s_count), jnp.minimum(y - bs, pred) + bs,
                  0)  # [R, bs]
  plt.store(next_ref.at[h, i], nxt, mask=in_range)
  breaks = jnp.where(_adjacent(nxt, i, bs) | ~in_range, -1, rows)
  last_break_ref[...] = jnp.max(breaks, axis=0)  # [bs]
  t = plan.t
  prefix = _count_prefix(
      vertical_ref, h, v_count_ref[h], lambda v, at: jnp.clip(v, 0, t) < at,
      i, ends)  # verticals < i (vertical ascending)
  plt.store(prefix_ref.at[h, i], prefix, mask=in_range)


def _runs_kernel(next_ref, carry_ref, length_ref, run_next_ref, *,
                 plan: _Plan):
  """run_length and run_next of one tile from window_next and the last
  break row of each residue before the tile (`carry_ref`, [bs])."""
  h = pl.program_id(1)
  bs = plan.bs
  rows, i = _tile_indices(plan)  # [R, 1], [R, bs]
  in_range = i < plan.size
  nxt = plt.load(next_ref.at[h, i], mask=in_range, other=0)  # [R, bs]
  local = lax.broadcasted_iota(jnp.int32, i.shape, 0)  # r in [0, R)
  bit = lax.shift_left(jnp.int32(1), local)  # bit r (r = 31: the sign bit)
  mask = jnp.sum(jnp.where(_adjacent(nxt, i, bs), bit, 0), axis=0)  # [bs]
  # Row r at the top bit, rows above it shifted out: the leading ones are
  # the adjacent rows r, r - 1, ... (clz of the complement counts them,
  # r + 1 when the whole tile up to r is adjacent).
  ones = lax.clz(~lax.shift_left(mask[None, :], 31 - local))  # [R, bs]
  last_break = jnp.where(ones <= local, rows - ones, carry_ref[...][None, :])
  plt.store(length_ref.at[h, i], rows - last_break + 1, mask=in_range)
  last_window = last_break * bs + (i - rows * bs)  # the run's last window
  run_next = plt.load(next_ref.at[h, last_window], mask=in_range, other=0)
  plt.store(run_next_ref.at[h, i], run_next, mask=in_range)


def _whole(shape):
  """A BlockSpec handing every program the whole array (a pointer)."""
  return pl.BlockSpec(shape, lambda tile, h: (0,) * len(shape))


def _launch(plan: _Plan, config: Config, interpret: bool) -> dict:
  """pallas_call arguments both passes share."""
  # Tiles vary fastest: neighbouring programs search the same head's lists.
  return dict(grid=(plan.tiles, plan.heads),
              compiler_params=common.compiler_params(config.num_warps, 1),
              interpret=interpret)


def _table_pass(slash, slash_count, vertical, vertical_count, plan: _Plan,
                config: Config, interpret: bool):
  """Launch 1: window_next and vertical_prefix [B N, Y], and the tiles'
  last break rows [B N, tiles, bs]."""
  ns, nv = slash.shape[-1], vertical.shape[-1]
  h = plan.heads
  table = jax.ShapeDtypeStruct((h, plan.size), jnp.int32)
  return pl.pallas_call(
      functools.partial(_table_kernel, plan=plan),
      out_shape=(table, table,
                 jax.ShapeDtypeStruct((h, plan.tiles, plan.bs), jnp.int32)),
      in_specs=[_whole((h, ns)), _whole((h,)), _whole((h, nv)),
                _whole((h,))],
      out_specs=(_whole(table.shape), _whole(table.shape),
                 _summary_spec(plan)),
      name=f"minf_vs_chain_table_bs{plan.bs}",
      **_launch(plan, config, interpret),
  )(slash.reshape(h, ns).astype(jnp.int32),
    slash_count.reshape(h).astype(jnp.int32),
    vertical.reshape(h, nv).astype(jnp.int32),
    vertical_count.reshape(h).astype(jnp.int32))


def _summary_spec(plan: _Plan) -> pl.BlockSpec:
  """Per program, its [bs] row of a [B N, tiles, bs] per-tile array."""
  return pl.BlockSpec((None, None, plan.bs), lambda tile, h: (h, tile, 0))


def _runs_pass(window_next, last_break, plan: _Plan, config: Config,
               interpret: bool):
  """XLA's running max of the tiles' last breaks, then launch 2:
  run_length and run_next [B N, Y]."""
  # The last break of each residue before each tile (tile 0's row 0 breaks
  # in every residue, so its carry is never read).
  carry = jnp.pad(lax.cummax(last_break, axis=1)[:, :-1],
                  ((0, 0), (1, 0), (0, 0)), constant_values=-1)
  table = jax.ShapeDtypeStruct(window_next.shape, jnp.int32)
  return pl.pallas_call(
      functools.partial(_runs_kernel, plan=plan),
      out_shape=(table, table),
      in_specs=[_whole(table.shape), _summary_spec(plan)],
      out_specs=(_whole(table.shape), _whole(table.shape)),
      name=f"minf_vs_chain_runs_bs{plan.bs}",
      **_launch(plan, config, interpret),
  )(window_next, carry)


@functools.partial(jax.jit,
                   static_argnames=("seq_len", "block_size", "config",
                                    "interpret"))
def _build(slash, slash_count, vertical, vertical_count, *, seq_len: int,
           block_size: int, config: Config, interpret: bool):
  b, n, _ = slash.shape
  plan = _Plan(seq_len, block_size, config.rows_per_tile, b * n)
  window_next, prefix, last_break = _table_pass(
      slash, slash_count, vertical, vertical_count, plan, config, interpret)
  run_length, run_next = _runs_pass(window_next, last_break, plan, config,
                                    interpret)
  shape = (b, n, plan.size)
  return tuple(x.reshape(shape)
               for x in (window_next, run_length, run_next, prefix))


@functools.partial(jax.jit, static_argnames=("seq_len", "block_size",
                                             "config"))
def table_pass(slash, slash_count, vertical, vertical_count, *, seq_len: int,
               block_size: int, config: Config):
  """Launch 1 alone (for benchmarks): window_next, vertical_prefix and the
  per-tile last breaks, heads flattened."""
  plan = _Plan(seq_len, block_size, config.rows_per_tile,
               slash.shape[0] * slash.shape[1])
  return _table_pass(slash, slash_count, vertical, vertical_count, plan,
                     config, interpret=False)


def vs_chain_layout(
    slash: jax.Array,
    slash_count: jax.Array,
    vertical: jax.Array,
    vertical_count: jax.Array,
    seq_len: int,
    block_size: int,
    *,
    config: Config | None = None,
    interpret: bool = False,
) -> VerticalSlashChainLayout:
  """The chain layout of sorted slash / vertical lists, on the GPU.

  Args:
    slash: [B, N, NS] int32 offsets, strictly descending over the first
      slash_count[b, n] entries (the rest is ignored).
    slash_count: [B, N] int32 in [0, NS].
    vertical: [B, N, NV] int32 columns, ascending over the first
      vertical_count[b, n] entries.
    vertical_count: [B, N] int32 in [0, NV].
    seq_len: static T.
    block_size: static bs, a power of two.
    config: launch knobs (`Config()` if None).
    interpret: run in Pallas interpret mode (CPU tests).

  Returns:
    VerticalSlashChainLayout; window_next, run_length, run_next and
    vertical_prefix are [B, N, T + bs + 1] (see that class), vertical is
    the input with entries past the count set to T - 1.

  Raises:
    ValueError: block_size not a power of two, a non-int or non-positive
      seq_len, or bad shapes.
  """
  if not common.is_power_of_two(block_size):
    raise ValueError(f"block_size={block_size} must be a power of two")
  if isinstance(seq_len, bool) or not isinstance(seq_len, int) or (
      seq_len < 1):
    raise ValueError(f"seq_len must be a static int >= 1, got {seq_len!r}")
  if slash.ndim != 3 or vertical.shape[:2] != slash.shape[:2]:
    raise ValueError(f"slash{slash.shape} and vertical{vertical.shape} must"
                     " be [B, N, NS] and [B, N, NV]")
  for name, count in (("slash_count", slash_count),
                      ("vertical_count", vertical_count)):
    if count.shape != slash.shape[:2]:
      raise ValueError(f"{name} has shape {count.shape}; expected [B, N] ="
                       f" {slash.shape[:2]}")
  config = Config() if config is None else config
  window_next, run_length, run_next, prefix = _build(
      slash, slash_count, vertical, vertical_count, seq_len=seq_len,
      block_size=block_size, config=config, interpret=interpret)
  valid = jnp.arange(vertical.shape[-1]) < vertical_count[..., None]
  return VerticalSlashChainLayout(
      window_next=window_next,
      run_length=run_length,
      run_next=run_next,
      vertical=jnp.where(valid, vertical.astype(jnp.int32), seq_len - 1),
      vertical_prefix=prefix,
      block_size=block_size,
  )
