"""The sort-free top-k against lax.top_k and sorts."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import kernel_test_utils as ktu
from minference_jax import topk


def test_radix_select_forms_agree_with_a_sort():
  """Both counting forms of the radix k-th largest (the CUDA and the default
  one) equal the k-th largest from a sort, with heavy ties and extremes."""
  rng, seed = ktu.fresh_rng()
  with ktu.reports_seed(seed):
    keys = rng.integers(0, 2**32, (3, 5, 257), dtype=np.uint64)
    keys[0] = rng.integers(0, 4, (5, 257))  # mostly ties
    keys[1, :, :9] = 2**32 - 1  # forced (+inf-like) entries
    keys = jnp.asarray(keys.astype(np.uint32))
    counts = jnp.asarray(rng.integers(1, 258, (3, 5)), jnp.int32)
    want = -np.sort(-np.asarray(keys).astype(np.int64), axis=-1)
    want = np.take_along_axis(want, np.asarray(counts)[..., None] - 1,
                              -1)[..., 0]
    for count_ge in (topk._count_ge_broadcast, topk._count_ge_siblings):
      got = topk._kth_largest_with(keys, counts, count_ge)
      np.testing.assert_array_equal(np.asarray(got).astype(np.int64), want,
                                    err_msg=count_ge.__name__)


def test_radix_select_chunked_counts_agree_with_a_sort():
  """The sibling counts split long rows into chunks (padded with 0 keys):
  the same k-th largest as a sort, also when a row is not a multiple of the
  chunk."""
  rng, seed = ktu.fresh_rng()
  with ktu.reports_seed(seed):
    s = 2 * topk._COUNT_CHUNK + 333
    keys = rng.integers(0, 2**32, (2, s), dtype=np.uint64).astype(np.uint32)
    keys[1] = rng.integers(0, 3, s)  # ties and zero keys
    counts = rng.integers(1, s + 1, 2).astype(np.int32)
    got = topk._kth_largest_with(jnp.asarray(keys), jnp.asarray(counts),
                                     topk._count_ge_siblings)
    want = -np.sort(-keys.astype(np.int64), axis=-1)
    want = np.take_along_axis(want, counts[:, None] - 1, -1)[:, 0]
    np.testing.assert_array_equal(np.asarray(got).astype(np.int64), want)


def _top_k_reference(scores, counts, k_max, descending):
  """lax.top_k's set (ties to the lower position) per row, sorted, padded
  as `top_sorted_positions` pads (0 descending, S - 1 ascending)."""
  s = scores.shape[-1]
  _, idx = jax.lax.top_k(jnp.asarray(scores), k_max)  # [..., k_max]
  idx, counts = np.asarray(idx), np.broadcast_to(counts, scores.shape[:-1])
  out = np.full(idx.shape, 0 if descending else s - 1)
  for r in np.ndindex(counts.shape):
    kept = np.sort(idx[r][: counts[r]])
    out[r][: counts[r]] = kept[::-1] if descending else kept
  return out


@pytest.mark.parametrize("s, k_max", [
    (20000, 100),  # blocks of 16 keys (S >= 64 k_max)
    (4096, 40),  # blocks of 8, block maxima selected directly
    (700, 90),  # direct selection, one packed cumulative sum
    (70000, 33000),  # direct, counts too wide to pack: two sums
])
@pytest.mark.parametrize("kind", ["continuous", "ties", "sparse"])
def test_top_sorted_positions_is_lax_top_k(s, k_max, kind):
  """Exactly lax.top_k's set with ties to the lower position, on both
  paths (through block maxima and direct), per-row counts including 0 and
  k_max, heavy ties and forced +inf entries."""
  rng, seed = ktu.fresh_rng()
  with ktu.reports_seed(seed):
    x = rng.standard_normal((2, 3, s)).astype(np.float32)
    if kind == "ties":
      x = np.round(x * 2) / 2  # few distinct values
    elif kind == "sparse":
      x = np.where(rng.random(x.shape) < 0.01, x, 0.0).astype(np.float32)
    x[..., rng.integers(0, s, 7)] = np.inf
    counts = rng.integers(0, k_max + 1, 3).astype(np.int32)
    counts[:2] = (0, k_max)
    for descending in (False, True):
      got = topk.top_sorted_positions(jnp.asarray(x), jnp.asarray(counts),
                                          k_max, descending)
      want = _top_k_reference(x, counts, k_max, descending)
      np.testing.assert_array_equal(
          np.asarray(got), want,
          err_msg=f"{kind} desc={descending} counts={counts}")
