"""Vertical-Slash layouts: MInference 1.0's merge of the selected lines.

MInference (Jiang et al., 2024), appendix C.4.2 (reference implementation
`convert_vertical_slash_indexes`): per 64-row query block, the slash lines
are merged into 64-wide key windows and the vertical lines that no window
covers become single key columns. `vertical_slash_layout` stores them per
row block (the expanded layout, [B, N, Tb, NS | NV]);
`vertical_slash_chain_layout` stores the same windows in O(T) per head (the
merge's successor table and its runs) for the chain kernel.
"""

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
from beartype import beartype
from jaxtyping import jaxtyped

from minference_jax.index_checks import check_int
from minference_jax.index_vs_estimate import VerticalSlashIndices
from pallas_kernels.layouts import (
    BLOCK_SIZE,
    VerticalSlashChainLayout,
    VerticalSlashLayout,
)
from pallas_kernels.vs_chain_layout import vs_chain_layout

# MInference's merge as a walk on integers (our reformulation; exact). For the
# row block with rows [start_m, end_m), the reference keeps a current range
# end `re`; write y = end_m - re. The next slash that changes anything is the
# largest offset o* < y, pred(y) (offsets >= y have windows ending <= re). It
# opens a new range if its window starts past re (o* < y - bs: new y = o*),
# else the range grows by one window (new y = y - bs). Hence
#   y_{k+1} = F(y_k) = min(y_k - bs, pred(y_k)),   y_0 = end_m,
# until no offset < y is left; the first, clamped window max(end_m - o, bs)
# falls out of the same formula. Window k starts at end_m - y_k - bs. F only
# depends on the head's slashes, so one table per head serves every row
# block, each walking it from its own end_m. Windows are disjoint and start
# in [0, end_m), so a row block has at most min(NS, m + 1) of them.


def _histogram(bins, valid, size: int):
  """Per (b, n) counts of `bins` [B, N, X] where `valid`: [B, N, size] int32."""
  add = lambda i, w: jnp.zeros(size, jnp.int32).at[i].add(w, mode="drop")
  return jax.vmap(jax.vmap(add))(bins, valid.astype(jnp.int32))


def _successor_table(slash, s_count, seq_len: int, bs: int):
  """F on y in (-bs, T], stored at index y + bs; index 0 means "stopped".

  Args:
    slash: [B, N, NS] offsets, descending where valid.
    s_count: [B, N] valid entries.

  Returns:
    [B, N, T + bs + 1] int32 table: index of F(y), or 0 if no offset < y.
  """
  ns = slash.shape[-1]
  valid = jnp.arange(ns) < s_count[..., None]  # [B, N, NS]
  hist = _histogram(jnp.clip(slash, 0, seq_len), valid, seq_len + 1)
  at_least = jnp.cumsum(hist[..., ::-1], axis=-1)[..., ::-1]  # # offsets >= x
  y = jnp.arange(1 - bs, seq_len + 1, dtype=jnp.int32)  # (-bs, T]
  n_ge = jnp.where(
      y <= 0,
      s_count[..., None],
      jnp.take(at_least, jnp.clip(y, 0, seq_len), axis=-1),
  )  # [B, N, T + bs]: list position of pred(y)
  pred = jnp.take_along_axis(slash, jnp.minimum(n_ge, ns - 1), axis=-1)
  table = jnp.where(
      n_ge < s_count[..., None], jnp.minimum(y - bs, pred) + bs, 0
  )
  return jnp.pad(table, ((0, 0), (0, 0), (1, 0)))  # index 0: stays stopped


def _walk(table, start, steps: int):
  """y_1 .. y_steps of the successor table from `start`, in depth ~2 sqrt.

  Jumps c = 2^j steps at a time to get every c-th value (a table of F^c by
  repeated squaring), then fills each stretch of c values; both loops are
  scans vectorised over all (B, N, row block) lanes.

  Args:
    table: [B, N, Y] int32 successor table (index 0 is absorbing).
    start: [B, N, L] int32 start indices.
    steps: static number of values to produce.

  Returns:
    [B, N, L, steps] int32 table indices.
  """
  b, n, lanes = start.shape
  c = 1 << max(0, round(math.log2(steps) / 2))
  n_chunks = -(-steps // c)
  jump = table
  for _ in range(c.bit_length() - 1):
    jump = jnp.take_along_axis(jump, jump, axis=-1)  # F^(2^i)

  def hop(y, _):  # y: [B, N, lanes]
    return jnp.take_along_axis(jump, y, axis=-1), y

  _, anchors = jax.lax.scan(hop, start, None, length=n_chunks)
  anchors = jnp.moveaxis(anchors, 0, -1).reshape(b, n, lanes * n_chunks)

  def step(y, _):  # y: [B, N, lanes * chunks]
    y = jnp.take_along_axis(table, y, axis=-1)
    return y, y

  _, chain = jax.lax.scan(step, anchors, None, length=c)  # [c, B, N, L*J]
  chain = chain.reshape(c, b, n, lanes, n_chunks)
  chain = jnp.transpose(chain, (1, 2, 3, 4, 0))  # [B, N, L, J, c]
  return chain.reshape(b, n, lanes, n_chunks * c)[..., :steps]


def _check_layout_inputs(indices: VerticalSlashIndices, seq_len, block_size):
  """Raises TypeError / ValueError on bad layout-builder arguments."""
  check_int("seq_len", seq_len, 1)
  check_int("block_size", block_size, 1)
  v, s = indices.vertical, indices.slash
  if v.ndim != 3 or s.ndim != 3 or v.shape[:2] != s.shape[:2]:
    raise ValueError(
        f"indices.vertical{v.shape} and indices.slash{s.shape} must be"
        " [B, N, NV] and [B, N, NS] with the same B, N"
    )
  if v.shape[-1] == 0 or s.shape[-1] == 0:
    raise ValueError(
        f"indices need NV >= 1 and NS >= 1, got vertical{v.shape},"
        f" slash{s.shape}"
    )
  for name in ("vertical_count", "slash_count"):
    c = getattr(indices, name)
    if c.shape != v.shape[:2]:
      raise ValueError(
          f"indices.{name} has shape {c.shape}; expected [B, N] ="
          f" {v.shape[:2]}"
      )
  _check_seq_len(indices, seq_len)


def _check_seq_len(indices: VerticalSlashIndices, seq_len: int) -> None:
  """Raises ValueError when seq_len is not the T the indices were built for:
  their recorded seq_len, or (concrete indices) a selected line beyond it."""
  if indices.seq_len is not None:
    if indices.seq_len != seq_len:
      raise ValueError(
          f"seq_len={seq_len} does not match the indices, which were"
          f" selected for T={indices.seq_len}")
    return
  try:
    lines = [(np.asarray(getattr(indices, f)), np.asarray(getattr(
        indices, f"{f}_count"))) for f in ("vertical", "slash")]
  except (jax.errors.ConcretizationTypeError,
          jax.errors.TracerArrayConversionError):
    return  # traced (under jit): only the recorded seq_len is checked
  for name, (values, count) in zip(("vertical", "slash"), lines):
    valid = np.arange(values.shape[-1]) < count[..., None]
    top = int(np.max(values, where=valid, initial=-1))
    if top >= seq_len:
      raise ValueError(
          f"seq_len={seq_len} does not match the indices: they select"
          f" {name} line {top}, which needs T > {top}")


# Default cap on the expanded builder's temporaries: up to 256K tokens at 32
# heads and MInference's default budgets every head is built in one step;
# longer prefills build groups of heads one after another (`lax.map`), so
# that at 1M tokens the builder needs its output plus a few GiB, not 2-4x its
# output.
LAYOUT_WORKSPACE_BYTES = 8 << 30


def layout_bytes(batch: int, heads: int, seq_len: int, n_vertical: int,
                 n_slash: int, block_size: int = BLOCK_SIZE) -> int:
  """Bytes of the expanded layout: int32 [B, N, Tb, NS], [B, N, Tb, NV]
  and two [B, N, Tb] counts (NS and NV capped at T)."""
  tb = -(-seq_len // block_size)
  ns, nv = min(n_slash, seq_len), min(n_vertical, seq_len)
  return batch * heads * tb * (ns + nv + 2) * 4


def layout_builder_bytes(batch: int, heads: int, seq_len: int,
                         n_vertical: int, n_slash: int,
                         block_size: int = BLOCK_SIZE) -> int:
  """Temporaries of `vertical_slash_layout` built in one step, in bytes.

  0.8 of the window walk [B, N, Tb, min(NS, Tb)], 0.8 of the padded starts
  [B, N, Tb, NS] and 6.7 arrays [B, N, Tb, NV] of per-vertical searches,
  masks and scatter slots, all int32 (Tb = ceil(T / block_size), NS and NV
  capped at T), fitted to XLA's buffer assignment (docs/models.md).
  """
  tb = -(-seq_len // block_size)
  ns, nv = min(n_slash, seq_len), min(n_vertical, seq_len)
  lanes = batch * heads * tb
  return lanes * 4 * (4 * min(ns, tb) + 4 * ns + 33 * nv) // 5


def layout_heads_per_step(batch: int, heads: int, seq_len: int,
                          n_vertical: int, n_slash: int,
                          block_size: int = BLOCK_SIZE,
                          max_workspace_bytes: int = LAYOUT_WORKSPACE_BYTES
                          ) -> int:
  """Heads the expanded builder takes per step: all of them when their
  temporaries fit `max_workspace_bytes`, else the largest divisor of
  `heads` whose group (one batch row) fits, at least 1."""
  if layout_builder_bytes(batch, heads, seq_len, n_vertical, n_slash,
                          block_size) <= max_workspace_bytes:
    return heads
  fits = [g for g in range(1, heads + 1) if heads % g == 0
          and layout_builder_bytes(1, g, seq_len, n_vertical, n_slash,
                                   block_size) <= max_workspace_bytes]
  return max(fits, default=1)


def layout_workspace_bytes(batch: int, heads: int, seq_len: int,
                           n_vertical: int, n_slash: int,
                           block_size: int = BLOCK_SIZE,
                           max_workspace_bytes: int = LAYOUT_WORKSPACE_BYTES
                           ) -> int:
  """Temporaries of `vertical_slash_layout` as it runs: all heads' builder
  in one step, or, in groups, one group's builder plus one group's layout
  (its arrays, copied into the output)."""
  group = layout_heads_per_step(batch, heads, seq_len, n_vertical, n_slash,
                                block_size, max_workspace_bytes)
  if group == heads:
    return layout_builder_bytes(batch, heads, seq_len, n_vertical, n_slash,
                                block_size)
  return (layout_builder_bytes(1, group, seq_len, n_vertical, n_slash,
                               block_size)
          + layout_bytes(1, group, seq_len, n_vertical, n_slash, block_size))


@functools.partial(jax.jit,
                   static_argnames=("seq_len", "block_size", "heads_per_step"))
def _vs_layout_jit(indices: VerticalSlashIndices, seq_len: int, block_size,
                   heads_per_step: int):
  lines = (indices.vertical.astype(jnp.int32),  # [B, N, NV]
           indices.slash.astype(jnp.int32),  # [B, N, NS]
           indices.vertical_count.astype(jnp.int32),  # [B, N]
           indices.slash_count.astype(jnp.int32))
  b, n = lines[0].shape[:2]
  build = functools.partial(_layout_arrays, seq_len=seq_len, bs=block_size)
  if heads_per_step >= n:
    arrays = build(*lines)
  else:
    # Groups of g heads, one after another: [B, N, ...] -> [B N / g, 1, g,
    # ...] is a reshape, and so is the way back, so the stacked outputs
    # are the layout's own buffers.
    g = heads_per_step
    groups = tuple(x.reshape((b * n // g, 1, g) + x.shape[2:]) for x in lines)
    stacked = jax.lax.map(lambda xs: build(*xs), groups)
    arrays = tuple(a.reshape((b, n) + a.shape[3:]) for a in stacked)
  block_count, block_offset, column_count, column_index = arrays
  return VerticalSlashLayout(
      block_count=block_count,
      block_offset=block_offset,
      column_count=column_count,
      column_index=column_index,
      block_size=block_size,
  )


def _layout_arrays(vertical, slash, v_count, s_count, *, seq_len: int,
                   bs: int):
  """The expanded layout's four arrays for lines [B, N, NV | NS] and
  counts [B, N] (int32); see `vertical_slash_layout`."""
  b, n, nv = vertical.shape
  ns = slash.shape[-1]
  tb = -(-seq_len // bs)
  lanes = (b, n, tb)
  end = jnp.minimum(jnp.arange(1, tb + 1, dtype=jnp.int32) * bs, seq_len)
  steps = min(ns, tb)  # most windows a row block can have

  # Windows: walk F from y_0 = end_m; start = end_m - y - bs = end_m - index.
  table = _successor_table(slash, s_count, seq_len, bs)
  start = jnp.broadcast_to(end + bs, lanes)  # table index of y_0 = end_m
  walk = _walk(table, start, steps)  # [B, N, Tb, steps]
  alive = walk > 0
  block_count = jnp.sum(alive, axis=-1, dtype=jnp.int32)
  starts = jnp.where(alive, end[:, None] - walk, 0)  # ascending, disjoint
  block_offset = jnp.pad(starts, ((0, 0), (0, 0), (0, 0), (0, ns - steps)))

  # Columns: a vertical no window covers and left of the last window (the
  # last range end) is a single column; it then lies left of the row block.
  # Verticals inside a window are dropped, later ones are causally useless.
  sorted_starts = jnp.where(alive, starts, seq_len + 2 * bs)
  v_lanes = jnp.broadcast_to(vertical[:, :, None, :], lanes + (nv,))
  search = jax.vmap(jax.vmap(jax.vmap(jnp.searchsorted)))
  pos = search(sorted_starts, v_lanes + 1) - 1  # last window start <= v
  win = jnp.take_along_axis(sorted_starts, jnp.maximum(pos, 0), axis=-1)
  covered = (pos >= 0) & (v_lanes < win + bs)  # [B, N, Tb, NV]
  last = jnp.take_along_axis(
      starts, jnp.maximum(block_count - 1, 0)[..., None], axis=-1
  )  # [B, N, Tb, 1]
  v_valid = jnp.arange(nv)[None, None, :] < v_count[..., None]  # [B, N, NV]
  is_column = (
      v_valid[:, :, None, :]
      & (block_count > 0)[..., None]
      & ~covered
      & (v_lanes < last)
  )  # [B, N, Tb, NV]
  column_count = jnp.sum(is_column, axis=-1, dtype=jnp.int32)
  col_slot = jnp.where(is_column, jnp.cumsum(is_column, axis=-1) - 1, nv)
  bi, ni, mi = (jax.lax.broadcasted_iota(jnp.int32, lanes, a) for a in range(3))
  column_index = jnp.zeros(lanes + (nv,), jnp.int32).at[
      bi[..., None], ni[..., None], mi[..., None], col_slot
  ].set(v_lanes, mode="drop")
  return block_count, block_offset, column_count, column_index


def _runs(table, bs: int):
  """Run tables of a successor table [B, N, Y]: windows merged into runs.

  From j the walk steps to j - bs exactly when the next window is adjacent
  (MInference's range extension), so windows j, j - bs, ... form one run of
  contiguous key columns. Along each residue class j = r + p * bs,
  run_length[j] = p - (the last p' <= p whose step is not adjacent) + 1, a
  cumulative max (no loop); run_next is the successor of the run's last
  window (0: none).

  Returns:
    run_length, run_next: [B, N, Y] int32.
  """
  b, n, y = table.shape
  j = jnp.arange(y, dtype=jnp.int32)
  adjacent = (table == j - bs) & (j - bs > 0)  # [B, N, Y]
  yp = -(-y // bs) * bs
  pos = j // bs  # p of j in its residue class
  breaks = jnp.pad(jnp.where(adjacent, -1, pos), ((0, 0), (0, 0),
                                                  (0, yp - y)))
  last_break = jax.lax.cummax(breaks.reshape(b, n, yp // bs, bs), axis=2)
  run_length = pos - last_break.reshape(b, n, yp)[..., :y] + 1
  last = j - (run_length - 1) * bs  # table index of the run's last window
  return run_length, jnp.take_along_axis(table, last, axis=-1)


@functools.partial(jax.jit, static_argnames=("seq_len", "block_size"))
def _vs_chain_jit(indices: VerticalSlashIndices, seq_len: int, block_size):
  bs = block_size
  vertical = indices.vertical.astype(jnp.int32)  # [B, N, NV]
  v_count = indices.vertical_count.astype(jnp.int32)  # [B, N]
  nv = vertical.shape[-1]
  size = seq_len + bs + 1
  table = _successor_table(
      indices.slash.astype(jnp.int32),
      indices.slash_count.astype(jnp.int32), seq_len, bs,
  )  # [B, N, T + bs + 1]
  valid = jnp.arange(nv) < v_count[..., None]  # [B, N, NV]
  # prefix[c] = #verticals < c: a histogram at v + 1, accumulated.
  prefix = jnp.cumsum(
      _histogram(jnp.clip(vertical, 0, seq_len) + 1, valid, size), axis=-1,
      dtype=jnp.int32,
  )  # [B, N, T + bs + 1]
  run_length, run_next = _runs(table, bs)
  return VerticalSlashChainLayout(
      window_next=table,
      run_length=run_length,
      run_next=run_next,
      vertical=jnp.where(valid, vertical, seq_len - 1),
      vertical_prefix=prefix,
      block_size=bs,
  )


@jaxtyped(typechecker=beartype)
def vertical_slash_chain_layout(
    indices: VerticalSlashIndices,
    seq_len: int,
    block_size: int = BLOCK_SIZE,
    *,
    builder: str = "xla",
    interpret: bool = False,
) -> VerticalSlashChainLayout:
  """The O(T)-per-head form of `vertical_slash_layout` that the kernel walks.

  Same windows and the same key set as `vertical_slash_layout` (for indices
  with slash offset 0, as `vertical_slash_indices` makes them), stored as
  the per-head successor table of the merge walk plus the vertical prefix
  counts: [B, N, T + bs + 1] int32 twice instead of [B, N, Tb, NS + NV]
  (at T = 1M, N = 32: 0.27 GB instead of 15 GB), built in O(B N T).

  Args:
    indices: VerticalSlashIndices of a T-token prefill (sorted lists, as
      `vertical_slash_indices` makes them).
    seq_len: static T.
    block_size: static row block / window size (64 for the kernels).
    builder: "xla" (`_vs_chain_jit`: histograms, cumulative sums and a
      cumulative max over [B, N, T] arrays) or "pallas" (the GPU kernels
      `pallas_kernels.vs_chain_layout`, which compute each entry from the
      sorted lists by binary search; the same arrays; block_size a power of
      two; faster on a GPU, docs/kernels.md).
    interpret: run the "pallas" builder in interpret mode (CPU tests).

  Returns:
    VerticalSlashChainLayout (see its docstring for how it is read).

  Raises:
    TypeError / ValueError: as `vertical_slash_layout`; an unknown
      `builder`; "pallas" with a block_size that is not a power of two.
  """
  _check_layout_inputs(indices, seq_len, block_size)
  if builder == "xla":
    return _vs_chain_jit(indices, seq_len=seq_len, block_size=block_size)
  if builder != "pallas":
    raise ValueError(f"builder must be 'xla' or 'pallas', got {builder!r}")
  return vs_chain_layout(
      indices.slash, indices.slash_count, indices.vertical,
      indices.vertical_count, seq_len, block_size,
      interpret=bool(interpret))


@jaxtyped(typechecker=beartype)
def vertical_slash_layout(
    indices: VerticalSlashIndices,
    seq_len: int,
    block_size: int = BLOCK_SIZE,
    *,
    max_workspace_bytes: int = LAYOUT_WORKSPACE_BYTES,
) -> VerticalSlashLayout:
  """Converts vertical/slash lines into the kernels' per-row-block layout.

  MInference's `convert_vertical_slash_indexes` merge (one thread per row
  block walking both lists there), same result here, vectorised over batch,
  heads and row blocks. For row block m with rows [m * bs, end_m): slashes
  with offset >= end_m are skipped; each other slash maps to the window
  [e - bs, e), e = max(end_m - o, bs); windows are merged into ranges that
  grow one bs-wide window at a time; verticals not inside a window and left
  of the last range end become single columns. Computed as a walk on a
  per-head successor table (see the comment above `_successor_table`): about
  2 sqrt(min(NS, Tb)) sequential gather steps, O(B N Tb min(NS, Tb)) work.

  Where we differ: the last, partial row block uses end_m = T (MInference
  uses m * bs + bs and masks rows >= T). Full row blocks are identical; the
  partial one gets the same cover and every window start stays < T.
  A row block that no slash reaches (impossible when offset 0 is present, as
  `vertical_slash_indices` guarantees) gets no windows and no columns.

  Properties (given offset 0 in every active head's slashes): the union of
  windows and columns covers the exact causal Vertical-Slash mask, no key
  appears twice, every column is < m * bs, at most NS windows (starts in
  [0, T), ascending; in fact at most min(NS, m + 1)) and NV columns
  (ascending) per row block. Padding past the counts is 0.

  Memory: the builder's temporaries are 2-4x its output
  (`layout_builder_bytes`); when they exceed `max_workspace_bytes`, groups
  of heads are built one after another (`layout_heads_per_step`), each
  group's arrays then copied into the output, so the temporaries are one
  group's builder plus one group's layout. Same result either way.

  Args:
    indices: VerticalSlashIndices of a T-token prefill.
    seq_len: static T.
    block_size: static row block / window size (64 for the kernels).
    max_workspace_bytes: cap on the builder's temporaries (static).

  Returns:
    VerticalSlashLayout with arrays [B, N, ceil(T / block_size), NS | NV].

  Raises:
    TypeError: seq_len / block_size / max_workspace_bytes not ints.
    ValueError: inconsistent or empty index shapes, non-positive seq_len,
      block_size or max_workspace_bytes, a seq_len other than the indices'
      (their `seq_len`, or a selected line >= seq_len).
  """
  _check_layout_inputs(indices, seq_len, block_size)
  check_int("max_workspace_bytes", max_workspace_bytes, 1)
  b, n, nv = indices.vertical.shape
  heads = layout_heads_per_step(b, n, seq_len, nv, indices.slash.shape[-1],
                                block_size, max_workspace_bytes)
  return _vs_layout_jit(indices, seq_len=seq_len, block_size=block_size,
                        heads_per_step=heads)
