"""Vertical-Slash layouts (expanded and chain) against a sequential NumPy
port of MInference's merge, and their key sets."""

import jax
import jax.numpy as jnp
import numpy as np
import kernel_test_utils as ktu
import numpy_reference as ref
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from index_test_utils import (
    check_layout_properties,
    layout_arrays,
    random_indices,
    structured_qk,
)

from minference_jax.index import (
    layout_builder_bytes,
    layout_heads_per_step,
    vertical_slash_chain_layout,
    vertical_slash_indices,
    vertical_slash_layout,
)
from pallas_kernels.reference import (
    vertical_slash_chain_mask,
    vertical_slash_mask,
)

SETTINGS = settings(max_examples=5, deadline=None)


@SETTINGS
@given(
    b=st.sampled_from([1, 2]),
    n=st.sampled_from([1, 3]),
    t=st.sampled_from([10, 64, 150, 300]),
    bs=st.sampled_from([64, 16]),
    force_zero=st.booleans(),
    seed=st.integers(0, 2**31 - 1),
)
def test_vs_layout_matches_sequential_merge(b, n, t, bs, force_zero, seed):
  rng = np.random.default_rng(seed)
  indices = random_indices(rng, b, n, t, force_zero)
  layout = vertical_slash_layout(indices, t, bs)
  assert layout.block_size == bs
  count, offset, c_count, c_index = layout_arrays(layout)
  assert count.dtype == offset.dtype == c_index.dtype == np.int32
  want = ref.vs_layout_reference(
      *(np.asarray(x) for x in (
          indices.vertical, indices.vertical_count,
          indices.slash, indices.slash_count,
      )),
      t, bs,
  )
  assert count.shape == (b, n, -(-t // bs))
  for (bi, h, m), (blocks, cols) in want.items():
    assert count[bi, h, m] == len(blocks), (bi, h, m)
    assert offset[bi, h, m, : len(blocks)].tolist() == blocks, (bi, h, m)
    assert c_count[bi, h, m] == len(cols), (bi, h, m)
    assert c_index[bi, h, m, : len(cols)].tolist() == cols, (bi, h, m)


@SETTINGS
@given(
    b=st.sampled_from([1, 2]),
    n=st.sampled_from([4, 6]),
    t=st.sampled_from([150, 300]),
    cap=st.sampled_from([1, 2, 3]),
    seed=st.integers(0, 2**31 - 1),
)
def test_vs_layout_in_head_groups_equals_one_step(b, n, t, cap, seed):
  """A workspace cap that splits the heads into groups (cap heads' worth of
  temporaries) gives the same arrays, padding included."""
  rng = np.random.default_rng(seed)
  indices = random_indices(rng, b, n, t, force_zero=True)
  nv, ns = indices.vertical.shape[-1], indices.slash.shape[-1]
  limit = layout_builder_bytes(1, cap, t, nv, ns, 16)
  group = layout_heads_per_step(b, n, t, nv, ns, 16, limit)
  assert group < n and n % group == 0 and group <= cap, (group, seed)
  whole = layout_arrays(vertical_slash_layout(indices, t, 16))
  grouped = layout_arrays(
      vertical_slash_layout(indices, t, 16, max_workspace_bytes=limit))
  for a, g in zip(whole, grouped):
    np.testing.assert_array_equal(g, a, err_msg=f"seed={seed}")


def test_vs_layout_heads_per_step():
  # Everything fits: one step; nothing fits: one head at a time.
  assert layout_heads_per_step(1, 32, 4096, 100, 200) == 32
  assert layout_heads_per_step(1, 32, 1 << 20, 1000, 6096, 64, 1) == 1
  # At 1M tokens and MInference's budgets, groups of heads whose builder
  # stays under the default cap (8 GiB).
  g = layout_heads_per_step(1, 32, 1 << 20, 1000, 6096)
  assert 32 % g == 0 and 1 < g < 32
  assert layout_builder_bytes(1, g, 1 << 20, 1000, 6096) <= 8 << 30
  assert layout_builder_bytes(1, 2 * g, 1 << 20, 1000, 6096) > 8 << 30
  with pytest.raises(ValueError, match="max_workspace_bytes"):
    vertical_slash_layout(random_indices(np.random.default_rng(0), 1, 1, 64,
                                         force_zero=True), 64,
                          max_workspace_bytes=0)


# Random index sets for the layout builders (both layout forms).
LAYOUT_CASES = given(
    b=st.sampled_from([1, 2]),
    n=st.sampled_from([1, 3]),
    t=st.sampled_from([10, 64, 150, 300]),
    bs=st.sampled_from([64, 16]),
    seed=st.integers(0, 2**31 - 1),
)


@SETTINGS
@LAYOUT_CASES
def test_vs_layout_covers_exact_mask(b, n, t, bs, seed):
  rng = np.random.default_rng(seed)
  indices = random_indices(rng, b, n, t, force_zero=True)
  layout = vertical_slash_layout(indices, t, bs)
  check_layout_properties(layout, indices, t)


@SETTINGS
@LAYOUT_CASES
def test_vs_chain_layout_has_the_expanded_key_set(b, n, t, bs, seed):
  """The O(T) chain layout reads back to exactly the expanded key set."""
  rng = np.random.default_rng(seed)
  indices = random_indices(rng, b, n, t, force_zero=True)
  chain = vertical_slash_chain_layout(indices, t, bs)
  size = t + bs + 1
  assert chain.window_next.shape == (b, n, size)
  assert chain.vertical_prefix.shape == (b, n, size)
  nxt = np.asarray(chain.window_next)
  assert (nxt[..., 0] == 0).all() and (nxt[..., 1:] < np.arange(1, size)).all()
  prefix = np.asarray(chain.vertical_prefix)
  assert (np.diff(prefix, axis=-1) >= 0).all() and (prefix[..., 0] == 0).all()
  np.testing.assert_array_equal(prefix[..., -1], indices.vertical_count)
  # Runs: window j continues its run iff its successor is the adjacent
  # window j - bs; run_next is the successor of the run's last window.
  j = np.arange(1, size)
  length = np.asarray(chain.run_length)[..., 1:]
  adjacent = (nxt[..., 1:] == j - bs) & (j - bs > 0)
  below = np.asarray(chain.run_length)[..., np.maximum(j - bs, 0)]
  np.testing.assert_array_equal(length, 1 + np.where(adjacent, below, 0))
  last = j - (length - 1) * bs
  np.testing.assert_array_equal(
      np.asarray(chain.run_next)[..., 1:],
      np.take_along_axis(nxt, last, axis=-1), err_msg=f"seed={seed}")
  want = vertical_slash_mask(vertical_slash_layout(indices, t, bs), t, t)
  got = vertical_slash_chain_mask(chain, t, t)
  np.testing.assert_array_equal(np.asarray(got), np.asarray(want),
                                err_msg=f"seed={seed}")


@pytest.mark.parametrize("t, heads", [(200, (8, 2)), (45, (4, 4))])
def test_vs_end_to_end_cover_under_jit(t, heads):
  n, kv = heads
  rng, seed = ktu.fresh_rng()
  with ktu.reports_seed(seed):
    q, k = structured_qk(rng, 2, t, n, kv)
    budgets = tuple(int(x) for x in rng.integers(0, 120, n))
    active = (False,) + (True,) * (n - 1)

    @jax.jit
    def build(q, k):
      indices = vertical_slash_indices(q, k, budgets, 60, 64, active=active)
      return indices, vertical_slash_layout(indices, t)

    indices, layout = build(jnp.asarray(q), jnp.asarray(k))
    eager = vertical_slash_layout(
        vertical_slash_indices(
            jnp.asarray(q), jnp.asarray(k), budgets, 60, 64, active=active
        ),
        t,
    )
    for x, y in zip(layout_arrays(layout), layout_arrays(eager)):
      np.testing.assert_array_equal(x, y)
    count, _, c_count, _ = layout_arrays(layout)
    assert np.all(count[:, 0] == 0) and np.all(c_count[:, 0] == 0)  # inactive
    assert np.all(count[:, 1:] >= 1)
    check_layout_properties(layout, indices, t)
