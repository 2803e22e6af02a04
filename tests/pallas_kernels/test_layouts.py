"""Layout helpers: trimming padded index arrays."""

import jax.numpy as jnp
import numpy as np
import pytest

import random_layouts as rl
from pallas_kernels.layouts import compact_layout
from pallas_kernels.reference import block_sparse_mask, vertical_slash_mask
from pallas_kernels.vertical_slash.xla import vertical_slash_attention_xla


def test_compact_layout_is_equivalent():
  rng, seed = rl.fresh_rng()
  t = 150
  q, k, v = rl.random_qkv(rng, 1, t, 2, 2, 8)
  layout = rl.random_vs_layout(rng, 1, 2, t, ns=6, nv=20)
  small = compact_layout(layout)
  assert small.block_offset.shape[-1] == max(1, int(layout.block_count.max()))
  assert small.column_index.shape[-1] == max(1, int(layout.column_count.max()))
  np.testing.assert_array_equal(
      np.asarray(vertical_slash_mask(small, t, t)),
      np.asarray(vertical_slash_mask(layout, t, t)),
  )
  want = rl.reference(q, k, v, vertical_slash_mask(layout, t, t))
  rl.assert_close(vertical_slash_attention_xla(q, k, v, small), want,
                  jnp.float32, seed, "compact")
  bs = rl.random_bs_layout(rng, 1, 2, t, kb=3)
  small_bs = compact_layout(bs)
  assert small_bs.block_index.shape[-1] == max(1, int(bs.block_count.max()))
  np.testing.assert_array_equal(
      np.asarray(block_sparse_mask(small_bs, t, t)),
      np.asarray(block_sparse_mask(bs, t, t)),
  )
  a_shape = rl.random_a_shape_layout(rng, 2, t)
  assert compact_layout(a_shape) is a_shape
  with pytest.raises(TypeError, match="not a layout"):
    compact_layout(object())
