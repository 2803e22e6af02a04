"""The tile-list pipeline itself, under a plan of the test's own (CPU).

The op kernels drive the pipeline with 64-row tiles (Block-Sparse, A-shape)
and stream plans (Vertical-Slash, 64- and 128-row slots); here a plain plan
of 128-row key tiles at 8-aligned starts with a one- or two-slot ring runs in
Mosaic GPU interpret mode against the f32 reference on exactly its tiles'
keys (mask-free, or causal on every tile), and lowers for an H200.
"""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.experimental import pallas as pl
from jax.experimental.pallas import mosaic_gpu as plgpu

import kernel_test_utils as ktu
from pallas_kernels._mosaic_gpu.config import Config, Dims
from pallas_kernels._mosaic_gpu.pipeline import (
    smem_transforms,
    tile_list_attention,
)
from pallas_kernels._mosaic_gpu.plans import Segment, causal_mask

KEY_ROWS = 128


@dataclasses.dataclass(frozen=True)
class _Tiles128:
  """refs count [B, N, Tb], start [B, N, Tb, KT]: tile i of query block m
  holds keys [start, start + 128); every tile mask-free, or causal."""

  cnt_ref: object
  start_ref: object
  bb: jax.Array
  h: jax.Array
  causal: bool

  def count(self, m):
    return self.cnt_ref[self.bb, self.h, m]

  def key_start(self, m, i):
    return pl.multiple_of(self.start_ref[self.bb, self.h, m, i], 8)

  def segments(self, m):
    return (Segment(self.count(m), causal_mask if self.causal else None),)


def _random_tiles(rng, t: int, n: int, max_tiles: int = 4):
  """(count [1, n, Tb], start [1, n, Tb, max_tiles], keep [1, n, T, T]):
  per query block up to max_tiles 128-row tiles at random 8-aligned starts,
  distinct 128-row slabs shifted by one offset per block (no key read
  twice), and their keys. T a multiple of 128, at least 128 * (max_tiles +
  1)."""
  tb = t // 64
  count = rng.integers(0, max_tiles + 1, (1, n, tb)).astype(np.int32)
  start = np.zeros((1, n, tb, max_tiles), np.int32)
  keep = np.zeros((1, n, t, t), bool)
  for h, m in np.ndindex(n, tb):
    c = count[0, h, m]
    slabs = np.sort(rng.choice(t // KEY_ROWS - 1, c, replace=False))
    s = slabs * KEY_ROWS + 8 * int(rng.integers(0, KEY_ROWS // 8))
    start[0, h, m, :c] = s
    for s0 in s:
      keep[0, h, m * 64:(m + 1) * 64, s0:s0 + KEY_ROWS] = True
  return count, start, keep


def _attention(q, k, v, count, start, *, config, causal, interpret):
  b, t, n, d = q.shape
  dims = Dims(b, t, n, n // k.shape[2], d, t // 64)
  return tile_list_attention(
      q, k, v, (count, start),
      plan_fn=lambda refs, bb, h: _Tiles128(*refs, bb, h, causal),
      config=config, dims=dims, interpret=interpret, name="tiles128",
      key_rows=KEY_ROWS)


@pytest.mark.parametrize("config,causal", [
    (Config(compute_wgs=2, max_concurrent_steps=1), False),
    (Config(compute_wgs=1, max_concurrent_steps=2), True)])
def test_128_row_tiles(config, causal):
  """128-row key tiles (128-byte swizzle, one N = 128 QK wgmma per step)
  with a one-slot ring: the output is attention over exactly the tiles'
  keys (interpret mode), and the kernel lowers for an H200."""
  rng, seed = ktu.fresh_rng()
  b, t, n, kv, d = 1, 640, 2, 1, 128
  tb = t // 64
  q, k, v = ktu.random_qkv(rng, b, t, n, kv, d, jnp.bfloat16)
  count, start, keep = _random_tiles(rng, t, n)
  if causal:
    keep &= np.tril(np.ones((t, t), bool))[None, None]
  out = _attention(q, k, v, jnp.asarray(count), jnp.asarray(start),
                   config=config, causal=causal,
                   interpret=plgpu.InterpretGPUParams())
  ktu.assert_close(out, ktu.reference(q, k, v, jnp.asarray(keep)),
                   jnp.bfloat16, seed, f"128-row tiles {config} {causal=}")
  i32 = lambda *s: jax.ShapeDtypeStruct(s, jnp.int32)
  text = ktu.lower_for_gpu(
      lambda *a: _attention(*a, config=config, causal=causal,
                            interpret=None),
      (q, k, v, i32(b, n, tb), i32(b, n, tb, 4))).as_text()
  assert "tiles128_d128" in text and "_k128" in text
  assert "wgmma" in text and "cp.async.bulk" in text


def test_key_rows_must_fit_the_swizzled_tiling():
  for rows in (80, 320):
    with pytest.raises(ValueError, match="key_rows"):
      smem_transforms(rows)
  q = jnp.zeros((1, 256, 2, 64), jnp.bfloat16)
  dims = Dims(1, 256, 2, 2, 64, 4)
  with pytest.raises(ValueError, match="stream plans"):
    tile_list_attention(q, q[:, :, :1], q[:, :, :1], (), plan_fn=None,
                        config=Config(), dims=dims, interpret=None,
                        name="x", key_rows=192, stream=True)

