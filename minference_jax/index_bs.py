"""Block-Sparse online index building: MInference 1.0's pooled block top-k."""

import functools
from collections.abc import Sequence

import jax
import jax.numpy as jnp
from beartype import beartype
from jaxtyping import Array, Float, Int, jaxtyped

from minference_jax.index_checks import (
    bs_estimate_finite,
    check_counts_fit,
    check_int,
    check_prefill_qk,
    per_head_active,
    per_head_array,
    per_head_ints,
)
from minference_jax.topk import top_sorted_positions
from pallas_kernels.layouts import BLOCK_SIZE, BlockSparseLayout

_HIGHEST = jax.lax.Precision.HIGHEST
# From this many query blocks (256K tokens at 64) the per-row radix top-k
# (`top_sorted_positions`) selects the key blocks, below it lax.top_k: the
# faster of the two on a GPU at each length (docs/kernels.md).
RADIX_MIN_BLOCKS = 4096


def _mean_pool(x: jax.Array, block: int) -> jax.Array:
  """[B, T, H, D] -> [B, ceil(T / block), H, D] f32 block means.

  The sequence is zero-padded to a multiple of `block` and every block sum is
  divided by `block`, so the last (partial) block's mean includes the padding
  zeros, as in MInference.
  """
  b, t, h, d = x.shape
  nb = -(-t // block)
  x = jnp.pad(x.astype(jnp.float32), ((0, 0), (0, nb * block - t), (0, 0),
                                      (0, 0)))
  return x.reshape(b, nb, block, h, d).sum(axis=2) / block  # [B, nb, H, D]


@functools.partial(jax.jit, static_argnames=("kb", "block", "radix"))
def _bs_jit(q, k, counts, kb, block, radix):
  b, t, n, _ = q.shape
  kv_heads = k.shape[2]
  g = n // kv_heads
  q_pool = jnp.moveaxis(_mean_pool(q, block), 2, 0)  # [N, B, Tb, D]
  k_pool = _mean_pool(k, block)  # [B, Sb, K, D]
  nb = q_pool.shape[2]
  rows = jnp.arange(nb, dtype=jnp.int32)  # query block m
  causal = rows[None, :] <= rows[:, None]  # [Tb, Sb] key block <= m

  def one_head(args):
    h, q_h, count = args  # q_h: [B, Tb, D]
    k_h = jax.lax.dynamic_index_in_dim(k_pool, h // g, axis=2, keepdims=False)
    # Unscaled pooled logits, no softmax (rank-equivalent to the paper's).
    scores = jnp.einsum(
        "bmd,bjd->bmj", q_h, k_h, precision=_HIGHEST
    )  # [B, Tb, Sb]
    scores = jnp.where(causal, scores, -jnp.inf)
    # The row's top min(m + 1, count) causal blocks (ties to the lower
    # block), ascending: masked blocks (-inf) rank below the m + 1 causal
    # ones. Long inputs use the sort-free radix selection, short ones
    # lax.top_k (fewer launches); both give the same set.
    n_valid = jnp.minimum(rows + 1, count).astype(jnp.int32)  # [Tb]
    pad = jnp.arange(kb)[None, :] >= n_valid[:, None]  # [Tb, KB]
    if radix:
      kept = top_sorted_positions(scores, n_valid, kb, descending=False)
    else:
      _, idx = jax.lax.top_k(scores, kb)  # [B, Tb, KB] descending score
      kept = jnp.sort(jnp.where(pad, nb, idx), axis=-1)
    kept = jnp.where(pad, rows[:, None], kept)  # padding: the row's own block
    return kept.astype(jnp.int32), n_valid

  # One query head at a time: peak memory is one [B, Tb, Sb] score matrix.
  index, count = jax.lax.map(
      one_head,
      (jnp.arange(n), q_pool, counts),
  )  # [N, B, Tb, KB], [N, Tb]
  # A row block whose estimate read a NaN or inf keeps no blocks (count 0,
  # which no finite estimate of an active head gives; padding: its block).
  ok = bs_estimate_finite(q, k, block)  # [B, N, Tb]
  return BlockSparseLayout(
      block_count=jnp.where(ok, count[None], 0),
      block_index=jnp.where(ok[..., None], jnp.moveaxis(index, 0, 1),
                            rows[:, None]),
      block_size=block,
  )


@jaxtyped(typechecker=beartype)
def block_sparse_indices(
    q: Float[Array, "B T N D"],
    k: Float[Array, "B S K D"],
    top_k: int | Sequence[int],
    block: int = BLOCK_SIZE,
    *,
    active: Sequence[bool] | None = None,
) -> BlockSparseLayout:
  """MInference's Block-Sparse estimate: top-k key blocks per query block.

  Q and K are mean-pooled over `block`-token blocks (zero padding included
  in the last block's mean, divided by `block`); block logits are
  pooled_q . pooled_k^T with no scaling and no softmax, masked block-causally
  (key block j <= query block m). Per head, the budget is
  k_h = min(top_k_h, Sb); row block m keeps its min(m + 1, k_h) best key
  blocks (so rows with m < k_h are dense), sorted ascending. Query head n
  reads KV head n // G (pooled K is indexed, never repeated).

  Args:
    q: [B, T, N, D] queries.
    k: [B, S, K, D] keys, S == T (full prefill), N % K == 0.
    top_k: blocks per row, an int or a static per-query-head tuple.
    block: static block size (64 for the kernels).
    active: static per-head tuple of bools; inactive heads get counts 0.

  Non-finite input: a row block whose estimate reads a NaN or inf (in its
  own query rows, or a key of a block <= m of its KV head) keeps no blocks
  (count 0, which a finite estimate never gives an active head), so no
  selection is ranked by NaN scores; `MInferenceAttention` makes those
  rows' output NaN.

  Returns:
    BlockSparseLayout with block_index [B, N, Tb, KB], KB = the largest
    clamped top_k over the active heads (at least 1). Padding past a count
    is the row's own block id m (keeps rows non-decreasing and causal).

  Raises:
    TypeError: non-int top_k / block, non-bool `active`, non-float q/k.
    ValueError: inconsistent shapes, T != S, negative top_k, non-positive
      block, per-head tuples of the wrong length.
  """
  _, t, n, _, _ = check_prefill_qk(q, k)
  budget = per_head_ints("top_k", top_k, n)
  if isinstance(block, bool) or not isinstance(block, int):
    raise TypeError(f"block must be an int, got {type(block).__name__}")
  if block < 1:
    raise ValueError(f"block must be >= 1, got {block}")
  on = per_head_active(active, n)
  n_blocks = -(-t // block)
  counts = tuple(min(kk, n_blocks) if a else 0 for kk, a in zip(budget, on))
  return _bs_jit(q, k, jnp.asarray(counts, jnp.int32), kb=max(max(counts), 1),
                 block=block, radix=n_blocks >= RADIX_MIN_BLOCKS)


def block_sparse_indices_traced(
    q: Float[Array, "B T N D"],
    k: Float[Array, "B S K D"],
    top_k: Int[Array, "N"],
    active: jax.Array,
    *,
    max_top_k: int,
    block: int = BLOCK_SIZE,
) -> BlockSparseLayout:
  """`block_sparse_indices` with per-head budgets as an [N] array, which may
  be traced: heads whose budgets differ share one program.

  A head keeps min(top_k_h, Sb) blocks per row (0 when inactive), as there;
  `max_top_k` is a static upper bound of the budgets over every head the
  program serves, so block_index is min(max_top_k, Sb) wide (at least 1).
  Equal layouts to the static builder for budgets within the bound, except
  for the width of the padding.

  Args:
    q: [B, T, N, D] queries.
    k: [B, S, K, D] keys, S == T (full prefill), N % K == 0.
    top_k: [N] int blocks per row.
    active: [N] bool; inactive heads get counts 0.
    max_top_k: static bound of the budgets.
    block: static block size (64 for the kernels).

  Raises:
    TypeError: a non-int bound or block, non-float q/k.
    ValueError: inconsistent q/k shapes, `top_k` or `active` that are not
      [N] integers / bools, a negative bound, a block < 1, and for concrete
      (untraced) budgets: negative ones or an active head's above the bound.
  """
  _, t, n, _, _ = check_prefill_qk(q, k)
  top_k = per_head_array("top_k", top_k, n, jnp.integer)
  active = per_head_array("active", active, n, jnp.bool_)
  bound = check_int("max_top_k", max_top_k, 0)
  block = check_int("block", block, 1)
  n_blocks = -(-t // block)
  counts = jnp.where(active, jnp.minimum(top_k.astype(jnp.int32), n_blocks), 0)
  width = max(min(bound, n_blocks), 1)
  check_counts_fit("top_k", top_k, counts, width, "max_top_k", bound)
  return _bs_jit(q, k, counts, kb=width, block=block,
                 radix=n_blocks >= RADIX_MIN_BLOCKS)
