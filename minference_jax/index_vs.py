"""Vertical-Slash online index building: MInference 1.0 estimate and merge."""

# Two jitted stages (MInference §3.2, App. C.4.2; reference implementation
# `vertical_and_slash_kernel` and `convert_vertical_slash_indexes`):
# 1. `vertical_slash_indices(q, k, ...)`: softmax of the last `last_q` queries
#    against all keys; column sums rank the vertical lines, diagonal sums the
#    slash lines; keep the top budgets per head.
# 2. `vertical_slash_layout(indices, T)`: per 64-row query block, merge the
#    slash lines into 64-wide key windows and keep the vertical lines that no
#    window covers as single key columns (the kernels' index layout).
#    `vertical_slash_chain_layout(indices, T)` stores the same windows in
#    O(T) per head (the merge's successor table and its runs) for the chain
#    kernel.
# The input checks and the sort-free top-k shared with `index_bs` live here.

import dataclasses
import functools
import math
from collections.abc import Sequence

import jax
import jax.numpy as jnp
from beartype import beartype
from jaxtyping import Array, Float, Int, jaxtyped

from minference_jax.patterns import (
    VS_FORCED_SLASH_OFFSETS,
    VS_LAST_Q,
    VS_MIN_SLASH,
    VS_MIN_VERTICAL,
)
from minference_jax.types import DEFAULT_MASK_VALUE
from pallas_kernels.layouts import (
    BLOCK_SIZE,
    VerticalSlashChainLayout,
    VerticalSlashLayout,
)

_HIGHEST = jax.lax.Precision.HIGHEST


# ----------------------------------------------------------- input checks
def check_prefill_qk(q, k) -> tuple[int, int, int, int, int]:
  """Validates a full-prefill q/k pair; returns (B, T, N, D, K).

  Raises:
    TypeError: q or k is not a floating-point array.
    ValueError: wrong ranks, batch or head-dim mismatch, N % K != 0, T != S.
  """
  for name, x, dims in (("q", q, "[B, T, N, D]"), ("k", k, "[B, S, K, D]")):
    if not hasattr(x, "ndim") or x.ndim != 4:
      shape = getattr(x, "shape", type(x).__name__)
      raise ValueError(f"{name} must be 4-D {dims}, got shape {shape}")
    if not jnp.issubdtype(x.dtype, jnp.floating):
      raise TypeError(f"{name} must be floating point, got {x.dtype}")
  b, t, n, d = q.shape
  if k.shape[0] != b:
    raise ValueError(f"batch mismatch: q{q.shape} vs k{k.shape}")
  if k.shape[3] != d:
    raise ValueError(f"head dim mismatch: q{q.shape} vs k{k.shape}")
  kv_heads = k.shape[2]
  if kv_heads == 0 or n % kv_heads:
    raise ValueError(
        f"query heads N={n} (q{q.shape}) must be a multiple of KV heads"
        f" K={kv_heads} (k{k.shape})"
    )
  if k.shape[1] != t:
    raise ValueError(
        f"index building needs a full prefill (T == S); got q{q.shape},"
        f" k{k.shape}"
    )
  if t == 0:
    raise ValueError(f"empty sequence: q{q.shape}")
  return b, t, n, d, kv_heads


def _check_int(name: str, value, minimum: int) -> int:
  if isinstance(value, bool) or not isinstance(value, int):
    raise TypeError(f"{name} must be an int, got {type(value).__name__}")
  if value < minimum:
    raise ValueError(f"{name} must be >= {minimum}, got {value}")
  return value


def per_head_ints(name: str, value, n_heads: int) -> tuple[int, ...]:
  """An int or a per-query-head sequence of ints -> a tuple of N ints >= 0.

  Raises:
    TypeError: a value is not an int (bools are rejected).
    ValueError: a negative value, or a sequence whose length is not N.
  """
  if isinstance(value, (list, tuple)):
    if len(value) != n_heads:
      raise ValueError(
          f"{name} has {len(value)} per-head values; expected one per query"
          f" head (N={n_heads})"
      )
    return tuple(
        _check_int(f"{name}[{i}]", x, 0) for i, x in enumerate(value)
    )
  return (_check_int(name, value, 0),) * n_heads


def per_head_active(active, n_heads: int) -> tuple[bool, ...]:
  """None (all heads) or a per-query-head sequence of bools -> tuple of N."""
  if active is None:
    return (True,) * n_heads
  if not isinstance(active, (list, tuple)):
    raise TypeError(
        f"active must be None or a tuple of bools, got {type(active).__name__}"
    )
  if len(active) != n_heads:
    raise ValueError(
        f"active has {len(active)} entries; expected one per query head"
        f" (N={n_heads})"
    )
  if not all(isinstance(a, bool) for a in active):
    raise TypeError(f"active must hold Python bools, got {active}")
  return tuple(active)


# ---------------------------------------------------------------- indices
@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class VerticalSlashIndices:
  """Per (batch, query head): the selected vertical and slash lines.

  Heads with different budgets share one structure padded to the layer's
  largest budget; entries past a count are padding (vertical: S - 1, slash:
  0, chosen so the arrays stay monotone) and must not be read as data.

  Fields:
    vertical:       Int[B, N, NV], key columns in [0, S), ascending.
    vertical_count: Int[B, N], values in [0, NV].
    slash:          Int[B, N, NS], diagonal offsets (row - column) in
                    [0, S), strictly descending.
    slash_count:    Int[B, N], values in [0, NS].
  """

  vertical: Int[Array, "B N NV"]
  vertical_count: Int[Array, "B N"]
  slash: Int[Array, "B N NS"]
  slash_count: Int[Array, "B N"]


def _diagonal_sums(probs: jax.Array) -> jax.Array:
  """Sums a [..., L, S] matrix of the last L rows along its diagonals.

  Row i sits at absolute position S - L + i. Entry o of the result is
  sum_i probs[i, S - L + i - o] (terms with a negative column are 0): the
  mass on the slash line with offset o = row - column.

  A skew by reshape instead of a loop: reverse the columns, pad each row with
  L zeros, flatten and re-read with a row stride one shorter, which shifts row
  i right by i; column L - 1 + o then holds the offset-o element of every row.
  Reverse, pad, reshapes and slices are index arithmetic that XLA fuses into
  the reduction, so an elementwise `probs` is not materialised.
  """
  *lead, l, s = probs.shape
  rev = probs[..., ::-1]  # [..., L, S]; rev[i, r] = probs[i, S - 1 - r]
  pad = [(0, 0)] * len(lead) + [(0, 0), (0, l)]
  padded = jnp.pad(rev, pad)  # [..., L, S + L]
  flat = padded.reshape(*lead, l * (s + l))[..., : l * (s + l - 1)]
  skew = flat.reshape(*lead, l, s + l - 1)  # skew[i, c] = padded[i, c - i]
  return skew[..., l - 1 : l - 1 + s].sum(axis=-2)  # [..., S]


def _masked_f32(logits: jax.Array, visible: jax.Array) -> jax.Array:
  return jnp.where(visible, logits.astype(jnp.float32), DEFAULT_MASK_VALUE)


def _softmax_stats(logits, visible) -> tuple[jax.Array, jax.Array]:
  """Row max m and sum z = sum_j exp(l_j - m) of [..., L, S] logits.

  One variadic reduction carrying (max, rescaled sum) pairs (the online
  softmax of Milakov & Gimelshein 2018), so the logits are read once instead
  of twice. `visible` [L, S] is the causal mask. Returns f32 [..., L].
  """
  logits = _masked_f32(logits, visible)

  def combine(a, b):
    (m_a, z_a), (m_b, z_b) = a, b
    m = jnp.maximum(m_a, m_b)
    return m, z_a * jnp.exp(m_a - m) + z_b * jnp.exp(m_b - m)

  init = (jnp.float32(DEFAULT_MASK_VALUE), jnp.float32(0.0))
  return jax.lax.reduce(
      (logits, jnp.ones_like(logits)), init, combine, (logits.ndim - 1,)
  )


def _line_scores(logits, visible, m, z):
  """Vertical (column) and slash (diagonal) sums of softmax(logits).

  Args:
    logits: [..., L, S] logits of the last L query rows.
    visible: [L, S] causal mask.
    m: [..., L] row maxima; z: [..., L] row sums of exp(logits - m).

  Returns:
    vertical [..., S] (column sums) and slash [..., S] (`_diagonal_sums`),
    f32. The probabilities are an elementwise expression of the logits that
    both reductions recompute, so they are never stored.
  """
  probs = jnp.exp(_masked_f32(logits, visible) - m[..., None]) / z[..., None]
  return jnp.sum(probs, axis=-2), _diagonal_sums(probs)


def _sortable_key(x: jax.Array) -> jax.Array:
  """f32 -> uint32 with the same order (-inf < ... < +inf), NaN-free input."""
  bits = jax.lax.bitcast_convert_type(x.astype(jnp.float32), jnp.uint32)
  negative = (bits >> 31) == 1
  return jnp.where(negative, ~bits, bits | jnp.uint32(1 << 31))


def _radix_digit(keys, counts, lo, shift: int, count_ge):
  """One 4-bit radix pass: the largest candidate lo + d << shift (d <= 15)
  with at least `counts` keys >= it. count_ge(keys, cand [..., 15]) counts
  the keys >= each candidate -> [..., 15] int32."""
  digits = jnp.arange(1, 16, dtype=jnp.uint32)  # [15]
  cand = lo[..., None] + (digits << shift)  # [..., 15], no overflow
  n_ge = count_ge(keys, cand)  # [..., 15]
  return lo + (jnp.sum(n_ge >= counts[..., None], axis=-1).astype(
      jnp.uint32) << shift)


def _count_ge_broadcast(keys, cand):
  """One [..., 15, S] compare-and-reduce (small HLO, fast to compile)."""
  return jnp.sum(keys[..., None, :] >= cand[..., None], axis=-1,
                 dtype=jnp.int32)


_COUNT_CHUNK = 2048  # keys per partial count of `_count_ge_siblings`


def _count_ge_siblings(keys, cand):
  """15 sibling row reductions of the same keys, which XLA:GPU fuses into
  one multi-output pass (2x faster than the broadcast form on an H200 at
  1M tokens, experiments/results/vs_estimate_variants_h200.json) but which
  compile slowly on CPU. Long rows are counted in chunks of _COUNT_CHUNK
  keys (padded with 0, which no candidate >= 1 counts), then the chunks
  summed: [B * N] rows alone leave most of the GPU idle."""
  s = keys.shape[-1]
  if s > 2 * _COUNT_CHUNK:
    chunks = -(-s // _COUNT_CHUNK)
    pad = [(0, 0)] * (keys.ndim - 1) + [(0, chunks * _COUNT_CHUNK - s)]
    keys = jnp.pad(keys, pad).reshape(*keys.shape[:-1], chunks,
                                      _COUNT_CHUNK)  # [..., C, chunk]
    cand = cand[..., None, :]  # [..., 1, 15]
  counts = jnp.stack([
      jnp.sum(keys >= cand[..., i : i + 1], axis=-1, dtype=jnp.int32)
      for i in range(cand.shape[-1])
  ], axis=-1)
  return jnp.sum(counts, axis=-2) if s > 2 * _COUNT_CHUNK else counts


def _kth_largest_with(keys, counts, count_ge):
  lo = jnp.zeros(keys.shape[:-1], jnp.uint32)  # count(keys >= lo) >= counts
  for shift in range(28, -1, -4):  # 8 static passes
    lo = _radix_digit(keys, counts, lo, shift, count_ge)
  return lo


def _kth_largest(keys: jax.Array, counts: jax.Array) -> jax.Array:
  """The counts-th largest value of keys [..., S] (uint32), per row.

  A radix search from the top: 8 passes fix 4 bits each; a pass counts, for
  15 candidate thresholds at once, how many keys are >= each and keeps the
  largest candidate with at least `counts` keys above it. Reads the keys 8
  times, no sort. counts [...] int32 in [1, S]. The counting form is chosen
  per platform (the same result): sibling reductions on CUDA, one
  broadcast reduction elsewhere.
  """
  return jax.lax.platform_dependent(
      keys, counts,
      cuda=functools.partial(_kth_largest_with, count_ge=_count_ge_siblings),
      default=functools.partial(_kth_largest_with,
                                count_ge=_count_ge_broadcast),
  )


def _block_size_for(s: int, k_max: int) -> int:
  """Block size of `top_sorted_positions`' candidate step, 0 for none.

  Selecting among S keys costs ~S per radix pass; through blocks of B it is
  S / B block maxima plus k_max * B candidates, least near B = sqrt(S / k):
  the power of two closest to that, used when it is at least 8 (S >= ~64 k;
  below, the extra launches cost more than the passes they save)."""
  if k_max < 1 or s < 64 * k_max:
    return 0
  return 1 << round(math.log2(math.sqrt(s / k_max)))


def _compact(keep, rank_of_kept, counts, k_max: int, descending: bool,
             pad_value: int):
  """Writes the positions of the kept entries to their slots.

  Args:
    keep: [R, S] bool, at most counts[r] entries per row.
    rank_of_kept: [R, S] int32, the 0-based rank by position of each kept
      entry among its row's kept ones.
    counts: [R] kept entries per row.
    k_max: static output width.
    descending: slot r holds the (counts - 1 - r)-th kept position.
    pad_value: the value of slots >= counts.

  Returns:
    [R, k_max] int32. A scatter whose unkept updates fall out of bounds and
    are dropped: one pass, no search.
  """
  r, s = keep.shape
  slot = rank_of_kept
  if descending:
    slot = counts[:, None] - 1 - slot
  slot = jnp.where(keep, slot, k_max)  # [R, S]; k_max: dropped
  rows = jax.lax.broadcasted_iota(jnp.int32, (r, s), 0)
  pos = jax.lax.broadcasted_iota(jnp.int32, (r, s), 1)
  out = jnp.full((r, k_max), pad_value, jnp.int32)
  return out.at[rows, slot].set(pos, mode="drop")


def _kept_ranks(keys, t, counts, k_max: int):
  """keep [R, S] (every key > t and the first counts - #(> t) keys == t)
  and the rank by position of each kept entry among the kept ones.

  One cumulative sum when both counts fit in an int32 (the count of keys
  above t below 2^b with b = bit_length(k_max), and the ties count in the
  bits above it), two otherwise."""
  above = keys > t  # [R, S]
  at_t = keys == t
  need = counts[:, None] - jnp.sum(above, axis=-1, keepdims=True,
                                   dtype=jnp.int32)  # [R, 1], >= 1 ties
  bits = max(k_max, 1).bit_length()
  if keys.shape[-1] < 1 << (31 - bits):
    packed = jnp.cumsum(above.astype(jnp.int32) | (at_t.astype(jnp.int32)
                                                   << bits), axis=-1)
    n_above, n_at = packed & ((1 << bits) - 1), packed >> bits
  else:
    n_above = jnp.cumsum(above, axis=-1, dtype=jnp.int32)
    n_at = jnp.cumsum(at_t, axis=-1, dtype=jnp.int32)
  keep = above | (at_t & (n_at <= need))
  return keep, n_above + jnp.minimum(n_at, need) - 1


def _top_direct(keys, counts, k_max: int, descending: bool, pad_value: int):
  """top_sorted_positions on keys [R, S] (uint32) read whole: the radix
  k-th largest t, then the kept entries compacted in position order."""
  t = _kth_largest(keys, jnp.maximum(counts, 1))[:, None]  # [R, 1]
  keep, rank = _kept_ranks(keys, t, counts, k_max)
  return _compact(keep, rank, counts, k_max, descending, pad_value)


def _top_blocked(keys, counts, k_max: int, block: int, descending: bool,
                 pad_value: int):
  """top_sorted_positions through the top blocks of `block` keys.

  The counts largest keys lie in the counts blocks with the largest maxima
  (ties to the lower block): a key above the counts-th largest block max M
  sits in a block whose max exceeds M, and all those blocks are kept; if
  the threshold equals M, the kept blocks whose max is M come before every
  dropped block whose max is M, so the first keys equal to M by position
  are in kept blocks. So select the blocks by their maxima (S / B keys),
  gather them in ascending order and select among their k_max * B keys
  (dropped slots read 0, below any real key). Same set as `_top_direct`.
  """
  r, s = keys.shape
  nb = -(-s // block)
  blocked = jnp.pad(keys, ((0, 0), (0, nb * block - s))).reshape(
      r, nb, block)  # [R, Nb, B]; pad keys 0 are never kept
  kb = min(k_max, nb)
  top_blocks = _top_direct(jnp.max(blocked, axis=-1), jnp.minimum(counts, kb),
                           kb, False, nb - 1)  # [R, KB] ascending
  real = jnp.arange(kb) < counts[:, None]  # [R, KB]
  cand = jnp.take_along_axis(blocked, top_blocks[..., None], axis=1)
  cand = jnp.where(real[..., None], cand, 0).reshape(r, kb * block)
  local = _top_direct(cand, counts, k_max, descending, 0)  # [R, k_max]
  pos = (jnp.take_along_axis(top_blocks, local // block, axis=-1) * block
         + local % block)
  slot = jnp.arange(k_max)
  return jnp.where(slot < counts[:, None], pos, pad_value)


def top_sorted_positions(scores, counts, k_max: int, descending: bool):
  """Top `counts[...]` positions of each row of scores, sorted, padded.

  Exactly lax.top_k's set with ties to the lower position, found without a
  sort: the counts-th largest score t (radix search), every position above t
  and the first (by position) positions equal to t; the kept positions are
  scattered to their slots from a cumulative count. Long rows (S >= 64
  k_max) first keep the counts blocks of B ~ sqrt(S / k_max) keys with the
  largest maxima and select among those (`_top_blocked`): the radix passes
  then read ~2 sqrt(S k_max) keys instead of S. On an H200 at [32, 1M]
  this takes 0.56 ms for k = 1000 and 0.60 ms for k = 6096, against
  1.64 / 1.68 ms for the radix over all keys (1.15 ms of it) with a binary
  search per slot (experiments/results/vs_estimate_pallas_h200.md).

  Args:
    scores: [..., S] f32 (e.g. [B, N, S]), forced entries are +inf.
    counts: int32 broadcastable to scores.shape[:-1] (e.g. [N] per head),
      entries to keep per row (<= k_max and <= the row's entries > -inf
      when -inf marks excluded ones).
    k_max: static layer budget (<= S).
    descending: sort the kept positions descending (slashes) or ascending.

  Returns:
    [..., k_max] int32: kept positions first, then padding (0 when
    descending, S - 1 when ascending).
  """
  *lead, s = scores.shape
  counts = jnp.broadcast_to(counts, tuple(lead)).reshape(-1).astype(
      jnp.int32)  # [R]
  keys = _sortable_key(scores).reshape(-1, s)  # [R, S]
  pad_value = 0 if descending else s - 1
  block = _block_size_for(s, k_max)
  if block:
    out = _top_blocked(keys, counts, k_max, block, descending, pad_value)
  else:
    out = _top_direct(keys, counts, k_max, descending, pad_value)
  return out.reshape(*lead, k_max)


def last_q_logits(q, k, last_q: int):
  """Logits of the last `last_q` queries against all keys, and their mask.

  In the input dtype, as MInference computes them (f32 inputs at HIGHEST
  precision); GQA through the einsum's K axis, K is never repeated.

  Returns:
    logits [B, N, L, S] (unmasked) and visible [L, S], the causal mask of
    the L x L corner (row i sits at absolute position S - L + i).
  """
  b, t, n, d = q.shape
  kv_heads = k.shape[2]
  q_last = q[:, t - last_q :].reshape(b, last_q, kv_heads, n // kv_heads, d)
  rows = t - last_q + jnp.arange(last_q)  # [L] absolute query positions
  visible = jnp.arange(t)[None, :] <= rows[:, None]  # [L, S]
  precision = (_HIGHEST if q.dtype == jnp.float32
               else jax.lax.Precision.DEFAULT)
  logits = jnp.einsum(
      "blkgd,bskd->bkgls", q_last, k, precision=precision,
      preferred_element_type=jnp.float32,
  ) * (d**-0.5)  # [B, K, G, L, S]
  return logits.astype(q.dtype).reshape(b, n, last_q, t), visible


def line_scores_xla(q, k, last_q: int):
  """Vertical and slash scores [B, N, S] f32 of the last `last_q` queries
  (nothing forced): the plain-JAX form, and the reference of the fused
  Pallas kernel `pallas_kernels.vs_estimate.vs_line_scores`."""
  logits, visible = last_q_logits(q, k, last_q)  # [B, N, L, S], [L, S]
  m, z = _softmax_stats(logits, visible)  # [B, N, L]
  return _line_scores(logits, visible, m, z)


# Largest last_q the fused Pallas scores take (its rows are one register tile).
PALLAS_SCORES_MAX_LAST_Q = 128


def _line_scores_with(scores: str, interpret: bool):
  if scores == "pallas":
    from pallas_kernels.vs_estimate import vs_line_scores

    return functools.partial(vs_line_scores, interpret=interpret)
  return line_scores_xla


@functools.partial(
    jax.jit,
    static_argnames=("v_counts", "s_counts", "last_q", "scores", "interpret"),
)
def _vs_indices_jit(q, k, v_counts, s_counts, last_q, scores, interpret):
  b, t, n, _ = q.shape
  nv, ns = max(max(v_counts), 1), max(max(s_counts), 1)
  vertical, slash = _line_scores_with(scores, interpret)(
      q, k, last_q)  # [B, N, S] f32 each
  cols = jnp.arange(t)  # [S]
  vertical = jnp.where(cols < VS_MIN_VERTICAL, jnp.inf, vertical)
  slash = jnp.where(cols < VS_FORCED_SLASH_OFFSETS, jnp.inf, slash)
  v_cnt = jnp.asarray(v_counts, jnp.int32)  # [N]
  s_cnt = jnp.asarray(s_counts, jnp.int32)
  return VerticalSlashIndices(
      vertical=top_sorted_positions(vertical, v_cnt, nv, descending=False),
      vertical_count=jnp.broadcast_to(v_cnt, (b, n)),
      slash=top_sorted_positions(slash, s_cnt, ns, descending=True),
      slash_count=jnp.broadcast_to(s_cnt, (b, n)),
  )


@jaxtyped(typechecker=beartype)
def vertical_slash_indices(
    q: Float[Array, "B T N D"],
    k: Float[Array, "B S K D"],
    n_vertical: int | Sequence[int],
    n_slash: int | Sequence[int],
    last_q: int = VS_LAST_Q,
    *,
    active: Sequence[bool] | None = None,
    scores: str = "xla",
    interpret: bool = False,
) -> VerticalSlashIndices:
  """MInference's online Vertical-Slash estimate (exact semantics).

  Per query head n (reading KV head n // G, K is never repeated):
  1. Budgets are clamped: kv = min(T, max(n_vertical, 30)),
     ks = min(T, max(n_slash, 50)); L = min(last_q, T).
  2. P = softmax_f32(q[T - L:] k^T / sqrt(D)) with the causal mask on the
     L x L corner ([L, S]); the logits are rounded to the input dtype as in
     MInference (f32 inputs: f32 at HIGHEST precision), the softmax and
     the sums are f32. All heads at once: peak memory [B, N, L, S].
  3. Vertical score of column j = sum_i P[i, j]; columns 0..29 are forced.
     Slash score of offset o = sum_i P[i, T - L + i - o]; offsets 0..99 are
     forced. Keep the top kv columns / ks offsets.
  Ties go to the smaller column / offset (so a slash budget below 100 keeps
  offsets 0..ks-1 of the forced ones, and offset 0 is always kept).

  Args:
    q: [B, T, N, D] queries (RoPE applied).
    k: [B, S, K, D] keys, S == T (full prefill), N % K == 0.
    n_vertical: vertical budget, an int or a static tuple with one int per
      query head.
    n_slash: slash budget, an int or a static per-head tuple.
    last_q: number of trailing queries used for the estimate.
    active: static per-head tuple of bools; inactive heads get counts 0.
    scores: how step 2-3's scores are computed: "xla" (`line_scores_xla`,
      peak memory [B, N, L, S]) or "pallas" (the fused GPU kernel
      `pallas_kernels.vs_estimate.vs_line_scores`, K read twice, no
      [L, S] array; same scores up to f32 summation order). "pallas" with
      last_q > PALLAS_SCORES_MAX_LAST_Q uses "xla".
    interpret: run the "pallas" scores in interpret mode (CPU tests).

  Returns:
    VerticalSlashIndices with NV / NS = the largest clamped budget over the
    active heads (at least 1).

  Raises:
    TypeError: non-int budgets or last_q, non-bool `active`, non-float q/k.
    ValueError: inconsistent shapes, T != S, negative budgets, per-head tuples
      of the wrong length, an unknown `scores`.
  """
  _, t, n, _, _ = check_prefill_qk(q, k)
  if scores not in ("xla", "pallas"):
    raise ValueError(f"scores must be 'xla' or 'pallas', got {scores!r}")
  v_budget = per_head_ints("n_vertical", n_vertical, n)
  s_budget = per_head_ints("n_slash", n_slash, n)
  last_q = min(_check_int("last_q", last_q, 1), t)
  on = per_head_active(active, n)
  v_counts = tuple(
      min(t, max(v, VS_MIN_VERTICAL)) if a else 0
      for v, a in zip(v_budget, on)
  )
  s_counts = tuple(
      min(t, max(s, VS_MIN_SLASH)) if a else 0 for s, a in zip(s_budget, on)
  )
  if last_q > PALLAS_SCORES_MAX_LAST_Q:
    scores = "xla"
  return _vs_indices_jit(
      q, k, v_counts=v_counts, s_counts=s_counts, last_q=last_q,
      scores=scores, interpret=bool(interpret) and scores == "pallas",
  )


# ----------------------------------------------------------------- layout
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
  _check_int("seq_len", seq_len, 1)
  _check_int("block_size", block_size, 1)
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


@functools.partial(jax.jit, static_argnames=("seq_len", "block_size"))
def _vs_layout_jit(indices: VerticalSlashIndices, seq_len: int, block_size):
  bs = block_size
  vertical = indices.vertical.astype(jnp.int32)  # [B, N, NV]
  slash = indices.slash.astype(jnp.int32)  # [B, N, NS]
  v_count = indices.vertical_count.astype(jnp.int32)  # [B, N]
  s_count = indices.slash_count.astype(jnp.int32)
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
  return VerticalSlashLayout(
      block_count=block_count,
      block_offset=block_offset,
      column_count=column_count,
      column_index=column_index,
      block_size=bs,
  )


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
      two). On an H200 at T = 1M, N = 32: 1.85 ms for "xla", 0.50 ms
      for "pallas" (experiments/results/vs_estimate_pallas_h200_s5.md).
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
  from pallas_kernels.vs_chain_layout import vs_chain_layout

  return vs_chain_layout(
      indices.slash, indices.slash_count, indices.vertical,
      indices.vertical_count, seq_len, block_size,
      interpret=bool(interpret))


@jaxtyped(typechecker=beartype)
def vertical_slash_layout(
    indices: VerticalSlashIndices,
    seq_len: int,
    block_size: int = BLOCK_SIZE,
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

  Args:
    indices: VerticalSlashIndices of a T-token prefill.
    seq_len: static T.
    block_size: static row block / window size (64 for the kernels).

  Returns:
    VerticalSlashLayout with arrays [B, N, ceil(T / block_size), NS | NV].

  Raises:
    TypeError: seq_len / block_size not ints.
    ValueError: inconsistent or empty index shapes, non-positive seq_len or
      block_size.
  """
  _check_layout_inputs(indices, seq_len, block_size)
  return _vs_layout_jit(indices, seq_len=seq_len, block_size=block_size)
