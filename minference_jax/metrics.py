"""Sparse attention metrics: density, attention recall, output error."""

import jax
import jax.numpy as jnp
import numpy as np
from beartype import beartype
from jaxtyping import Array, Bool, Float, Int, jaxtyped

from pallas_kernels.a_shape.xla import a_shape_logsumexp_xla
from pallas_kernels.block_sparse.xla import block_sparse_logsumexp_xla
from pallas_kernels.flash.xla import flash_logsumexp_xla
from pallas_kernels.layouts import (
    AShapeLayout,
    BlockSparseLayout,
    VerticalSlashLayout,
)
from pallas_kernels.vertical_slash.xla import vertical_slash_logsumexp_xla

Layout = VerticalSlashLayout | BlockSparseLayout | AShapeLayout


def _tri(n):
  """Sum_{j=1..n} j for n >= 0 (int32, exact while n < 46341)."""
  return n * (n + 1) // 2


def _window_area(start, width, lo, hi):
  """Causal (row, col) pairs of rows [lo, hi) x cols [start, start + width).

  Row r covers cols [start, min(start + width, r + 1)), i.e.
  clip(r + 1 - start, 0, width) keys; summed in closed form over the rows.
  """

  def g(n):  # sum_{x=1..n} min(x, width), 0 for n <= 0
    n = jnp.maximum(n, 0)
    small = _tri(jnp.minimum(n, width))
    return small + jnp.maximum(n - width, 0) * width

  return g(hi - start) - g(lo - start)


def _row_bounds(tb, bs, t):
  lo = jnp.arange(tb, dtype=jnp.int32) * bs  # [Tb]
  return lo, jnp.minimum(lo + bs, t)


@jaxtyped(typechecker=beartype)
def covered_counts(layout: Layout, seq_len: int) -> Int[Array, "B N Tb"]:
  """Number of causal (query, key) pairs a layout computes, per row block.

  Exact layout arithmetic (closed forms per window, column or key block), no
  [T, S] mask. int32 is exact here: a row block holds at most bs * T pairs.
  Assumes a well-formed layout (no key twice, as the layout contract says).

  Args:
    layout: a sparse layout for a full prefill of length seq_len (T == S).
    seq_len: T.

  Returns:
    [B, N, Tb] int32 (B = 1 for an AShapeLayout, whose sizes are per head).
  """
  t = seq_len
  if isinstance(layout, AShapeLayout):
    bs = 64
    tb = -(-t // bs)
    rows = jnp.arange(tb * bs, dtype=jnp.int32)  # [Tb * bs]
    n_init = layout.n_init.astype(jnp.int32)[:, None]  # [N, 1]
    n_local = layout.n_local.astype(jnp.int32)[:, None]
    local = jnp.minimum(n_local, rows + 1)  # [N, Tb * bs]
    sink = jnp.clip(jnp.minimum(n_init, rows - n_local + 1), 0)
    per_row = jnp.where(rows < t, local + sink, 0)
    return per_row.reshape(1, -1, tb, bs).sum(-1)
  bs = layout.block_size
  if isinstance(layout, VerticalSlashLayout):
    tb = layout.block_count.shape[-1]
    lo, hi = _row_bounds(tb, bs, t)
    lo_, hi_ = lo[:, None], hi[:, None]  # [Tb, 1]
    ns = layout.block_offset.shape[-1]
    nv = layout.column_index.shape[-1]
    off = layout.block_offset  # [B, N, Tb, NS]
    width = jnp.clip(t - off, 0, bs)  # sequence-end mask
    win = jnp.where(
        jnp.arange(ns) < layout.block_count[..., None],
        _window_area(off, width, lo_, hi_),
        0,
    ).sum(-1)
    col = layout.column_index  # [B, N, Tb, NV]
    col_rows = jnp.clip(hi_ - jnp.maximum(lo_, col), 0)
    cols = jnp.where(
        jnp.arange(nv) < layout.column_count[..., None], col_rows, 0
    ).sum(-1)
    return win + cols
  if isinstance(layout, BlockSparseLayout):
    tb = layout.block_count.shape[-1]
    lo, hi = _row_bounds(tb, bs, t)
    kb = layout.block_index.shape[-1]
    start = layout.block_index * bs  # [B, N, Tb, KB]
    width = jnp.clip(t - start, 0, bs)
    area = _window_area(start, width, lo[:, None], hi[:, None])
    return jnp.where(
        jnp.arange(kb) < layout.block_count[..., None], area, 0
    ).sum(-1)
  raise TypeError(
      f"layout must be a sparse layout, got {type(layout).__name__}"
  )


def _check_mask(mask, seq_len):
  if mask.ndim not in (3, 4) or mask.shape[-2] != seq_len:
    raise ValueError(
        f"mask must be [B, N, T, S] or [N, T, S] with T = seq_len ="
        f" {seq_len}; got {mask.shape}"
    )
  return mask if mask.ndim == 4 else mask[None]


def density_per_head(
    layout_or_mask: Layout | Bool[Array, "..."], seq_len: int
) -> np.ndarray:
  """Fraction of the causal query-key area computed, per query head.

  Args:
    layout_or_mask: a sparse layout (counted by arithmetic), or a boolean mask
      [B, N, T, S] / [N, T, S] (tests; counted over its causal part).
    seq_len: T (the causal area of a full prefill is T (T + 1) / 2).

  Returns:
    [N] float64, averaged over the batch; inactive heads give 0.

  Raises:
    ValueError: on a mask whose shape disagrees with seq_len.
  """
  if isinstance(layout_or_mask, (VerticalSlashLayout, BlockSparseLayout,
                                 AShapeLayout)):
    counts = np.asarray(covered_counts(layout_or_mask, seq_len))
    covered = counts.astype(np.int64).sum(-1)  # [B, N]
    area = seq_len * (seq_len + 1) // 2
  else:
    mask = np.asarray(_check_mask(layout_or_mask, seq_len))
    s = mask.shape[-1]
    causal = np.arange(s)[None, :] <= np.arange(seq_len)[:, None]
    covered = (mask & causal).sum(axis=(-2, -1), dtype=np.int64)
    area = int(causal.sum())
  return covered.mean(0) / area


def density(
    layout_or_mask: Layout | Bool[Array, "..."], seq_len: int
) -> float:
  """Fraction of the causal query-key area computed, over all heads and batch.

  Args:
    layout_or_mask: a sparse layout or a boolean mask (see density_per_head).
    seq_len: T.

  Returns:
    A float in [0, 1]. Heads with all counts 0 (another pattern) count as 0:
    a layout covering part of a layer's heads gives that part's share.
  """
  return float(density_per_head(layout_or_mask, seq_len).mean())


def _selected_logsumexp(q, k, layout: Layout, max_init, max_local):
  """[B, T, N] f32 log-sum-exp of the scaled logits over the layout's key
  set (-inf for rows without keys), by the layout's XLA implementation."""
  if isinstance(layout, AShapeLayout):
    return a_shape_logsumexp_xla(q, k, layout, max_init=max_init,
                                 max_local=max_local)
  if isinstance(layout, VerticalSlashLayout):
    return vertical_slash_logsumexp_xla(q, k, layout)
  return block_sparse_logsumexp_xla(q, k, layout)


def _row_recall(q, k, layout_or_mask, max_init, max_local, dense_lse):
  """Per-row dense softmax mass on the computed key set: [B, T, N]."""
  if isinstance(layout_or_mask, (VerticalSlashLayout, BlockSparseLayout,
                                 AShapeLayout)):
    lse_sel = _selected_logsumexp(q, k, layout_or_mask, max_init, max_local)
    lse_all = flash_logsumexp_xla(q, k) if dense_lse is None else dense_lse
    return jnp.clip(jnp.exp(lse_sel - lse_all), 0.0, 1.0)
  # Mask version: dense [B, N, T, S] probabilities (test-sized inputs only).
  b, t, n, d = q.shape
  kv = k.shape[2]
  mask = _check_mask(layout_or_mask, t)
  qf = q.astype(jnp.float32).reshape(b, t, kv, n // kv, d) * d**-0.5
  logits = jnp.einsum(
      "btkgd,bskd->bkgts", qf, k.astype(jnp.float32),
      precision=jax.lax.Precision.HIGHEST,
  ).reshape(b, n, t, -1)  # [B, N, T, S]
  causal = jnp.arange(k.shape[1])[None, :] <= jnp.arange(t)[:, None]
  probs = jax.nn.softmax(jnp.where(causal, logits, -jnp.inf), axis=-1)
  mass = jnp.sum(jnp.where(mask & causal, probs, 0.0), axis=-1)  # [B, N, T]
  return jnp.swapaxes(mass, 1, 2)


@jaxtyped(typechecker=beartype)
def attention_recall_per_head(
    q: Float[Array, "B T N D"],
    k: Float[Array, "B T K D"],
    layout_or_mask: Layout | Bool[Array, "..."],
    *,
    max_init: int | None = None,
    max_local: int | None = None,
    dense_lse: Float[Array, "B T N"] | None = None,
) -> Float[Array, "N"]:
  """Softmax mass of dense causal attention on the computed set, per head.

  With a layout, computed chunked over query blocks from two log-sum-exps
  (dense and over the selected keys): recall of row t is
  exp(lse_selected(t) - lse_dense(t)); memory O(T x budget). With a mask,
  computed densely (test-sized inputs).

  Args:
    q: [B, T, N, D] queries.
    k: [B, T, K, D] keys (full prefill).
    layout_or_mask: sparse layout, or bool mask [B, N, T, S] / [N, T, S].
    max_init: static bound for A-shape layouts under jit.
    max_local: static bound for A-shape layouts under jit.
    dense_lse: optional precomputed dense log-sum-exp [B, T, N]
      (`pallas_kernels.flash.xla.flash_logsumexp_xla(q, k)`), to share one
      dense pass between several layouts.

  Returns:
    [N] f32: per head, the mean over batch and rows of the recall.
  """
  rows = _row_recall(q, k, layout_or_mask, max_init, max_local, dense_lse)
  return jnp.mean(rows, axis=(0, 1))


@jaxtyped(typechecker=beartype)
def attention_recall(
    q: Float[Array, "B T N D"],
    k: Float[Array, "B T K D"],
    layout_or_mask: Layout | Bool[Array, "..."],
    *,
    max_init: int | None = None,
    max_local: int | None = None,
    dense_lse: Float[Array, "B T N"] | None = None,
) -> Float[Array, ""]:
  """Softmax mass of dense causal attention on the computed set, averaged.

  Args:
    q: [B, T, N, D] queries.
    k: [B, T, K, D] keys (full prefill).
    layout_or_mask: sparse layout, or bool mask [B, N, T, S] / [N, T, S].
    max_init: static bound for A-shape layouts under jit.
    max_local: static bound for A-shape layouts under jit.
    dense_lse: optional precomputed dense log-sum-exp [B, T, N].

  Returns:
    f32 scalar in [0, 1]: mean over batch, rows and heads.
  """
  return jnp.mean(
      attention_recall_per_head(
          q, k, layout_or_mask, max_init=max_init, max_local=max_local,
          dense_lse=dense_lse,
      )
  )


def _check_pair(out, ref):
  if out.shape != ref.shape:
    raise ValueError(
        f"out{out.shape} and ref{ref.shape} must have the same shape"
    )


def _ratio(diff_sq, ref_sq):
  diff, ref = jnp.sqrt(diff_sq), jnp.sqrt(ref_sq)
  safe = jnp.where(ref > 0, ref, 1.0)
  return jnp.where(ref > 0, diff / safe, jnp.where(diff > 0, jnp.inf, 0.0))


@jaxtyped(typechecker=beartype)
def relative_output_error(
    out: Float[Array, "B T N D"], ref: Float[Array, "B T N D"]
) -> Float[Array, ""]:
  """||out - ref|| / ||ref|| (Frobenius, in f32).

  Args:
    out: [B, T, N, D] attention output under test.
    ref: [B, T, N, D] reference output (e.g. dense).

  Returns:
    f32 scalar; 0 if both are zero, inf if only ref is zero.

  Raises:
    ValueError: if the shapes differ.
  """
  _check_pair(out, ref)
  o, r = out.astype(jnp.float32), ref.astype(jnp.float32)
  return _ratio(jnp.sum((o - r) ** 2), jnp.sum(r**2))


@jaxtyped(typechecker=beartype)
def relative_output_error_per_head(
    out: Float[Array, "B T N D"], ref: Float[Array, "B T N D"]
) -> Float[Array, "N"]:
  """Per query head ||out - ref|| / ||ref||, norms over batch, rows and dims.

  Args:
    out: [B, T, N, D] attention output under test.
    ref: [B, T, N, D] reference output.

  Returns:
    [N] f32.

  Raises:
    ValueError: if the shapes differ.
  """
  _check_pair(out, ref)
  o, r = out.astype(jnp.float32), ref.astype(jnp.float32)
  axes = (0, 1, 3)
  return _ratio(jnp.sum((o - r) ** 2, axis=axes), jnp.sum(r**2, axis=axes))
