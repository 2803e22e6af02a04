"""Gather-based sparse attention in plain JAX: the driver the ops' `xla.py`
implementations share (any device).

For each 64-row query block, an op's key set function names at most L key
positions (its windows, columns or blocks) and which (row, key) pairs are
computed; the driver gathers those K/V rows, computes [bs, L] logits in
float32 with the causal and count masks, the softmax and the weighted sum,
vmapped over batch, KV heads, the query heads of a GQA group and row blocks.
Row blocks are processed in chunks one after another (`lax.map`), so peak
memory is O(T x L / chunks), never O(T x S). K/V are never repeated: query
head n reads KV head n // G.
"""

import functools
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np

# Elements (f32) one chunk of row blocks may hold in logits plus gathered K/V;
# 2**24 floats = 64 MiB.
CHUNK_ELEMENTS = 1 << 24
HIGHEST = jax.lax.Precision.HIGHEST
# A finite mask value (not -inf) so that fully masked rows never produce NaN.
MASK_VALUE = -0.7 * float(3.4028235e38)

# fn(m, row_block_arrays..., head_arrays...) -> (pos [L] int32, ok [bs, L]
# bool) for the rows m * bs + arange(bs) of one (batch, head).
KeySet = Callable[..., tuple[jax.Array, jax.Array]]


def check_qkv(q, k, v, *, prefill: bool) -> tuple[int, int]:
  """Validates q [B, T, N, D] and k/v [B, S, K, D]; returns (K, G).

  Raises:
    ValueError: on wrong ranks, mismatched dims, N % K != 0, or (with
      `prefill`) T != S.
  """
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


def check_layout_arrays(name: str, arrays: dict, b: int, n: int,
                        tb: int) -> None:
  """Raises ValueError unless every array has leading dims [B, N, Tb]."""
  for field, arr in arrays.items():
    if arr.ndim < 3 or arr.shape[:3] != (b, n, tb):
      raise ValueError(
          f"{name}.{field} has shape {arr.shape}; expected leading dims"
          f" [B, N, Tb] = {(b, n, tb)} (Tb = ceil(T / block_size))"
      )


def static_max(x, arg: str) -> int:
  """max(x) as a Python int (0 if empty); x must be concrete.

  Raises:
    ValueError: if x is traced (the bound sets array shapes).
  """
  try:
    return int(np.max(np.asarray(x))) if np.size(x) else 0
  except (jax.errors.ConcretizationTypeError,
          jax.errors.TracerArrayConversionError) as e:
    raise ValueError(
        f"{arg} must be given as a static int when the A-shape layout is"
        " traced (e.g. under jit): the local window width sets array shapes"
    ) from e


def rows_per_chunk(n_row_blocks, heads_times_batch, keys, head_dim, bs):
  """How many row blocks one chunk holds so it stays under CHUNK_ELEMENTS."""
  per_row_block = heads_times_batch * keys * (bs + 2 * head_dim)
  return int(max(1, min(n_row_blocks, CHUNK_ELEMENTS // per_row_block)))


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
      "qd,ld->ql", qb, kg.astype(jnp.float32), precision=HIGHEST
  )  # [bs, L]
  s = jnp.where(valid, s, MASK_VALUE)
  m = jnp.max(s, axis=-1)  # [bs]
  p = jnp.where(valid, jnp.exp(s - m[:, None]), 0.0)  # [bs, L]
  l = jnp.sum(p, axis=-1)  # [bs]
  has_keys = l != 0  # rows without keys; a NaN sum stays NaN
  lse = jnp.where(has_keys, m + jnp.log(jnp.where(has_keys, l, 1.0)), -jnp.inf)
  if vg is None:
    return None, lse
  o = jnp.einsum(
      "ql,ld->qd", p, vg.astype(jnp.float32), precision=HIGHEST
  )  # [bs, D]
  o = jnp.where(has_keys[:, None], o / jnp.where(has_keys, l, 1.0)[:, None], 0)
  return o, lse


def _gathered(q, k, v, row_data, head_data, keyset: KeySet, n_keys: int,
              bs: int):
  """Chunks of row blocks, vmapped over B, K, G and rows.

  Args:
    q: [B, T, N, D]; k, v: [B, S, K, D] (v may be None: lse only).
    row_data: tuple of per-row-block arrays [B, N, Tb, ...].
    head_data: tuple of per-head arrays [N].
    keyset: the op's key set of one row block (see `KeySet`).
    n_keys: static L.
    bs: row block size.

  Returns:
    (out [B, T, N, D] f32 or None, lse [B, T, N] f32).
  """
  b, t, n, d = q.shape
  s_len, kv_heads = k.shape[1], k.shape[2]
  g = n // kv_heads
  tb = -(-t // bs)
  rows = rows_per_chunk(tb, b * n, n_keys, d, bs)
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


@functools.partial(
    jax.jit, static_argnames=("make_keyset", "params", "n_keys")
)
def gathered_attention(q, k, v, row_data, head_data, *,
                       make_keyset: Callable[..., KeySet], params: tuple,
                       n_keys: int):
  """Sparse attention (and its log-sum-exp) over an op's key set.

  Args:
    q: [B, T, N, D] queries; k: [B, S, K, D] keys.
    v: [B, S, K, D] values, or None for the log-sum-exp only.
    row_data: tuple of per-row-block layout arrays [B, N, Tb, ...].
    head_data: tuple of per-head layout arrays [N].
    make_keyset: static `make_keyset(*params) -> KeySet`; params[0] is the
      row block size.
    params: static parameters of the key set.
    n_keys: static L, the key positions one row block gathers.

  Returns:
    (out [B, T, N, D] in q's dtype or None, lse [B, T, N] f32; rows and
    inactive heads without keys get out 0 and lse -inf).
  """
  out, lse = _gathered(q, k, v, row_data, head_data, make_keyset(*params),
                       n_keys, params[0])
  return (None if out is None else out.astype(q.dtype)), lse
