"""Index sets recorded from a real model's heads, and their file formats.

`minference-jax model-indices` (experiments/model_indices.py) records them;
`minference-jax bench-kernels` reads them (`vertical_slash:model`,
`block_sparse:model`) to time the kernels on a real model's index sets
with synthetic q/k/v values.

Vertical-Slash file (npz, `INDICES_FORMAT`), every (layer, head), one T:
  meta:           0-d str, JSON: format, seq_len, num_layers, num_heads,
                  num_kv_heads, n_vertical, n_slash, last_q, backend, dtype,
                  token_source, source_model, layer_seconds.
  vertical:       int32 [L, N, NV], ascending (entries past the count pad).
  vertical_count: int32 [L, N].
  slash:          int32 [L, N, NS], descending (entries past the count pad).
  slash_count:    int32 [L, N].

Block-Sparse file (npz, `BS_INDICES_FORMAT`), the heads `select_heads`
picks for a benchmark of N' heads (a [Tb, KB] list per head is too large to
keep for every head at 1M tokens), one T:
  meta:        0-d str, JSON: format, seq_len, top_k, block_size, heads
               ([[layer, head], ...] in benchmark order), source_model,
               token_source.
  block_count: int32 [N', Tb].
  block_index: int32 [N', Tb, KB], ascending per row (past the count pad).
"""

import dataclasses
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import jax.numpy as jnp
import numpy as np

from minference_jax.index import VerticalSlashIndices
from pallas_kernels.layouts import BlockSparseLayout

INDICES_FORMAT = "minference-jax/model-head-indices/v1"
BS_INDICES_FORMAT = "minference-jax/model-bs-indices/v1"


def vs_indices_path(out_dir: str | Path, seq_len: int) -> Path:
  """Where `model-indices` writes the Vertical-Slash sets for T."""
  return Path(out_dir) / f"model_head_indices_T{seq_len}.npz"


def bs_indices_path(out_dir: str | Path, seq_len: int) -> Path:
  """Where `model-indices` writes the Block-Sparse sets for T."""
  return Path(out_dir) / f"model_bs_indices_T{seq_len}.npz"


@dataclasses.dataclass(frozen=True, eq=False)
class HeadIndices:
  """Per (layer, head) index sets of one run (numpy; B = 1 squeezed).

  Attributes:
    vertical: int32 [L, N, NV] ascending; vertical_count int32 [L, N].
    slash: int32 [L, N, NS] descending; slash_count int32 [L, N].
    meta: seq_len, budgets, geometry and provenance (module docstring).
  """

  vertical: np.ndarray
  vertical_count: np.ndarray
  slash: np.ndarray
  slash_count: np.ndarray
  meta: Mapping[str, Any]

  @property
  def seq_len(self) -> int:
    return int(self.meta["seq_len"])

  @property
  def num_layers(self) -> int:
    return self.vertical.shape[0]

  @property
  def num_heads(self) -> int:
    return self.vertical.shape[1]

  def save(self, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    meta = {**self.meta, "format": INDICES_FORMAT}
    with open(path, "wb") as f:
      np.savez_compressed(
          f, meta=np.asarray(json.dumps(meta, sort_keys=True)),
          vertical=self.vertical, vertical_count=self.vertical_count,
          slash=self.slash, slash_count=self.slash_count)
    return path

  @classmethod
  def load(cls, path: str | Path) -> "HeadIndices":
    """Reads a result file.

    Raises:
      ValueError: not a result file of this format version.
    """
    with np.load(path, allow_pickle=False) as z:
      meta = json.loads(str(z["meta"]))
      if meta.get("format") != INDICES_FORMAT:
        raise ValueError(f"{path} is not a {INDICES_FORMAT} file")
      return cls(z["vertical"], z["vertical_count"], z["slash"],
                 z["slash_count"], meta)

@dataclasses.dataclass(frozen=True, eq=False)
class BlockSparseHeads:
  """Block-Sparse index sets of picked (layer, head)s of one run (numpy).

  Attributes:
    block_count: int32 [N', Tb] selected key blocks per query block.
    block_index: int32 [N', Tb, KB] their block ids, ascending.
    meta: seq_len, top_k, block_size, heads and provenance (module
      docstring).
  """

  block_count: np.ndarray
  block_index: np.ndarray
  meta: Mapping[str, Any]

  @property
  def seq_len(self) -> int:
    return int(self.meta["seq_len"])

  @property
  def num_heads(self) -> int:
    return self.block_count.shape[0]

  def save(self, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    meta = {**self.meta, "format": BS_INDICES_FORMAT}
    with open(path, "wb") as f:
      np.savez_compressed(
          f, meta=np.asarray(json.dumps(meta, sort_keys=True)),
          block_count=self.block_count, block_index=self.block_index)
    return path

  @classmethod
  def load(cls, path: str | Path) -> "BlockSparseHeads":
    """Reads a Block-Sparse index file.

    Raises:
      ValueError: not a file of this format version.
    """
    with np.load(path, allow_pickle=False) as z:
      meta = json.loads(str(z["meta"]))
      if meta.get("format") != BS_INDICES_FORMAT:
        raise ValueError(f"{path} is not a {BS_INDICES_FORMAT} file")
      return cls(z["block_count"], z["block_index"], meta)

  def layout(self, num_heads: int, batch: int = 1) -> BlockSparseLayout:
    """The sets as a benchmark layout [batch, num_heads, Tb, KB].

    Raises:
      ValueError: the file holds another number of heads, or batch < 1.
    """
    if num_heads != self.num_heads:
      raise ValueError(f"the file holds {self.num_heads} heads, not"
                       f" {num_heads} (record with bs_heads={num_heads})")
    if batch < 1:
      raise ValueError(f"batch must be >= 1, got {batch}")

    def tile(a):
      return jnp.asarray(np.broadcast_to(a, (batch, *a.shape)), jnp.int32)

    return BlockSparseLayout(block_count=tile(self.block_count),
                             block_index=tile(self.block_index),
                             block_size=int(self.meta["block_size"]))


# ------------------------------------------------------- benchmark input
def select_heads(num_layers: int, num_heads: int, num_kv_heads: int,
                 count: int) -> list[tuple[int, int]]:
  """`count` (layer, head) pairs, round-robin over layers >= 1.

  Pick i takes layer 1 + i mod (L - 1) and the (i // (L - 1))-th head of
  that layer's order h = kv * G + j for j in 0..G-1, kv in 0..K-1 (0, G, 2G,
  ..., 1, G + 1, ...), so consecutive picks from one layer read different
  KV heads. After (L - 1) * N picks the sequence repeats. Layer 0 is left
  out (its attention reads the raw embeddings) unless it is the only one.

  Raises:
    ValueError: count < 1.
  """
  if count < 1:
    raise ValueError(f"count must be >= 1, got {count}")
  layers = list(range(1, num_layers)) or [0]
  g = num_heads // num_kv_heads
  order = [kv * g + j for j in range(g) for kv in range(num_kv_heads)]
  return [(layers[i % len(layers)], order[(i // len(layers)) % num_heads])
          for i in range(count)]


def load_model_head_indices(
    path: str | Path,
    num_heads: int,
    batch: int = 1,
    *,
    expect_seq_len: int | None = None,
) -> VerticalSlashIndices:
  """Real heads' index sets as a benchmark input [batch, num_heads, ...].

  Heads are picked by `select_heads` (round-robin over layers >= 1: layer
  1, 2, ..., L-1, then the next head of each layer, in KV-head-diverse
  order 0, G, 2G, ..., 1, G + 1, ...; repeating after (L - 1) * N heads).
  Every batch row gets the same heads. The indices are valid for
  T = S = the file's seq_len only.

  Args:
    path: a Vertical-Slash file of `model-indices` (`HeadIndices.save`).
    num_heads: query heads wanted (e.g. 32).
    batch: batch size B.
    expect_seq_len: if given, the file's seq_len must equal it.

  Returns:
    VerticalSlashIndices with int32 vertical [B, num_heads, NV] ascending,
    vertical_count [B, num_heads], slash [B, num_heads, NS] descending,
    slash_count [B, num_heads].

  Raises:
    ValueError: a seq_len mismatch, or batch / num_heads < 1.
  """
  if batch < 1:
    raise ValueError(f"batch must be >= 1, got {batch}")
  res = HeadIndices.load(path)
  if expect_seq_len is not None and res.seq_len != expect_seq_len:
    raise ValueError(
        f"{path} holds indices for T={res.seq_len}, not {expect_seq_len}"
    )
  picks = select_heads(res.num_layers, res.num_heads,
                       int(res.meta["num_kv_heads"]), num_heads)
  li = np.asarray([p[0] for p in picks])
  hi = np.asarray([p[1] for p in picks])

  def take(a):  # [L, N, ...] -> [B, num_heads, ...]
    sel = a[li, hi]
    return jnp.asarray(np.broadcast_to(sel, (batch, *sel.shape)), jnp.int32)

  return VerticalSlashIndices(
      vertical=take(res.vertical), vertical_count=take(res.vertical_count),
      slash=take(res.slash), slash_count=take(res.slash_count),
      seq_len=res.seq_len)


# ------------------------------------------------------------- summaries
def summarize(res: HeadIndices, near: int = 4096) -> dict[str, Any]:
  """Quick statistics of the index sets (layers >= 1 and per layer).

  Returns:
    {"per_layer": [{layer, slash_near, slash_median, vertical_distinct,
    vertical_beyond_sinks}], "slash_near", "vertical_distinct", ...}:
    slash_near = fraction of kept slash offsets < `near`; vertical_distinct
    = distinct vertical key positions over the layer's heads;
    vertical_beyond_sinks = fraction of kept verticals >= 1024.
  """

  def valid(a, counts):
    return [a[h, : counts[h]] for h in range(a.shape[0])]

  rows, all_s, all_v = [], [], []
  for layer in range(res.num_layers):
    s = np.concatenate(valid(res.slash[layer], res.slash_count[layer]))
    v = np.concatenate(valid(res.vertical[layer], res.vertical_count[layer]))
    if layer >= 1 or res.num_layers == 1:
      all_s.append(s)
      all_v.append(v)
    rows.append({
        "layer": layer,
        "slash_near": round(float(np.mean(s < near)), 4),
        "slash_median": int(np.median(s)),
        "vertical_distinct": int(np.unique(v).size),
        "vertical_beyond_sinks": round(float(np.mean(v >= 1024)), 4),
    })
  s, v = np.concatenate(all_s), np.concatenate(all_v)
  return {
      "seq_len": res.seq_len,
      "near": near,
      "slash_near": round(float(np.mean(s < near)), 4),
      "slash_median": int(np.median(s)),
      "vertical_distinct": int(np.unique(v).size),
      "vertical_beyond_sinks": round(float(np.mean(v >= 1024)), 4),
      "per_layer": rows,
  }
