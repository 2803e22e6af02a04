"""Gather-based XLA attention over sparse index layouts (any device)."""

import functools
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np
from beartype import beartype
from jaxtyping import Array, Float, jaxtyped

from minference_jax.types import DEFAULT_MASK_VALUE
from pallas_kernels.layouts import (
    AShapeLayout,
    BlockSparseLayout,
    VerticalSlashLayout,
)

Layout = VerticalSlashLayout | BlockSparseLayout | AShapeLayout

# Elements (f32) one chunk of row blocks may hold in logits plus gathered K/V;
# 2**24 floats = 64 MiB. Chunks are processed one after another (lax.map), so
# peak memory is O(T x budget / chunks), never O(T x S).
_CHUNK_ELEMENTS = 1 << 24
_HIGHEST = jax.lax.Precision.HIGHEST


def _check_qkv(q, k, v, *, prefill: bool) -> tuple[int, int]:
  """Validates q/k/v shapes; returns (K, G)."""
  if q.ndim != 4 or k.ndim != 4 or v.ndim != 4:
    raise ValueError(
        f"q, k, v must be 4-D [B, T, N, D] / [B, S, K, D]; got q{q.shape},"
        f" k{k.shape}, v{v.shape}"
    )
  if k.shape != v.shape:
    raise ValueError(f"k{k.shape} and v{v.shape} must have the same shape")
  b, t, n, d = q.shape
  if k.shape[0] != b or k.shape[3] != d:
    raise ValueError(
        f"q{q.shape} and k{k.shape} disagree on batch or head dim"
    )
  kv_heads = k.shape[2]
  if n % kv_heads:
    raise ValueError(
        f"query heads N={n} (q{q.shape}) not divisible by KV heads"
        f" K={kv_heads} (k{k.shape})"
    )
  if prefill and k.shape[1] != t:
    raise ValueError(
        f"sparse paths need a full prefill (T == S); got q{q.shape},"
        f" k{k.shape}"
    )
  return kv_heads, n // kv_heads


def _check_layout_arrays(name, arrays, b, n, tb):
  for field, arr in arrays.items():
    if arr.ndim < 3 or arr.shape[:3] != (b, n, tb):
      raise ValueError(
          f"{name}.{field} has shape {arr.shape}; expected leading dims"
          f" [B, N, Tb] = {(b, n, tb)} (Tb = ceil(T / block_size))"
      )


def _rows_per_chunk(n_row_blocks, heads_times_batch, keys, head_dim, bs):
  """How many row blocks one chunk holds so it stays under _CHUNK_ELEMENTS."""
  per_row_block = heads_times_batch * keys * (bs + 2 * head_dim)
  return int(max(1, min(n_row_blocks, _CHUNK_ELEMENTS // per_row_block)))


def _attend(qb, kg, vg, valid):
  """Softmax attention of one row block over gathered keys, in f32.

  Args:
    qb: [bs, D] f32 queries, already scaled by 1/sqrt(D).
    kg: [L, D] gathered keys; vg: [L, D] gathered values or None.
    valid: [bs, L] bool, which (row, key) pairs are computed.

  Returns:
    (out [bs, D] f32 or None, lse [bs] f32; -inf for rows without keys).
  """
  s = jnp.einsum(
      "qd,ld->ql", qb, kg.astype(jnp.float32), precision=_HIGHEST
  )  # [bs, L]
  s = jnp.where(valid, s, DEFAULT_MASK_VALUE)
  m = jnp.max(s, axis=-1)  # [bs]
  p = jnp.where(valid, jnp.exp(s - m[:, None]), 0.0)  # [bs, L]
  l = jnp.sum(p, axis=-1)  # [bs]
  has_keys = l > 0
  lse = jnp.where(has_keys, m + jnp.log(jnp.where(has_keys, l, 1.0)), -jnp.inf)
  if vg is None:
    return None, lse
  o = jnp.einsum(
      "ql,ld->qd", p, vg.astype(jnp.float32), precision=_HIGHEST
  )  # [bs, D]
  o = jnp.where(has_keys[:, None], o / jnp.where(has_keys, l, 1.0)[:, None], 0)
  return o, lse


def _gathered_attention(
    q, k, v, row_data, head_data, keyset: Callable, n_keys: int, bs: int
):
  """Shared driver: chunks of row blocks, vmapped over B, K, G and rows.

  Args:
    q: [B, T, N, D]; k, v: [B, S, K, D] (v may be None: lse only).
    row_data: tuple of per-row-block arrays [B, N, Tb, ...].
    head_data: tuple of per-head arrays [N].
    keyset: fn(m, row_block_arrays..., head_arrays...) -> (pos [L] int32,
      ok [bs, L] bool), with rows m * bs + arange(bs).
    n_keys: static L.
    bs: row block size.

  Returns:
    (out [B, T, N, D] f32 or None, lse [B, T, N] f32).
  """
  b, t, n, d = q.shape
  s_len, kv_heads = k.shape[1], k.shape[2]
  g = n // kv_heads
  tb = -(-t // bs)
  rows = _rows_per_chunk(tb, b * n, n_keys, d, bs)
  n_chunks = -(-tb // rows)
  tb_pad = n_chunks * rows
  scale = d**-0.5

  qf = jnp.pad(q, ((0, 0), (0, tb_pad * bs - t), (0, 0), (0, 0)))
  qf = qf.reshape(b, n_chunks, rows, bs, kv_heads, g, d)
  qf = jnp.moveaxis(qf, 1, 0)  # [C, B, R, bs, K, G, D]

  def per_row_block(arr):
    pad = [(0, 0)] * arr.ndim
    pad[2] = (0, tb_pad - tb)
    arr = jnp.pad(arr, pad)  # counts padded with 0: empty row blocks
    arr = arr.reshape((b, kv_heads, g, n_chunks, rows) + arr.shape[3:])
    return jnp.moveaxis(arr, 3, 0)  # [C, B, K, G, R, ...]

  rdata = tuple(per_row_block(a) for a in row_data)
  hdata = tuple(a.reshape(kv_heads, g) for a in head_data)
  block_ids = jnp.arange(tb_pad, dtype=jnp.int32).reshape(n_chunks, rows)

  def one_row_block(qb, m, k_head, v_head, *arrays):
    # qb: [bs, D], k_head/v_head: [S, D], arrays: row then head data.
    pos, ok = keyset(m, *arrays)  # [L], [bs, L]
    pos = jnp.clip(pos, 0, s_len - 1)
    kg = k_head[pos]  # [L, D]
    vg = None if v_head is None else v_head[pos]
    return _attend(qb.astype(jnp.float32) * scale, kg, vg, ok)

  nr, nh = len(rdata), len(hdata)
  with_v = v is not None
  # Innermost: rows of a chunk; then query heads of a group (K/V shared, not
  # batched); then KV heads; then batch.
  fn = jax.vmap(
      one_row_block, in_axes=(0, 0, None, None) + (0,) * nr + (None,) * nh
  )
  fn = jax.vmap(fn, in_axes=(2, None, None, None) + (0,) * (nr + nh))
  fn = jax.vmap(
      fn, in_axes=(2, None, 1, 1 if with_v else None) + (0,) * (nr + nh)
  )
  fn = jax.vmap(
      fn, in_axes=(0, None, 0, 0 if with_v else None) + (0,) * nr
      + (None,) * nh
  )

  def one_chunk(xs):
    qc, ids, rd = xs
    return fn(qc, ids, k, v, *rd, *hdata)  # [B, K, G, R, bs, ...]

  out, lse = jax.lax.map(one_chunk, (qf, block_ids, rdata))
  # out: [C, B, K, G, R, bs, D]; lse: [C, B, K, G, R, bs]
  lse = jnp.moveaxis(lse, 0, 3).reshape(b, n, tb_pad * bs)[:, :, :t]
  lse = jnp.swapaxes(lse, 1, 2)  # [B, T, N]
  if out is not None:
    out = jnp.moveaxis(out, 0, 3).reshape(b, n, tb_pad * bs, d)[:, :, :t]
    out = jnp.swapaxes(out, 1, 2)  # [B, T, N, D]
  return out, lse


# ---------------------------------------------------------------- key sets


def _vs_keyset(bs, s_len):
  def keyset(m, count, offsets, col_count, col_index):
    ns, nv = offsets.shape[0], col_index.shape[0]
    row = m * bs + jnp.arange(bs)  # [bs]
    win = offsets[:, None] + jnp.arange(bs)[None, :]  # [NS, bs]
    win_ok = (jnp.arange(ns) < count)[:, None] & (win < s_len)
    col_ok = jnp.arange(nv) < col_count  # [NV]
    pos = jnp.concatenate([win.reshape(-1), col_index])  # [NS * bs + NV]
    ok = jnp.concatenate([win_ok.reshape(-1), col_ok])
    return pos, ok[None, :] & (pos[None, :] <= row[:, None])

  return keyset


def _bs_keyset(bs, s_len):
  def keyset(m, count, index):
    kb = index.shape[0]
    row = m * bs + jnp.arange(bs)  # [bs]
    pos = index[:, None] * bs + jnp.arange(bs)[None, :]  # [KB, bs]
    ok = (jnp.arange(kb) < count)[:, None] & (pos < s_len)
    pos, ok = pos.reshape(-1), ok.reshape(-1)
    return pos, ok[None, :] & (pos[None, :] <= row[:, None])

  return keyset


def _a_shape_keyset(bs, s_len, max_init, max_local):
  width = max_local + bs - 1  # local keys any row of the block can reach

  def keyset(m, n_init, n_local):
    row = (m * bs + jnp.arange(bs))[:, None]  # [bs, 1]
    sink = jnp.arange(max_init)[None, :]  # [1, I]
    # Sinks inside the row's local window are counted by the local part.
    sink_ok = (sink < n_init) & (sink <= row) & (row - sink >= n_local)
    local = (m * bs + bs - width + jnp.arange(width))[None, :]  # [1, W]
    local_ok = (
        (local >= 0) & (local <= row) & (row - local < n_local)
        & (local < s_len)
    )
    pos = jnp.concatenate([sink[0], local[0]])  # [I + W]
    return pos, jnp.concatenate([sink_ok, local_ok], axis=1)

  return keyset


# ------------------------------------------------------------ dispatchers


def _static_max(x, arg: str) -> int:
  try:
    return int(np.max(np.asarray(x))) if np.size(x) else 0
  except (jax.errors.ConcretizationTypeError,
          jax.errors.TracerArrayConversionError) as e:
    raise ValueError(
        f"{arg} must be given as a static int when the A-shape layout is"
        " traced (e.g. under jit): the local window width sets array shapes"
    ) from e


def _layout_keys(q, layout: Layout, max_init, max_local):
  """Returns (row_data, head_data, kind, static params, n_keys)."""
  b, t, n, _ = q.shape
  if isinstance(layout, AShapeLayout):
    bs = 64
    if layout.n_init.shape != (n,) or layout.n_local.shape != (n,):
      raise ValueError(
          f"AShapeLayout n_init{layout.n_init.shape}/n_local"
          f"{layout.n_local.shape} must have shape [N] = ({n},)"
      )
    if max_init is None:
      max_init = _static_max(layout.n_init, "max_init")
    if max_local is None:
      max_local = _static_max(layout.n_local, "max_local")
    max_init, max_local = min(int(max_init), t), min(int(max_local), t)
    head = (layout.n_init.astype(jnp.int32), layout.n_local.astype(jnp.int32))
    params = (bs, t, max_init, max_local)
    return (), head, "a_shape", params, max_init + max_local + bs - 1
  bs = layout.block_size
  tb = -(-t // bs)
  if isinstance(layout, VerticalSlashLayout):
    arrays = dict(
        block_count=layout.block_count,
        block_offset=layout.block_offset,
        column_count=layout.column_count,
        column_index=layout.column_index,
    )
    _check_layout_arrays("VerticalSlashLayout", arrays, b, n, tb)
    # Disjoint bs-wide windows starting in [0, S) number at most Tb, and
    # distinct columns left of a row block at most T: trim the padding.
    ns = min(layout.block_offset.shape[-1], tb)
    nv = min(layout.column_index.shape[-1], t)
    rows = (
        layout.block_count,
        layout.block_offset[..., :ns],
        layout.column_count,
        layout.column_index[..., :nv],
    )
    return rows, (), "vs", (bs, t), ns * bs + nv
  if isinstance(layout, BlockSparseLayout):
    arrays = dict(
        block_count=layout.block_count, block_index=layout.block_index
    )
    _check_layout_arrays("BlockSparseLayout", arrays, b, n, tb)
    kb = min(layout.block_index.shape[-1], tb)  # ids are distinct, <= m
    rows = (layout.block_count, layout.block_index[..., :kb])
    return rows, (), "bs", (bs, t), kb * bs
  raise TypeError(
      f"layout must be a VerticalSlashLayout, BlockSparseLayout or"
      f" AShapeLayout, got {type(layout).__name__}"
  )


_KEYSETS = {"vs": _vs_keyset, "bs": _bs_keyset, "a_shape": _a_shape_keyset}


@functools.partial(jax.jit, static_argnames=("kind", "params", "n_keys"))
def _sparse_jit(q, k, v, row_data, head_data, *, kind, params, n_keys):
  keyset = _KEYSETS[kind](*params)
  out, lse = _gathered_attention(
      q, k, v, row_data, head_data, keyset, n_keys, params[0]
  )
  return (None if out is None else out.astype(q.dtype)), lse


def _sparse(q, k, v, layout, max_init=None, max_local=None):
  _check_qkv(q, k, k if v is None else v, prefill=True)
  rows, heads, kind, params, n_keys = _layout_keys(
      q, layout, max_init, max_local
  )
  return _sparse_jit(
      q, k, v, rows, heads, kind=kind, params=params, n_keys=n_keys
  )


@jaxtyped(typechecker=beartype)
def vertical_slash_attention_xla(
    q: Float[Array, "B T N D"],
    k: Float[Array, "B T K D"],
    v: Float[Array, "B T K D"],
    layout: VerticalSlashLayout,
) -> Float[Array, "B T N D"]:
  """Vertical-Slash attention computing only the layout's windows and columns.

  For each 64-row query block, gathers the bs-wide K/V windows at
  `block_offset` and the single K/V rows at `column_index`, computes
  [bs, NS * bs + NV] logits in f32 (causal and count masks), softmax in f32 and
  the weighted sum. Query head n reads KV head n // G; K/V are never repeated.
  Row blocks are processed in chunks so memory is O(T x budget).

  Args:
    q: [B, T, N, D] queries.
    k: [B, T, K, D] keys (full prefill: S == T).
    v: [B, T, K, D] values.
    layout: VerticalSlashLayout with arrays [B, N, Tb, ...].

  Returns:
    [B, T, N, D] in q's dtype; rows (and inactive heads) without keys are 0.

  Raises:
    ValueError: on inconsistent shapes.
  """
  return _sparse(q, k, v, layout)[0]


@jaxtyped(typechecker=beartype)
def block_sparse_attention_xla(
    q: Float[Array, "B T N D"],
    k: Float[Array, "B T K D"],
    v: Float[Array, "B T K D"],
    layout: BlockSparseLayout,
) -> Float[Array, "B T N D"]:
  """Block-Sparse attention computing only the selected 64x64 key blocks.

  Args:
    q: [B, T, N, D] queries.
    k: [B, T, K, D] keys (full prefill: S == T).
    v: [B, T, K, D] values.
    layout: BlockSparseLayout with arrays [B, N, Tb, ...].

  Returns:
    [B, T, N, D] in q's dtype; rows (and inactive heads) without keys are 0.

  Raises:
    ValueError: on inconsistent shapes.
  """
  return _sparse(q, k, v, layout)[0]


@jaxtyped(typechecker=beartype)
def a_shape_attention_xla(
    q: Float[Array, "B T N D"],
    k: Float[Array, "B T K D"],
    v: Float[Array, "B T K D"],
    layout: AShapeLayout,
    *,
    max_init: int | None = None,
    max_local: int | None = None,
) -> Float[Array, "B T N D"]:
  """A-shape attention: sink keys [0, n_init) plus a causal local window.

  Per row block, the sink keys [0, max_init) and a window of
  max_local + 63 keys ending at the block's last row are gathered; masks keep
  exactly j < n_init[n] or t - j < n_local[n] (j <= t), each key once.

  Args:
    q: [B, T, N, D] queries.
    k: [B, T, K, D] keys (full prefill: S == T).
    v: [B, T, K, D] values.
    layout: AShapeLayout with n_init, n_local of shape [N].
    max_init: static upper bound of n_init (default: read from the layout,
      which must then be concrete, i.e. not traced).
    max_local: static upper bound of n_local (same default).

  Returns:
    [B, T, N, D] in q's dtype; inactive heads (0/0) are 0.

  Raises:
    ValueError: on inconsistent shapes, or a traced layout without bounds.
  """
  return _sparse(q, k, v, layout, max_init, max_local)[0]


@jaxtyped(typechecker=beartype)
def selected_logsumexp_xla(
    q: Float[Array, "B T N D"],
    k: Float[Array, "B T K D"],
    layout: Layout,
    *,
    max_init: int | None = None,
    max_local: int | None = None,
) -> Float[Array, "B T N"]:
  """Log-sum-exp of the scaled logits over the layout's key set, in f32.

  exp(selected - dense log-sum-exp) is the softmax mass of dense attention that
  falls on the computed keys (attention recall of a row).

  Args:
    q: [B, T, N, D] queries.
    k: [B, T, K, D] keys.
    layout: any sparse layout.
    max_init: static bound for A-shape layouts (see a_shape_attention_xla).
    max_local: static bound for A-shape layouts.

  Returns:
    [B, T, N] f32; -inf for rows without keys.
  """
  return _sparse(q, k, None, layout, max_init, max_local)[1]


# ------------------------------------------------------------------ dense


@functools.partial(
    jax.jit, static_argnames=("q_offset", "block_q", "block_k", "with_out")
)
def _dense_jit(q, k, v, *, q_offset, block_q, block_k, with_out):
  b, t, n, d = q.shape
  s_len, kv_heads = k.shape[1], k.shape[2]
  g = n // kv_heads
  nq, nk = -(-t // block_q), -(-s_len // block_k)
  qf = jnp.pad(q, ((0, 0), (0, nq * block_q - t), (0, 0), (0, 0)))
  qf = qf.reshape(b, nq, block_q, kv_heads, g, d)
  qf = jnp.moveaxis(qf, 1, 0)  # [Cq, B, bq, K, G, D]
  kf = jnp.pad(k, ((0, 0), (0, nk * block_k - s_len), (0, 0), (0, 0)))
  vf = jnp.pad(v, ((0, 0), (0, nk * block_k - s_len), (0, 0), (0, 0)))
  scale = d**-0.5

  def one_q_chunk(xs):
    qc, ci = xs  # [B, bq, K, G, D], []
    qc = qc.astype(jnp.float32) * scale
    q_pos = q_offset + ci * block_q + jnp.arange(block_q)  # [bq]
    # Only key chunks that hold a key <= the chunk's last row are visited.
    last = jnp.minimum(q_pos[-1], s_len - 1)
    n_visit = last // block_k + 1

    def body(j, carry):
      m, l, acc = carry  # [B, K, G, bq], [B, K, G, bq], [B, K, G, bq, D]
      kc = jax.lax.dynamic_slice_in_dim(kf, j * block_k, block_k, 1)
      k_pos = j * block_k + jnp.arange(block_k)  # [bk]
      logits = jnp.einsum(
          "bqkgd,bskd->bkgqs", qc, kc.astype(jnp.float32),
          precision=_HIGHEST,
      )  # [B, K, G, bq, bk]
      ok = (k_pos[None, :] <= q_pos[:, None]) & (k_pos[None, :] < s_len)
      logits = jnp.where(ok, logits, DEFAULT_MASK_VALUE)
      m_new = jnp.maximum(m, jnp.max(logits, axis=-1))
      p = jnp.where(ok, jnp.exp(logits - m_new[..., None]), 0.0)
      corr = jnp.exp(m - m_new)
      l = l * corr + jnp.sum(p, axis=-1)
      if with_out:
        vc = jax.lax.dynamic_slice_in_dim(vf, j * block_k, block_k, 1)
        pv = jnp.einsum(
            "bkgqs,bskd->bkgqd", p, vc.astype(jnp.float32),
            precision=_HIGHEST,
        )
        acc = acc * corr[..., None] + pv
      return m_new, l, acc

    shape = (b, kv_heads, g, block_q)
    init = (
        jnp.full(shape, DEFAULT_MASK_VALUE, jnp.float32),
        jnp.zeros(shape, jnp.float32),
        jnp.zeros(shape + ((d,) if with_out else (0,)), jnp.float32),
    )
    m, l, acc = jax.lax.fori_loop(0, n_visit, body, init)
    has = l > 0
    lse = jnp.where(has, m + jnp.log(jnp.where(has, l, 1.0)), -jnp.inf)
    if with_out:
      acc = jnp.where(
          has[..., None], acc / jnp.where(has, l, 1.0)[..., None], 0.0
      )
    return acc, lse

  acc, lse = jax.lax.map(
      one_q_chunk, (qf, jnp.arange(nq, dtype=jnp.int32))
  )  # [Cq, B, K, G, bq, (D)], [Cq, B, K, G, bq]
  lse = jnp.moveaxis(lse, 0, 3).reshape(b, n, nq * block_q)[:, :, :t]
  lse = jnp.swapaxes(lse, 1, 2)  # [B, T, N]
  if not with_out:
    return None, lse
  out = jnp.moveaxis(acc, 0, 3).reshape(b, n, nq * block_q, d)[:, :, :t]
  return jnp.swapaxes(out, 1, 2).astype(q.dtype), lse


def _dense(q, k, v, q_offset, block_q, block_k):
  _check_qkv(q, k, k if v is None else v, prefill=False)
  if isinstance(q_offset, bool) or not isinstance(q_offset, int):
    raise TypeError(f"q_offset must be a static int, got {q_offset!r}")
  if q_offset < 0:
    raise ValueError(f"q_offset must be >= 0, got {q_offset}")
  for name, val in (("block_q", block_q), ("block_k", block_k)):
    if val < 1:
      raise ValueError(f"{name} must be >= 1, got {val}")
  return _dense_jit(
      q, k, k if v is None else v, q_offset=q_offset,
      block_q=min(block_q, q.shape[1]), block_k=min(block_k, k.shape[1]),
      with_out=v is not None,
  )


@jaxtyped(typechecker=beartype)
def dense_attention_xla(
    q: Float[Array, "B T N D"],
    k: Float[Array, "B S K D"],
    v: Float[Array, "B S K D"],
    *,
    q_offset: int = 0,
    block_q: int = 256,
    block_k: int = 512,
) -> Float[Array, "B T N D"]:
  """Causal dense attention, flash-style (online softmax over key chunks).

  Query t sits at position q_offset + t and reads keys j <= q_offset + t.
  Query chunks are processed one after another; each visits only the key
  chunks left of its last row, so the work is the causal half and memory is
  O(block_q x block_k) per head. Forward only (the key loop has a dynamic
  trip count).

  Args:
    q: [B, T, N, D] queries.
    k: [B, S, K, D] keys; query head n reads KV head n // (N // K).
    v: [B, S, K, D] values.
    q_offset: static absolute position of q[:, 0] (T < S for decode and
      chunked prefill).
    block_q: query rows per chunk.
    block_k: keys per inner step.

  Returns:
    [B, T, N, D] in q's dtype.

  Raises:
    ValueError: on inconsistent shapes or a negative q_offset.
  """
  return _dense(q, k, v, q_offset, block_q, block_k)[0]


@jaxtyped(typechecker=beartype)
def dense_logsumexp_xla(
    q: Float[Array, "B T N D"],
    k: Float[Array, "B S K D"],
    *,
    q_offset: int = 0,
    block_q: int = 256,
    block_k: int = 512,
) -> Float[Array, "B T N"]:
  """Log-sum-exp of causal scaled logits per row (chunked, f32).

  Args:
    q: [B, T, N, D] queries.
    k: [B, S, K, D] keys.
    q_offset: static absolute position of q[:, 0].
    block_q: query rows per chunk.
    block_k: keys per inner step.

  Returns:
    [B, T, N] f32.
  """
  return _dense(q, k, None, q_offset, block_q, block_k)[1]


def compact_layout(layout: Layout) -> Layout:
  """Trims padded index arrays to the largest count actually used (host side).

  The XLA path's work is proportional to the padded width (NS, NV, KB), so a
  benchmark or demo may call this between index building and attention. It
  reads counts on the host: not for use under jit.

  Args:
    layout: any sparse layout (an AShapeLayout is returned unchanged).

  Returns:
    An equivalent layout whose padded widths equal the maximum counts (>= 1).
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
