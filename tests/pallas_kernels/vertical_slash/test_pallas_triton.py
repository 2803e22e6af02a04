"""Vertical-Slash Pallas-Triton kernels (interpret mode): the op battery,
each phase of the expanded-layout kernel, and the chain-layout kernel."""

import jax.numpy as jnp
import numpy as np
import pytest

import kernel_test_utils as ktu
from attention_op_test_base import AttentionOpTestBase
from pallas_kernels.layouts import VerticalSlashLayout
from pallas_kernels.reference import (
    vertical_slash_chain_mask,
    vertical_slash_mask,
)
from pallas_kernels.vertical_slash import Config
from pallas_kernels.vertical_slash.pallas_triton import (
    vertical_slash_attention_triton as vertical_slash_attention,
)


class TestPallasTriton(AttentionOpTestBase):
  OP = "vertical_slash"
  IMPLEMENTATION = "pallas_triton"
  INTERPRET = True


def _exercised(layout, t):
  """(#unmasked windows, #masked windows, #full column chunks) of a layout."""
  bs = layout.block_size
  cnt = np.asarray(layout.block_count)
  off = np.asarray(layout.block_offset)
  free = masked = 0
  for idx in np.ndindex(cnt.shape):
    r0 = idx[-1] * bs
    wins = off[idx][: cnt[idx]]
    free += int(np.sum(wins + bs - 1 <= r0))
    masked += int(np.sum(wins + bs - 1 > r0))
  full_chunks = int(np.sum(np.asarray(layout.column_count) // 64))
  return free, masked, full_chunks


def test_exercises_every_phase():
  """One layout with unmasked and masked windows and full and partial column
  chunks, so each loop of the kernel runs (checked on the layout itself)."""
  rng, seed = ktu.fresh_rng()
  t, n = 448, 2
  for _ in range(20):
    layout = ktu.random_vs_layout(rng, 1, n, t, 8, 100)
    free, masked, chunks = _exercised(layout, t)
    partial = np.asarray(layout.column_count) % 64
    if free and masked and chunks and partial.any():
      break
  else:
    pytest.fail(f"generator never exercised every phase (seed={seed})")
  q, k, v = ktu.random_qkv(rng, 1, t, n, 1, 64, jnp.float32)
  out = vertical_slash_attention(q, k, v, layout, interpret=True)
  want = ktu.reference(q, k, v, vertical_slash_mask(layout, t, t))
  ktu.assert_close(out, want, jnp.float32, seed, "all phases")


def test_block_c_32_and_zero_budgets():
  """Another column chunk size; NV = 0 (windows only) gives the same result
  as the reference."""
  rng, seed = ktu.fresh_rng()
  t, n = 192, 2
  q, k, v = ktu.random_qkv(rng, 1, t, n, 1, 64, jnp.float32)
  layout = ktu.random_vs_layout(rng, 1, n, t, 4, 40)
  cfg = Config(block_c=32, num_warps=4, num_stages=2)
  out = vertical_slash_attention(q, k, v, layout, config=cfg, interpret=True)
  want = ktu.reference(q, k, v, vertical_slash_mask(layout, t, t))
  ktu.assert_close(out, want, jnp.float32, seed, "block_c=32")
  no_cols = VerticalSlashLayout(
      layout.block_count, layout.block_offset,
      jnp.zeros_like(layout.column_count),
      jnp.zeros(layout.column_count.shape + (0,), jnp.int32),
  )
  out = vertical_slash_attention(q, k, v, no_cols, interpret=True)
  want = ktu.reference(q, k, v, vertical_slash_mask(no_cols, t, t))
  ktu.assert_close(out, want, jnp.float32, seed, "NV=0")


def test_with_index_builder():
  """Layouts from the real index builder (minference_jax.index), if present."""
  index = pytest.importorskip(
      "minference_jax.index", reason="minference_jax.index not written yet"
  )
  rng, seed = ktu.fresh_rng()
  b, t, n, kv, d = 1, 300, 4, 2, 64
  q, k, v = ktu.random_qkv(rng, b, t, n, kv, d, jnp.float32)
  indices = index.vertical_slash_indices(q, k, 40, 60)
  layout = index.vertical_slash_layout(indices, t)
  out = vertical_slash_attention(q, k, v, layout, interpret=True)
  want = ktu.reference(q, k, v, vertical_slash_mask(layout, t, t))
  ktu.assert_close(out, want, jnp.float32, seed, "index builder")


@pytest.mark.parametrize("t, n, kv, d, dtype", [
    (50, 2, 1, 64, jnp.float32),
    (300, 4, 2, 96, jnp.float32),
    (333, 4, 4, 128, jnp.bfloat16),
    (256, 8, 2, 64, jnp.float16),
])
def test_chain_layout_matches_reference(t, n, kv, d, dtype):
  """The chain kernel (O(T) layout) on the real builder's indices."""
  index = pytest.importorskip(
      "minference_jax.index", reason="minference_jax.index not written yet"
  )
  rng, seed = ktu.fresh_rng()
  q, k, v = ktu.random_qkv(rng, 1, t, n, kv, d, dtype)
  active = tuple(bool(h != 1) for h in range(n))  # head 1 inactive
  n_vertical = tuple(int(x) for x in rng.integers(1, 80, n))
  n_slash = tuple(int(x) for x in rng.integers(1, 120, n))
  indices = index.vertical_slash_indices(q, k, n_vertical, n_slash,
                                         active=active)
  layout = index.vertical_slash_chain_layout(indices, t)
  out = vertical_slash_attention(q, k, v, layout, interpret=True)
  want = ktu.reference(q, k, v, vertical_slash_chain_mask(layout, t, t))
  assert not np.asarray(out[:, :, 1]).any(), "inactive head must be zero"
  ktu.assert_close(out, want, dtype, seed, f"chain T={t} D={d}")


def test_bad_layouts_raise():
  rng, _ = ktu.fresh_rng()
  t, n = 130, 2
  q, k, v = ktu.random_qkv(rng, 1, t, n, 1, 64, jnp.float32)
  layout = ktu.random_vs_layout(rng, 1, n, t, 2, 4)
  short = VerticalSlashLayout(
      layout.block_count[..., :2], layout.block_offset[..., :2, :],
      layout.column_count[..., :2], layout.column_index[..., :2, :],
  )
  with pytest.raises(ValueError, match="block_count"):
    vertical_slash_attention(q, k, v, short, interpret=True)
  wide = VerticalSlashLayout(
      layout.block_count.astype(jnp.float32).astype(jnp.int32),
      layout.block_offset.astype(jnp.int16),
      layout.column_count, layout.column_index,
  )
  with pytest.raises(TypeError, match="int32"):
    vertical_slash_attention(q, k, v, wide, interpret=True)
  with pytest.raises(ValueError, match="block_size"):
    vertical_slash_attention(
        q, k, v,
        VerticalSlashLayout(*(getattr(layout, f) for f in (
            "block_count", "block_offset", "column_count", "column_index")),
            block_size=48),
        interpret=True,
    )
