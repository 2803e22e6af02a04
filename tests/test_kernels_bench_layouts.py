"""The benchmark's fallback layout generators produce valid layouts, and the
benchmark's row-sampled masks agree with the reference masks."""

import jax
import numpy as np
import pytest

import kernel_test_utils as ktu
from experiments import bench_common as bc
from pallas_kernels import reference


@pytest.mark.parametrize("t", [300, 5000])
def test_clustered_layouts_are_valid(t):
  _, seed = ktu.fresh_rng()
  key = jax.random.key(seed)
  vs = bc.clustered_vs_layout(key, 1, 2, t, 60, 300)
  ktu.check_vs_layout(vs, t)
  assert int(vs.block_count.max()) > 1 and int(vs.column_count.max()) > 0
  bsl = bc.clustered_bs_layout(key, 1, 2, t, 20, n_local=8)
  ktu.check_bs_layout(bsl)


def test_rows_masks_match_reference_masks():
  rng, seed = ktu.fresh_rng()
  t, n = 260, 3
  rows = np.array(sorted(rng.choice(t, 40, replace=False)))
  vs = ktu.random_vs_layout(rng, 1, n, t, 4, 30)
  bsl = ktu.random_bs_layout(rng, 1, n, t, 3)
  ash = ktu.random_a_shape_layout(rng, n, t)
  pairs = [
      (bc.vs_rows_mask(vs, rows, t), reference.vertical_slash_mask(vs, t, t)),
      (bc.bs_rows_mask(bsl, rows, t), reference.block_sparse_mask(bsl, t, t)),
      (bc.a_shape_rows_mask(ash, rows, t), reference.a_shape_mask(ash, t, t)),
  ]
  for got, full in pairs:
    np.testing.assert_array_equal(
        np.asarray(got), np.asarray(full)[:, :, rows], err_msg=f"{seed=}")
  part = bc.vs_rows_mask(vs, rows, t, slice(1, 3))
  np.testing.assert_array_equal(np.asarray(part),
                                np.asarray(pairs[0][1])[:, 1:3, rows])
