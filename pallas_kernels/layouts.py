"""Sparse index layouts: the contract between index building and the kernels.

Shape alphabet (see `minference_jax/types.py`): B batch, T query length, S key
length, N query heads, K key/value heads, G = N // K, D head dim, Tb = ceil(T /
block_size) query blocks, NS/NV the padded (layer-maximum) slash/vertical
budgets, KB the padded block-sparse top-k.

Every layout covers ALL query heads of a layer. A head that does not use the
layout's pattern has every count equal to zero; kernels and the XLA path
produce zeros for it, and the attention dispatch merges per-kind outputs. Heads
with different budgets share one structure: arrays are padded to the layer's
largest budget and the per-row counts say how many entries are valid. Entries
past a count are padding and must never be read as data (their value is
unspecified but in range [0, S)).

All arrays are int32. Layouts are frozen pytree dataclasses: arrays are
leaves, the block size is static, so they pass through `jax.jit` and `vmap`.
"""

import dataclasses

import jax
import numpy as np
from jaxtyping import Array, Int

BLOCK_SIZE = 64  # MInference's BLOCK_M = BLOCK_N = 64 (reference kernel).


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class VerticalSlashLayout:
  """Per 64-row query block: key windows (from slash lines) and key columns.

  For query block m (rows [m * bs, min((m + 1) * bs, T))):
  - `block_offset[b, n, m, :block_count[b, n, m]]`: start column of each
    bs-wide key window [o, o + bs). Starts are NOT aligned to bs. Windows are
    disjoint and ascending. The kernel applies the causal mask (col <= row) and
    the sequence-end mask (col < S) inside every window.
  - `column_index[b, n, m, :column_count[b, n, m]]`: single key columns not
    covered by any window, ascending, every one < m * bs (left of the row
    block), so they need no causal mask.
  The union over windows and columns is a superset of the exact causal
  Vertical-Slash mask of that row block, and no key appears twice.

  Fields:
    block_count:  Int[B, N, Tb], values in [0, NS].
    block_offset: Int[B, N, Tb, NS], values in [0, S) where valid.
    column_count: Int[B, N, Tb], values in [0, NV].
    column_index: Int[B, N, Tb, NV], values in [0, m * bs) where valid.
    block_size:   static int (64).
  """

  block_count: Int[Array, "B N Tb"]
  block_offset: Int[Array, "B N Tb NS"]
  column_count: Int[Array, "B N Tb"]
  column_index: Int[Array, "B N Tb NV"]
  block_size: int = dataclasses.field(
      default=BLOCK_SIZE, metadata=dict(static=True)
  )


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class VerticalSlashChainLayout:
  """Vertical-Slash layout in O(S) per head: what the Pallas kernel walks.

  `VerticalSlashLayout` stores every row block's windows, [B, N, Tb, NS]
  (12.8 GB at 1M tokens, 32 heads and NS = 6096). MInference's window merge
  depends only on the head's slash list (see
  `minference_jax.index_vs_layout`), so
  one successor table per head encodes the windows of every row block; the
  kernel follows it from the row block's end. Verticals are kept once per
  head, with their prefix counts.

  For query block m (rows [r0, e), r0 = m * bs, e = min(r0 + bs, T)):
  - windows: j = window_next[b, n, e + bs]; while j > 0: the key window
    [e - j, e - j + bs), then j = window_next[b, n, j]. Windows come out
    disjoint with ascending starts; they get the causal and sequence-end
    masks. Walked by runs of contiguous windows (what the kernel does):
    from j, the run_length[j] windows [e - j + i * bs, ... + bs), then
    j = run_next[j].
  - columns: the verticals left of the row block,
    vertical[b, n, :vertical_prefix[b, n, r0]] (ascending), except those
    inside a window.
  The key set equals `VerticalSlashLayout`'s for indices that contain slash
  offset 0 (which `vertical_slash_indices` guarantees): there, windows cover
  the row block's own columns [r0, e), so every vertical right of r0 that
  matters is inside a window.

  Fields:
    window_next:     Int[B, N, S + bs + 1], values in [0, S + bs]; entry 0
                     ("stop") is 0 and window_next[j] < j.
    run_length:      Int[B, N, S + bs + 1], >= 1: windows in the run of
                     contiguous windows that starts at window j.
    run_next:        Int[B, N, S + bs + 1]: window_next after that run.
    vertical:        Int[B, N, NV], ascending where valid, in [0, S).
    vertical_prefix: Int[B, N, S + bs + 1]: number of valid verticals < c
                     (constant for c >= S); the count of row block m's
                     columns is vertical_prefix[m * bs].
    block_size:      static int (64).
  """

  window_next: Int[Array, "B N Y"]
  run_length: Int[Array, "B N Y"]
  run_next: Int[Array, "B N Y"]
  vertical: Int[Array, "B N NV"]
  vertical_prefix: Int[Array, "B N Y"]
  block_size: int = dataclasses.field(
      default=BLOCK_SIZE, metadata=dict(static=True)
  )


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class BlockSparseLayout:
  """Per query block: the selected key blocks (block-causal).

  For query block m, `block_index[b, n, m, :block_count[b, n, m]]` are key
  block ids in [0, m], sorted ascending, no duplicates. Key block j covers
  columns [j * bs, min((j + 1) * bs, S)). The kernel applies the causal mask
  on the diagonal block (j == m) and the sequence-end mask.

  Fields:
    block_count: Int[B, N, Tb], values in [0, min(m + 1, KB)].
    block_index: Int[B, N, Tb, KB], values in [0, m] where valid.
    block_size:  static int (64).
  """

  block_count: Int[Array, "B N Tb"]
  block_index: Int[Array, "B N Tb KB"]
  block_size: int = dataclasses.field(
      default=BLOCK_SIZE, metadata=dict(static=True)
  )


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class AShapeLayout:
  """A-shape needs no index arrays: per head, sink and local window sizes.

  Query row t attends to keys j <= t with j < n_init[n] (sink) or
  t - j < n_local[n] (local window, distance 0 .. n_local - 1). A key in both
  sets is counted once. A head with n_init == n_local == 0 is inactive
  (zero output).

  Fields:
    n_init:  Int[N], values >= 0.
    n_local: Int[N], values >= 0.
  """

  n_init: Int[Array, "N"]
  n_local: Int[Array, "N"]


def compact_layout(layout):
  """Trims padded index arrays to the largest count actually used (host side).

  Gathering implementations (XLA) do work proportional to the padded width
  (NS, NV, KB), so a benchmark or demo may call this between index building
  and attention. It reads counts on the host: not for use under jit.

  Args:
    layout: any sparse layout (an AShapeLayout is returned unchanged).

  Returns:
    An equivalent layout whose padded widths equal the maximum counts (>= 1).

  Raises:
    TypeError: if `layout` is not a VerticalSlashLayout, BlockSparseLayout or
      AShapeLayout.
  """
  if isinstance(layout, VerticalSlashLayout):
    nb = max(1, int(np.max(np.asarray(layout.block_count), initial=0)))
    nc = max(1, int(np.max(np.asarray(layout.column_count), initial=0)))
    return VerticalSlashLayout(
        layout.block_count,
        layout.block_offset[..., :nb],
        layout.column_count,
        layout.column_index[..., :nc],
        block_size=layout.block_size,
    )
  if isinstance(layout, BlockSparseLayout):
    nb = max(1, int(np.max(np.asarray(layout.block_count), initial=0)))
    return BlockSparseLayout(
        layout.block_count, layout.block_index[..., :nb],
        block_size=layout.block_size,
    )
  if isinstance(layout, AShapeLayout):
    return layout
  raise TypeError(f"not a layout: {type(layout).__name__}")
