"""Shared pieces of the Pallas-Triton attention kernels: checks, loads, softmax.

Everything here runs inside a Triton-lowered kernel (or its interpret-mode
emulation) except the `check_*` helpers, which validate wrapper arguments.

Conventions used by every kernel in this package:
- q is loaded once per program, pre-multiplied by `sm_scale * log2(e)` and
  cast back to the input dtype, so the online softmax runs in base 2 (`exp2`),
  as in FlashAttention-2 (Dao 2023, section 3.1.1) and MInference's kernels.
- Softmax state is f32: running max `m` [rows], running sum `l` [rows] and the
  unnormalised accumulator `acc` [rows, Dp]. Masked scores take the finite
  `MASK_VALUE` and their probabilities are forced to 0, so rows that see no key
  finish with l == 0 and are written as zeros (never NaN).
- Head dims that are not a power of two (e.g. 96) are padded to `Dp` inside
  the kernel with masked loads (`other=0`) and masked stores; nothing is
  padded in memory.
- jax 0.11.2 does not mask blocks that overhang an array on the Triton path,
  so every load or store that may cross the sequence end is masked here.
"""

import dataclasses
import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax import lax
from jax.experimental import pallas as pl
from jax.experimental.pallas import triton as plt

LOG2E = math.log2(math.e)
# Finite, so (MASK_VALUE - m) never overflows and fully masked rows stay finite.
MASK_VALUE = -0.7 * float(jnp.finfo(jnp.float32).max)
SUPPORTED_DTYPES = (jnp.dtype(jnp.float32), jnp.dtype(jnp.bfloat16),
                    jnp.dtype(jnp.float16))
MAX_HEAD_DIM = 256


def is_power_of_two(x: int) -> bool:
  return x > 0 and (x & (x - 1)) == 0


def padded_head_dim(d: int) -> int:
  """The power-of-two head dim a kernel computes with (>= 16 for tl.dot)."""
  return max(16, 1 << (d - 1).bit_length())


class QKVDims(NamedTuple):
  """Static sizes of a q/k/v triple: B, T, N, K (KV heads), G = N // K, D."""

  b: int
  t: int
  n: int
  kv: int
  g: int
  d: int


def check_qkv(q: jax.Array, k: jax.Array, v: jax.Array, op: str) -> QKVDims:
  """Validates q [B, T, N, D] and k/v [B, S, K, D] for a causal prefill.

  Args:
    q: queries.
    k: keys.
    v: values.
    op: the calling op's name, used in error messages.

  Returns:
    The static dims.

  Raises:
    ValueError: on wrong ranks, T != S, N % K != 0, mismatched dims or a head
      dim above 256.
    TypeError: on unsupported or mismatched dtypes.
  """
  if q.ndim != 4 or k.ndim != 4 or v.ndim != 4:
    raise ValueError(
        f"{op}: q, k, v must be 4-D [B, T, N, D] / [B, S, K, D]; got"
        f" q{q.shape}, k{k.shape}, v{v.shape}"
    )
  if k.shape != v.shape:
    raise ValueError(f"{op}: k{k.shape} and v{v.shape} must match")
  b, t, n, d = q.shape
  if k.shape[0] != b or k.shape[3] != d:
    raise ValueError(
        f"{op}: q{q.shape} and k{k.shape} disagree on batch or head dim"
    )
  if k.shape[1] != t:
    raise ValueError(
        f"{op}: the kernels compute a full causal prefill (T == S); got"
        f" q{q.shape}, k{k.shape}"
    )
  kv = k.shape[2]
  if kv == 0 or n % kv:
    raise ValueError(
        f"{op}: query heads N={n} (q{q.shape}) must be a multiple of the KV"
        f" heads K={kv} (k{k.shape})"
    )
  if d > MAX_HEAD_DIM or d < 1:
    raise ValueError(f"{op}: head dim D={d} must be in [1, {MAX_HEAD_DIM}]")
  if q.dtype not in SUPPORTED_DTYPES:
    raise TypeError(
        f"{op}: q.dtype={q.dtype} not supported; use float32, bfloat16 or"
        " float16"
    )
  if k.dtype != q.dtype or v.dtype != q.dtype:
    raise TypeError(
        f"{op}: q, k, v must share a dtype; got {q.dtype}, {k.dtype},"
        f" {v.dtype}"
    )
  return QKVDims(b, t, n, kv, n // kv, d)


def check_index_array(
    name: str, arr: jax.Array, leading: tuple[int, ...], ndim: int
) -> None:
  """Checks an int32 layout array's rank and leading dims.

  Raises:
    TypeError: if the array is not int32.
    ValueError: if its rank or leading dims are wrong.
  """
  if arr.dtype != jnp.int32:
    raise TypeError(f"{name} must be int32, got {arr.dtype}")
  if arr.ndim != ndim or tuple(arr.shape[: len(leading)]) != leading:
    raise ValueError(
        f"{name} has shape {arr.shape}; expected {ndim}-D with leading dims"
        f" {leading}"
    )


def dot_precision(dtype) -> lax.Precision:
  """f32 inputs use exact (IEEE) dots; 16-bit inputs the tensor-core default."""
  if jnp.dtype(dtype) == jnp.float32:
    return lax.Precision.HIGHEST
  return lax.Precision.DEFAULT


def compiler_params(num_warps: int, num_stages: int) -> plt.CompilerParams:
  return plt.CompilerParams(num_warps=num_warps, num_stages=num_stages)


def idiv(x, y: int):
  """Integer division of a non-negative traced int32 by a static int.

  `//` on traced scalars does not lower on the Triton path in every case;
  `lax.div` (round toward zero) does, and operands here are >= 0.
  """
  return lax.div(x, jnp.int32(y))


def cdiv(x, y: int):
  """Ceil division of a non-negative traced int32 by a static int."""
  return lax.div(x + jnp.int32(y - 1), jnp.int32(y))


def head_mask(rows: int, d: int, d_pad: int) -> jax.Array | None:
  """[rows, Dp] mask of the real head-dim columns, or None if D == Dp."""
  if d == d_pad:
    return None
  cols = lax.broadcasted_iota(jnp.int32, (rows, d_pad), 1)
  return cols < d


def _and(a, b):
  if a is None:
    return b
  if b is None:
    return a
  return a & b


def load_rows(
    ref, start, size: int, d: int, d_pad: int, row_mask: jax.Array | None
) -> jax.Array:
  """Loads `size` contiguous rows [start, start + size) of a [S, D] ref.

  Args:
    ref: a [S, D] ref (K, V or a q block).
    start: first row (static int or traced int32 scalar).
    size: number of rows (static power of two).
    d: real head dim.
    d_pad: padded head dim (power of two).
    row_mask: [size] bool of rows that may be read, or None for all.

  Returns:
    [size, Dp] in the ref's dtype; masked-out entries are 0.
  """
  mask = head_mask(size, d, d_pad)
  if row_mask is not None:
    mask = _and(mask, jnp.broadcast_to(row_mask[:, None], (size, d_pad)))
  cols = pl.ds(0, d_pad)
  if mask is None:
    return ref[pl.ds(start, size), cols]
  return plt.load(ref.at[pl.ds(start, size), cols], mask=mask, other=0)


def gather_rows(ref, rows: jax.Array, d: int, d_pad: int) -> jax.Array:
  """Gathers rows `rows` [size] (all in range) of a [S, D] ref -> [size, Dp]."""
  size = rows.shape[0]
  cols = lax.broadcasted_iota(jnp.int32, (1, d_pad), 1)
  mask = head_mask(size, d, d_pad)
  if mask is None:
    return ref[rows[:, None], cols]
  return plt.load(ref.at[rows[:, None], cols], mask=mask, other=0)


def load_q(
    q_ref, rows: int, d: int, d_pad: int, scale: float,
    row_mask: jax.Array | None,
) -> jax.Array:
  """Loads the q block once, scaled by scale * log2(e), in the input dtype."""
  q = load_rows(q_ref, 0, rows, d, d_pad, row_mask)  # [rows, Dp]
  return (q.astype(jnp.float32) * (scale * LOG2E)).astype(q.dtype)


def store_out(
    o_ref, out: jax.Array, d: int, row_mask: jax.Array | None
) -> None:
  """Stores out [rows, Dp] into a [rows, D] o block (masked tail and pad)."""
  rows, d_pad = out.shape
  out = out.astype(o_ref.dtype)
  mask = head_mask(rows, d, d_pad)
  if row_mask is not None:
    mask = _and(mask, jnp.broadcast_to(row_mask[:, None], (rows, d_pad)))
  idx = (pl.ds(0, rows), pl.ds(0, d_pad))
  if mask is None:
    o_ref[idx] = out
  else:
    plt.store(o_ref.at[idx], out, mask=mask)


class SoftmaxState(NamedTuple):
  """Online-softmax carry: m [rows], l [rows], acc [rows, Dp], all f32."""

  m: jax.Array
  l: jax.Array
  acc: jax.Array


def init_state(rows: int, d_pad: int) -> SoftmaxState:
  return SoftmaxState(
      m=jnp.full((rows,), MASK_VALUE, jnp.float32),
      l=jnp.zeros((rows,), jnp.float32),
      acc=jnp.zeros((rows, d_pad), jnp.float32),
  )


def attend(
    state: SoftmaxState,
    q: jax.Array,
    k: jax.Array,
    v: jax.Array,
    mask: jax.Array | None,
    precision: lax.Precision,
) -> SoftmaxState:
  """One online-softmax step (FlashAttention-2, section 3.1.1) in base 2.

  Args:
    state: the running softmax state.
    q: [rows, Dp] queries, pre-scaled by sm_scale * log2(e).
    k: [cols, Dp] keys.
    v: [cols, Dp] values.
    mask: [rows, cols] bool of computed pairs, or None when all are.
    precision: dot precision (HIGHEST for f32 inputs).

  Returns:
    The updated state.
  """
  s = lax.dot_general(
      q, k, (((1,), (1,)), ((), ())), precision=precision,
      preferred_element_type=jnp.float32,
  )  # [rows, cols]
  if mask is not None:
    s = jnp.where(mask, s, MASK_VALUE)
  m_new = jnp.maximum(state.m, jnp.max(s, axis=1))  # [rows]
  alpha = jnp.exp2(state.m - m_new)  # [rows]
  p = jnp.exp2(s - m_new[:, None])  # [rows, cols]
  if mask is not None:
    p = jnp.where(mask, p, 0.0)
  l_new = state.l * alpha + jnp.sum(p, axis=1)
  pv = lax.dot_general(
      p.astype(v.dtype), v, (((1,), (0,)), ((), ())), precision=precision,
      preferred_element_type=jnp.float32,
  )  # [rows, Dp]
  acc = state.acc * alpha[:, None] + pv
  return SoftmaxState(m_new, l_new, acc)


def attend_tile(
    state: SoftmaxState, q: jax.Array, k_ref, v_ref, start, size: int, *,
    d: int, d_pad: int, precision: lax.Precision,
    causal_rows: jax.Array | None = None, t: int | None = None,
) -> SoftmaxState:
  """One online-softmax step over the contiguous keys [start, start + size).

  Without `causal_rows` the tile is mask-free (every key is before every
  row and inside the sequence). With `causal_rows` [rows] (absolute query
  positions) and the sequence length `t`, keys after a row or at/after `t`
  are masked (and not loaded).
  """
  if causal_rows is None:
    k = load_rows(k_ref, start, size, d, d_pad, None)
    v = load_rows(v_ref, start, size, d, d_pad, None)
    return attend(state, q, k, v, None, precision)
  cols = start + iota(size)  # [size]
  col_ok = cols < t
  k = load_rows(k_ref, start, size, d, d_pad, col_ok)
  v = load_rows(v_ref, start, size, d, d_pad, col_ok)
  mask = cols[None, :] <= causal_rows[:, None]  # [rows, size]
  return attend(state, q, k, v, mask, precision)


def finish(state: SoftmaxState) -> jax.Array:
  """acc / l in f32; rows that saw no key (l == 0) become 0."""
  has_keys = state.l > 0.0
  l_safe = jnp.where(has_keys, state.l, 1.0)
  return jnp.where(has_keys[:, None], state.acc / l_safe[:, None], 0.0)


def iota(n: int) -> jax.Array:
  return lax.broadcasted_iota(jnp.int32, (n,), 0)


def check_block(name: str, value: int, minimum: int = 16) -> None:
  """A tile size: an int, a power of two, at least `minimum` (tl.dot needs 16).

  Raises:
    TypeError: if not an int.
    ValueError: if not a power of two >= minimum.
  """
  if isinstance(value, bool) or not isinstance(value, int):
    raise TypeError(f"{name} must be an int, got {type(value).__name__}")
  if value < minimum or not is_power_of_two(value):
    raise ValueError(f"{name}={value} must be a power of two >= {minimum}")


def check_launch(num_warps: int, num_stages: int) -> None:
  """Triton launch knobs: num_warps in {1, 2, 4, 8, 16}, num_stages >= 1.

  Raises:
    ValueError: on values Triton cannot use.
  """
  if num_warps not in (1, 2, 4, 8, 16):
    raise ValueError(f"num_warps={num_warps} must be one of 1, 2, 4, 8, 16")
  if isinstance(num_stages, bool) or not isinstance(num_stages, int):
    raise ValueError(f"num_stages must be an int, got {num_stages!r}")
  if num_stages < 1:
    raise ValueError(f"num_stages={num_stages} must be >= 1")


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class TileConfig:
  """Tile sizes and Triton launch knobs of a dense-tiled kernel.

  The per-op `Config`s of `flash` and `a_shape` subclass it with their own
  defaults and `get_default`.

  Attributes:
    block_q: query rows per program (power of two >= 16).
    block_k: key rows per inner step (power of two >= 16).
    num_warps: Triton warps per program.
    num_stages: Triton software-pipelining depth of the key loops.
  """

  block_q: int = 64
  block_k: int = 64
  num_warps: int = 4
  num_stages: int = 3

  def __post_init__(self):
    check_block("block_q", self.block_q)
    check_block("block_k", self.block_k)
    check_launch(self.num_warps, self.num_stages)


def pad_short_kv(
    k: jax.Array, v: jax.Array, min_len: int
) -> tuple[jax.Array, jax.Array]:
  """Zero-pads K/V [B, S, K, D] along S to `min_len` when S < min_len.

  Unmasked tile loads are only emitted for tiles inside [0, S), but they are
  traced with a static tile size, which interpret mode cannot slice out of a
  shorter array. Sequences shorter than one tile are padded (cheap: < 1 tile);
  the padded keys are always masked out.
  """
  s = k.shape[1]
  if s >= min_len:
    return k, v
  pad = ((0, 0), (0, min_len - s), (0, 0), (0, 0))
  return jnp.pad(k, pad), jnp.pad(v, pad)


def q_block_spec(block_q: int, n_q_blocks: int, d: int) -> pl.BlockSpec:
  """[B, T, N, D] query/output tile for grid (i, h, b), heavy blocks first.

  Program i handles query block n_q_blocks - 1 - i, so the causal rows with
  the most keys start first.
  """
  return pl.BlockSpec(
      (None, block_q, None, d),
      lambda i, h, bb: (bb, n_q_blocks - 1 - i, h, 0),
  )


def kv_head_spec(s: int, d: int, group: int) -> pl.BlockSpec:
  """The whole [S, D] key/value sequence of KV head h // group (GQA).

  On the Triton lowering a ref is a pointer, so spanning the sequence is free;
  kernels walk it with dynamic slices and gathers.
  """
  return pl.BlockSpec(
      (None, s, None, d), lambda i, h, bb: (bb, 0, lax.div(h, group), 0)
  )
