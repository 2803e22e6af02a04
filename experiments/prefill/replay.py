"""Vertical-Slash lines recorded from a real model, replayed in a larger one.

`minference-jax model-indices` records, per (layer, head) of a real model
(SmolLM2-135M: the first 15 of its 30 layers, 9 query / 3 KV heads) run on
T tokens of real text, the lines MInference's online estimate selects. A
benchmark of another geometry (LLaMA-3-8B: 32 layers, 32 / 8 heads) needs
such lines for each of its (layer, head). The mapping:

* Layers keep their relative depth: target layer 0 takes source layer 0
  (both read raw embeddings); target layer l >= 1 takes source layer
  1 + floor((l - 1) (Ls - 1) / (Lt - 1)), so the target's layers 1..Lt-1
  spread evenly over the source's 1..Ls-1.
* Heads keep their KV grouping: target head h (KV group g = h // Gt,
  member j = h % Gt) takes source head (g mod Ks) * Gs + (j + l) mod Gs.
  Heads that share a KV head in the target share one in the source, and
  consecutive target layers that map to one source layer rotate through
  the group's members.
* Budgets: a head whose pattern asks for fewer lines than recorded keeps
  MInference's forced lines (key columns < 30, diagonals < 100) and an
  evenly strided subset of the other recorded lines (the recording keeps
  lines in position order, not score order, so the top lines of a smaller
  budget are unknown; an even stride keeps their spatial distribution). A
  head asking for more than was recorded keeps all recorded lines (the
  count is capped and reported).

Memory: the lines of one layer are [N, NV + NS] int32 (0.9 MB at 32 heads
and 1000 + 6096 lines), 29 MB for 32 layers, kept on the device for the
run. Each layer's expanded kernel layout ([N, T/64, NS + NV] int32, about
15 GB at 1M tokens) is built inside that layer's step from its lines, so
only one layer's layout ever exists, as in the online path.
"""

import dataclasses
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from experiments.index_sets import HeadIndices, vs_indices_path
from experiments.prefill import ops
from minference_jax import VerticalSlash
from minference_jax.index import VerticalSlashIndices
from minference_jax.patterns import (
    VS_FORCED_SLASH_OFFSETS,
    VS_MIN_SLASH,
    VS_MIN_VERTICAL,
)


def source_layer(layer: int, target_layers: int, source_layers: int) -> int:
  """The recorded layer that target `layer` replays (see module doc)."""
  if not 0 <= layer < target_layers:
    raise ValueError(f"layer {layer} outside [0, {target_layers})")
  if layer == 0 or source_layers == 1:
    return 0
  if target_layers == 1:
    return 0
  return 1 + ((layer - 1) * (source_layers - 1)) // (target_layers - 1)


def source_head(layer: int, head: int, target_heads: int, target_kv: int,
                source_heads: int, source_kv: int) -> int:
  """The recorded head that target (layer, head) replays (see module doc)."""
  if not 0 <= head < target_heads:
    raise ValueError(f"head {head} outside [0, {target_heads})")
  gt, gs = target_heads // target_kv, source_heads // source_kv
  group, member = head // gt, head % gt
  return (group % source_kv) * gs + (member + layer) % gs


def thin_lines(lines: np.ndarray, keep: int, forced: int) -> np.ndarray:
  """`keep` of the ascending `lines`: all lines < `forced` (up to keep),
  then an even stride over the others. Ascending output."""
  lines = np.asarray(lines)
  if keep >= len(lines):
    return lines
  low, high = lines[lines < forced], lines[lines >= forced]
  if keep <= len(low):
    return low[:keep]
  rest = keep - len(low)
  pick = ((np.arange(rest) + 0.5) * len(high) / rest).astype(np.int64)
  return np.concatenate([low, high[pick]])


@dataclasses.dataclass(frozen=True)
class ReplayedLines:
  """Per-layer lines for a run: numpy [L, N, NV] / [L, N, NS] (+ counts).

  vertical ascending and padded with T - 1, slash descending and padded
  with 0 (the `VerticalSlashIndices` convention); `capped` counts heads
  whose budget exceeded the recording.
  """

  vertical: np.ndarray
  vertical_count: np.ndarray
  slash: np.ndarray
  slash_count: np.ndarray
  seq_len: int
  capped: int
  source: dict

  def layer(self, i: int, batch: int) -> VerticalSlashIndices:
    """Layer i's lines as device arrays [B, N, ...]."""
    def put(a):
      return jnp.asarray(np.broadcast_to(a[i], (batch, *a[i].shape)),
                         jnp.int32)
    return VerticalSlashIndices(put(self.vertical), put(self.vertical_count),
                                put(self.slash), put(self.slash_count),
                                seq_len=int(self.seq_len))

  @property
  def density_lines(self) -> float:
    """Mean slash count per head (a quick density proxy for the report)."""
    return float(np.mean(self.slash_count))

  def density(self) -> float:
    """Mean over the running layers and heads of `line_density`."""
    t = int(self.seq_len)
    return float(np.mean([
        line_density(v[:cv], s[:cs], t)
        for v, cv, s, cs in zip(
            self.vertical.reshape(-1, self.vertical.shape[-1]),
            self.vertical_count.ravel(),
            self.slash.reshape(-1, self.slash.shape[-1]),
            self.slash_count.ravel())]))


def line_density(vertical: np.ndarray, slash: np.ndarray, t: int) -> float:
  """The share of the causal T x T triangle's cells on one head's lines.

  Vertical v covers the T - v cells (r, v), r >= v; slash offset o the
  T - o cells (r, r - o). A cell on both is (v + o, v), one per pair with
  v + o < T, so the union is sum(T - v) + sum(T - o) - #{v + o < T}
  (exact, element level: the kernels compute whole 64-row tiles, more).

  Args:
    vertical: [nv] distinct key columns in [0, T).
    slash: [ns] distinct diagonal offsets in [0, T).
    t: T.
  """
  v = np.sort(np.asarray(vertical, np.int64))
  o = np.asarray(slash, np.int64)
  both = int(np.searchsorted(v, t - o, side="left").sum())
  covered = int((t - v).sum() + (t - o).sum()) - both
  return covered / (t * (t + 1) / 2)


def find_recording(index_dirs, seq_len: int) -> Path | None:
  """The first `model_head_indices_T<T>.npz` in index_dirs, or None."""
  for d in index_dirs:
    path = vs_indices_path(d, seq_len)
    if path.is_file():
      return path
  return None


def replay_lines(recorded: HeadIndices, layers: list[int], num_layers: int,
                 num_heads: int, num_kv_heads: int,
                 budgets: list[tuple[VerticalSlash, ...]]) -> ReplayedLines:
  """Maps recorded lines onto target layers and heads with their budgets.

  Args:
    recorded: one recording (T = the run's length).
    layers: the target model's layer indices that run (full-model ids).
    num_layers, num_heads, num_kv_heads: the target geometry.
    budgets: per running layer, per head, the VerticalSlash pattern.

  Returns:
    ReplayedLines for the running layers.
  """
  t = recorded.seq_len
  ls, ns = recorded.num_layers, recorded.num_heads
  ks = int(recorded.meta["num_kv_heads"])
  # Widths: the largest budget after MInference's clamps (>= 30 columns,
  # >= 50 diagonals), as each head's below.
  nv_max = max(min(t, max(p.n_vertical, VS_MIN_VERTICAL))
               for layer in budgets for p in layer)
  ns_max = max(min(t, max(p.n_slash, VS_MIN_SLASH))
               for layer in budgets for p in layer)
  rec_v = int(recorded.vertical.shape[-1])
  rec_s = int(recorded.slash.shape[-1])
  nv_max, ns_max = min(nv_max, rec_v), min(ns_max, rec_s)
  shape = (len(layers), num_heads)
  vertical = np.full(shape + (nv_max,), t - 1, np.int32)
  slash = np.zeros(shape + (ns_max,), np.int32)
  v_count = np.zeros(shape, np.int32)
  s_count = np.zeros(shape, np.int32)
  capped = 0
  for row, (layer, pats) in enumerate(zip(layers, budgets)):
    src_l = source_layer(layer, num_layers, ls)
    for h, p in enumerate(pats):
      src_h = source_head(layer, h, num_heads, num_kv_heads, ns, ks)
      cv = int(recorded.vertical_count[src_l, src_h])
      cs = int(recorded.slash_count[src_l, src_h])
      want_v = min(t, max(p.n_vertical, VS_MIN_VERTICAL))
      want_s = min(t, max(p.n_slash, VS_MIN_SLASH))
      capped += int(want_v > cv or want_s > cs)
      vert = thin_lines(recorded.vertical[src_l, src_h, :cv], want_v,
                        VS_MIN_VERTICAL)
      offs = thin_lines(np.sort(recorded.slash[src_l, src_h, :cs]), want_s,
                        VS_FORCED_SLASH_OFFSETS)[::-1]
      vertical[row, h, :len(vert)] = vert
      slash[row, h, :len(offs)] = offs
      v_count[row, h], s_count[row, h] = len(vert), len(offs)
  source = dict(model=recorded.meta.get("source_model"), seq_len=t,
                layers=ls, heads=ns, kv_heads=ks,
                budget=[int(recorded.meta.get("n_vertical", rec_v)),
                        int(recorded.meta.get("n_slash", rec_s))])
  return ReplayedLines(vertical, v_count, slash, s_count, t, capped, source)


@dataclasses.dataclass(frozen=True, eq=False)
class ReplayVerticalSlash:
  """Vertical-Slash attention whose lines come from a recording.

  Called per layer with that layer's lines (a traced argument, so every
  layer of one length shares one executable). With `estimate` set, the
  online estimate also runs on the layer's q/k and its lines feed a
  data dependence of the counts (adding zero), so XLA cannot drop it and
  the layer pays what the online path pays; the kernels see only the
  recorded lines.

  Attributes:
    implementation: "triton", "mosaic_gpu" or "xla" (resolved).
    estimate: (n_vertical, n_slash) of the kept online estimate, or None.
    dense_below: prefills shorter than this run dense.
    interpret: Pallas interpret mode.
  """

  implementation: str
  estimate: tuple[int, int] | None = None
  dense_below: int = 0
  interpret: bool = False

  def sparse_at(self, seq_len: int) -> bool:
    return seq_len >= self.dense_below

  def index(self, q, k, lines: VerticalSlashIndices):
    """The expanded layout of the recorded lines [B, N, T/64, ...]."""
    t = q.shape[1]
    if self.estimate is not None:
      est = ops.vs_estimate(q, k, *self.estimate,
                            implementation=self.implementation,
                            interpret=self.interpret)
      zero = jnp.minimum(jnp.min(est.vertical[..., :1]),
                         jnp.min(est.slash[..., :1])).astype(jnp.int32)
      zero = jnp.minimum(zero, 0)  # positions are >= 0: adds nothing
      lines = dataclasses.replace(
          lines, vertical_count=lines.vertical_count + zero,
          slash_count=lines.slash_count + zero)
    return ops.vs_layout(lines, t)

  def attend(self, q, k, v, lines: VerticalSlashIndices):
    """[B, T, N, D] attention of one layer over its recorded lines."""
    if not self.sparse_at(q.shape[1]):
      return ops.dense_kernel(q, k, v, implementation=self.implementation,
                              interpret=self.interpret)
    layout = self.index(q, k, lines)
    return ops.vs_kernel(q, k, v, layout, implementation=self.implementation,
                         interpret=self.interpret)


@dataclasses.dataclass(frozen=True)
class ReplayedLayerAttention:
  """One layer's replayed lines as an AttentionFn, for the library's
  layerwise prefill (`models.LayerAttentions`, one entry per layer).

  A JAX pytree whose leaves are the lines: `models.LayerwisePrefill` passes
  them as traced arguments of the layer step, so every layer shares one
  executable (`layer_key` says the layer index changes nothing else).

  On a mesh (`models.make_sharded_prefill`, DeepSpeed-Ulysses inside
  `jax.shard_map`) it is a `minference_jax.parallel.HeadBlockSliceable`:
  device r keeps the lines of query heads [r N/P, (r + 1) N/P) by a
  dynamic slice at its traced start, so every device runs one program (no
  branch per device). The lines are the same for every batch row (a
  recording has no batch), so a call with fewer rows than the lines hold
  (a batch split over a data axis: each device sees b of the B rows)
  takes the first b rows.

  Attributes:
    lines: the layer's lines, [B, N, ...] device arrays.
    replay: the attention that runs them (static).
  """

  lines: VerticalSlashIndices
  replay: ReplayVerticalSlash

  def layer_key(self, layer_idx: int) -> tuple:
    del layer_idx
    return ()

  def check_model(self, *, num_layers: int, num_heads: int) -> None:
    """The lines must hold one row per query head (ValueError)."""
    del num_layers
    heads = self.lines.vertical.shape[1]
    if heads != num_heads:
      raise ValueError(f"replayed lines hold {heads} heads, the model has"
                       f" {num_heads} query heads")

  def for_head_block(self, start: jax.Array | int,
                     size: int) -> "ReplayedLayerAttention":
    """The lines of query heads [start, start + size) ([B, size, ...]);
    `start` may be traced, `size` is static."""
    heads = self.lines.vertical.shape[1]
    if not 0 < size <= heads:
      raise ValueError(f"a block of {size} heads of replayed lines that "
                       f"hold {heads}")
    block = jax.tree.map(
        lambda a: jax.lax.dynamic_slice_in_dim(a, start, size, axis=1),
        self.lines)
    return dataclasses.replace(self, lines=block)

  def __call__(self, q, k, v, *, layer_idx: int, q_offset: int = 0):
    """[B, T, N, D] attention over the recorded lines (full prefills)."""
    del layer_idx
    if q_offset or q.shape[1] != k.shape[1]:
      raise ValueError("replayed lines serve full prefills only (q_offset=0,"
                       f" T == S), got q_offset={q_offset}, T={q.shape[1]},"
                       f" S={k.shape[1]}")
    rows, heads = self.lines.vertical.shape[:2]
    b, n = q.shape[0], q.shape[2]
    if b > rows or n != heads:
      raise ValueError(f"replayed lines for {rows} rows x {heads} heads "
                       f"cannot serve q of {b} rows x {n} heads")
    lines = jax.tree.map(lambda a: a[:b], self.lines)  # identical rows
    return self.replay.attend(q, k, v, lines)


jax.tree_util.register_dataclass(ReplayedLayerAttention,
                                 data_fields=["lines"],
                                 meta_fields=["replay"])


def check_lines(lines: ReplayedLines) -> None:
  """Sanity of replayed lines (raises ValueError): every head keeps offset
  0 and column 0, counts within the arrays, lines inside [0, T)."""
  t = lines.seq_len
  for name, arr, cnt in (("vertical", lines.vertical, lines.vertical_count),
                         ("slash", lines.slash, lines.slash_count)):
    if (cnt < 1).any() or (cnt > arr.shape[-1]).any():
      raise ValueError(f"replayed {name} counts outside [1, {arr.shape[-1]}]")
    if (arr < 0).any() or (arr >= t).any():
      raise ValueError(f"replayed {name} lines outside [0, {t})")
  last = np.take_along_axis(lines.slash, lines.slash_count[..., None] - 1,
                            axis=-1)
  if (last != 0).any():
    raise ValueError("a replayed head lost diagonal offset 0")
  if (lines.vertical[..., 0] != 0).any():
    raise ValueError("a replayed head lost key column 0")

