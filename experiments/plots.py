"""Attention-pattern pictures: block-mean attention maps, selected key sets."""

import functools
from collections.abc import Mapping, Sequence
from pathlib import Path

import jax
import jax.numpy as jnp
import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.colors import to_rgb  # noqa: E402
import numpy as np  # noqa: E402
from beartype import beartype  # noqa: E402
from jaxtyping import Array, Float, jaxtyped  # noqa: E402

from pallas_kernels.flash.xla import flash_logsumexp_xla  # noqa: E402
from pallas_kernels.layouts import (  # noqa: E402
    AShapeLayout,
    BlockSparseLayout,
    VerticalSlashLayout,
)

Layout = VerticalSlashLayout | BlockSparseLayout | AShapeLayout
_RED = (0.9, 0.2, 0.0)


@functools.partial(jax.jit, static_argnames=("block", "rows_per_chunk"))
def _block_means(q, k, lse, *, block, rows_per_chunk):
  b, t, n, d = q.shape
  s_len, kv = k.shape[1], k.shape[2]
  g = n // kv
  tb, sb = -(-t // block), -(-s_len // block)
  chunk = rows_per_chunk * block
  n_chunks = -(-t // chunk)
  pad_t = n_chunks * chunk
  qf = jnp.pad(q, ((0, 0), (0, pad_t - t), (0, 0), (0, 0)))
  qf = qf.reshape(b, n_chunks, chunk, kv, g, d).astype(jnp.float32)
  lf = jnp.pad(lse, ((0, 0), (0, pad_t - t), (0, 0)))
  lf = lf.reshape(b, n_chunks, chunk, kv, g)
  kf = jnp.pad(k, ((0, 0), (0, sb * block - s_len), (0, 0), (0, 0)))
  kf = kf.astype(jnp.float32)
  cols = jnp.arange(sb * block)

  def one_chunk(xs):
    qc, lc, c = xs  # [B, chunk, K, G, D], [B, chunk, K, G], []
    rows = c * chunk + jnp.arange(chunk)  # [chunk]
    logits = jnp.einsum(
        "bqkgd,bskd->bkgqs", qc, kf, precision=jax.lax.Precision.HIGHEST
    ) * d**-0.5  # [B, K, G, chunk, Sb * block]
    lc = jnp.moveaxis(lc, 1, 3)  # [B, K, G, chunk]
    ok = (cols[None, :] <= rows[:, None]) & (cols[None, :] < s_len)
    probs = jnp.where(ok, jnp.exp(logits - lc[..., None]), 0.0)
    probs = probs.reshape(b, kv, g, rows_per_chunk, block, sb, block)
    return probs.mean(axis=(4, 6))  # [B, K, G, R, Sb]

  out = jax.lax.map(
      one_chunk, (jnp.moveaxis(qf, 1, 0), jnp.moveaxis(lf, 1, 0),
                  jnp.arange(n_chunks))
  )  # [C, B, K, G, R, Sb]
  out = jnp.moveaxis(out, 0, 3).reshape(b, n, n_chunks * rows_per_chunk, sb)
  return out[:, :, :tb]


@jaxtyped(typechecker=beartype)
def block_mean_attention(
    q: Float[Array, "B T N D"],
    k: Float[Array, "B S K D"],
    *,
    block: int = 64,
    rows_per_chunk: int = 4,
) -> Float[Array, "B N Tb Sb"]:
  """Mean causal attention probability per block x block tile.

  Chunked over query blocks (never a full [T, S] map): the softmax
  normaliser comes from `flash_logsumexp_xla`, then each chunk's
  probabilities are averaged over tiles. Full prefill (query t at position t).

  Args:
    q: [B, T, N, D] queries; query head n reads KV head n // (N // K).
    k: [B, S, K, D] keys.
    block: tile size.
    rows_per_chunk: query blocks per chunk (memory ~ rows_per_chunk * block
      * S per head).

  Returns:
    [B, N, ceil(T / block), ceil(S / block)] f32 tile means (a tile's mean
    over all its block * block entries, masked ones counted as 0).
  """
  lse = flash_logsumexp_xla(q, k)
  return _block_means(q, k, lse, block=block, rows_per_chunk=rows_per_chunk)


def layout_key_cover(layout: Layout, seq_len: int) -> np.ndarray:
  """Keys each query block computes (before the causal mask), batch 0.

  Args:
    layout: a sparse layout of a full prefill of length seq_len.
    seq_len: T.

  Returns:
    [N, Tb, T] bool (host array): key j is selected for row block m.
  """
  t = seq_len
  if isinstance(layout, AShapeLayout):
    bs = 64
    tb = -(-t // bs)
    n_init = np.asarray(layout.n_init)[:, None, None]  # [N, 1, 1]
    n_local = np.asarray(layout.n_local)[:, None, None]
    cols = np.arange(t)[None, None, :]
    last = np.minimum((np.arange(tb) + 1) * bs, t)[None, :, None] - 1
    first = np.arange(tb)[None, :, None] * bs
    return (cols < n_init) | ((cols > first - n_local) & (cols <= last) &
                              (n_local > 0))
  bs = layout.block_size
  if isinstance(layout, BlockSparseLayout):
    count = np.asarray(layout.block_count)[0]  # [N, Tb]
    index = np.asarray(layout.block_index)[0]  # [N, Tb, KB]
    n, tb, kb = index.shape
    sb = -(-t // bs)
    valid = np.arange(kb) < count[..., None]
    chosen = np.zeros((n, tb, sb + 1), bool)
    hn, hm, _ = np.nonzero(valid)
    chosen[hn, hm, index[valid]] = True
    return np.repeat(chosen[..., :sb], bs, axis=-1)[..., :t]
  if isinstance(layout, VerticalSlashLayout):
    count = np.asarray(layout.block_count)[0]
    offset = np.asarray(layout.block_offset)[0]  # [N, Tb, NS]
    c_count = np.asarray(layout.column_count)[0]
    c_index = np.asarray(layout.column_index)[0]  # [N, Tb, NV]
    n, tb, ns = offset.shape
    diff = np.zeros((n, tb, t + 1), np.int32)  # window starts +1, ends -1
    valid = np.arange(ns) < count[..., None]
    hn, hm, _ = np.nonzero(valid)
    starts = offset[valid]
    np.add.at(diff, (hn, hm, starts), 1)
    np.add.at(diff, (hn, hm, np.minimum(starts + bs, t)), -1)
    cover = np.cumsum(diff, axis=-1)[..., :t] > 0
    valid = np.arange(c_index.shape[-1]) < c_count[..., None]
    hn, hm, _ = np.nonzero(valid)
    cover[hn, hm, c_index[valid]] = True
    return cover
  raise TypeError(f"not a layout: {type(layout).__name__}")


def tile_cover(cover: np.ndarray, block: int = 64) -> np.ndarray:
  """Selected fraction of each key tile: [N, Tb, T] -> [N, Tb, Sb]."""
  n, tb, t = cover.shape
  sb = -(-t // block)
  padded = np.zeros((n, tb, sb * block), bool)
  padded[..., :t] = cover
  return padded.reshape(n, tb, sb, block).mean(-1)


def plot_attention_patterns(
    block_maps: np.ndarray,
    covers: dict[str, np.ndarray],
    heads: Sequence[int],
    path: str | Path,
    *,
    title: str = "",
    block: int = 64,
    labels: Mapping[str, Sequence[str]] | None = None,
    colors: Mapping[str, Sequence[str]] | None = None,
) -> Path:
  """Grid of heads x patterns: block-mean attention with selected tiles.

  Each panel shows log10 of the tile-mean attention probability (causal
  part), and overlays in colour the tiles the pattern computes (a tile's
  opacity is the share of it selected: its keys for `tile_cover`, its
  causal pairs for `minference_jax.search.tile_share`). The first column
  is the attention map alone. Per-head labels and colours show a pattern
  config whose heads differ in kind and budget.

  Args:
    block_maps: [N, Tb, Sb] tile means (e.g. `block_mean_attention(...)[0]`).
    covers: pattern name -> [N, Tb, Sb] selected share per tile.
    heads: which heads to draw (rows of the grid).
    path: output PNG path (parent folders are created).
    title: figure title.
    block: tile size (for axis labels).
    labels: pattern name -> one text per head of the model (the panel
      title after the head; default: the pattern name).
    colors: pattern name -> one matplotlib colour per head (default red).

  Returns:
    The written path.
  """
  path = Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  cols = 1 + len(covers)
  fig, axes = plt.subplots(
      len(heads), cols, figsize=(3.2 * cols, 3.0 * len(heads)), squeeze=False
  )
  tiny = 1e-12
  for row, h in enumerate(heads):
    img = np.log10(np.maximum(block_maps[h], tiny))
    tb, sb = img.shape
    causal = np.arange(sb)[None, :] <= np.arange(tb)[:, None]
    img = np.where(causal, img, np.nan)
    finite = img[np.isfinite(img)]
    vmin = np.percentile(finite, 5) if finite.size else -12
    vmax = finite.max() if finite.size else 0
    extent = (0, sb * block, tb * block, 0)
    for col in range(cols):
      ax = axes[row, col]
      ax.imshow(img, cmap="Greys", vmin=vmin, vmax=vmax, extent=extent,
                interpolation="nearest")
      if col == 0:
        ax.set_title(f"head {h}: log10 mean attn", fontsize=9)
      else:
        name = list(covers)[col - 1]
        frac = np.where(causal, covers[name][h], 0.0)
        overlay = np.zeros(frac.shape + (4,))
        color = colors[name][h] if colors and name in colors else _RED
        overlay[..., :3] = to_rgb(color)
        overlay[..., 3] = 0.6 * frac
        ax.imshow(overlay, extent=extent, interpolation="nearest")
        label = labels[name][h] if labels and name in labels else name
        ax.set_title(f"head {h}: {label}", fontsize=9)
      ax.set_xlabel("key", fontsize=8)
      ax.set_ylabel("query", fontsize=8)
      ax.tick_params(labelsize=7)
  if title:
    fig.suptitle(title, fontsize=10)
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)
  return path
