"""Sort-free top-k selection shared by the index builders' estimates.

`top_sorted_positions` keeps exactly `lax.top_k`'s set (ties to the lower
position) without sorting the scores: a radix search for the k-th largest
score, then one cumulative count that scatters the kept positions to their
slots in position order. Long rows first keep the blocks with the largest
maxima and select among those.
"""

import functools
import math

import jax
import jax.numpy as jnp


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
  one multi-output pass (faster than the broadcast form on a GPU at long
  rows, docs/kernels.md) but which compile slowly on CPU. Long rows are
  counted in chunks of _COUNT_CHUNK keys (padded with 0, which no candidate
  >= 1 counts), then the chunks summed: [B * N] rows alone leave most of
  the GPU idle."""
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
  then read ~2 sqrt(S k_max) keys instead of S (timings: docs/kernels.md).

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
