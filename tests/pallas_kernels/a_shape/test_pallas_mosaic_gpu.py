"""Mosaic GPU A-shape kernel: interpret mode and lowering on CPU, and on a
Hopper GPU.

As for the Block-Sparse Mosaic GPU kernel: Mosaic GPU interpret mode
(`plgpu.InterpretGPUParams`) simulates the warpgroups, SMEM, TMA copies and
barriers; the output is checked against the dense f32 reference on exactly
the A-shape key set (sinks outside the window plus the causal window,
per-head sizes). In interpret mode the P @ V product is a plain
f32-accumulated dot (`_mosaic_gpu.softmax.wgmma_accumulate`). The lowering
test cross-lowers the real kernel for an abstract H200; the `gpu` tests run
it on a Hopper GPU at 4K-16K tokens.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import gpu_checks
import kernel_test_utils as ktu
from pallas_kernels.a_shape.pallas_mosaic_gpu import (
    Config,
    a_shape_attention_mgpu,
)
from pallas_kernels.layouts import AShapeLayout
from pallas_kernels.reference import a_shape_mask

W2S2 = Config(compute_wgs=2, max_concurrent_steps=2,
              use_schedule_barrier=False)
W2S2P = Config(compute_wgs=2, max_concurrent_steps=2,
               use_schedule_barrier=True)  # the ping-pong schedule
W1S3 = Config(compute_wgs=1, max_concurrent_steps=3)


def _small_sizes_layout(rng, n, t, inactive=()):
  """Per-head sizes around the tile size (sink and window edges inside
  tiles, windows of 1, sink-only heads); heads in `inactive` get 0 / 0."""
  n_init = rng.integers(0, 2 * 64 + 8, n)
  n_local = rng.integers(0, 3 * 64 + 8, n)
  n_local[rng.random(n) < 0.2] = 1
  for h in inactive:
    n_init[h] = n_local[h] = 0
  return AShapeLayout(jnp.asarray(n_init, jnp.int32),
                      jnp.asarray(n_local, jnp.int32))


CASES = [
    # b, t, n, kv, d, dtype, small sizes, config
    (1, 192, 4, 2, 64, jnp.bfloat16, True, W2S2),  # odd number of blocks
    (1, 256, 4, 1, 128, jnp.float16, True, None),  # default, G = 4
    (1, 192, 4, 4, 64, jnp.bfloat16, False, None),  # sizes up to T + 8
    (2, 128, 2, 2, 64, jnp.float16, True, W1S3),
    (1, 128, 2, 1, 256, jnp.bfloat16, True, None),  # 1 warpgroup at D = 256
]


@pytest.mark.parametrize("b,t,n,kv,d,dtype,small,config", CASES)
def test_matches_reference(b, t, n, kv, d, dtype, small, config):
  rng, seed = ktu.fresh_rng()
  q, k, v = ktu.random_qkv(rng, b, t, n, kv, d, dtype)
  if small:
    layout = _small_sizes_layout(rng, n, t, inactive=(1,))
  else:
    layout = ktu.random_a_shape_layout(rng, n, t, inactive=(1,))
  out = a_shape_attention_mgpu(q, k, v, layout, config=config, interpret=True)
  assert out.shape == q.shape and out.dtype == q.dtype
  want = ktu.reference(q, k, v, a_shape_mask(layout, t, t))
  ktu.assert_close(out, want, dtype, seed, f"T={t} D={d} {layout}")
  assert not np.asarray(out[:, :, 1].astype(jnp.float32)).any(), (
      f"inactive head not zero (seed={seed})")


def test_minference_like_sizes():
  """MInference's 128 + 3968 scaled down (sink of 2 tiles, window of many,
  mask-free middle tiles), a window of 1, a sink overlapping the window, a
  sink-only head, tile-aligned sizes."""
  rng, seed = ktu.fresh_rng()
  t, n = 448, 6
  q, k, v = ktu.random_qkv(rng, 1, t, n, 2, 64, jnp.bfloat16)
  layout = AShapeLayout(
      n_init=jnp.array([128, 0, 200, 5, 64, 70], jnp.int32),
      n_local=jnp.array([200, 1, 150, 0, 128, 64], jnp.int32),
  )
  out = a_shape_attention_mgpu(q, k, v, layout, interpret=True)
  want = ktu.reference(q, k, v, a_shape_mask(layout, t, t))
  ktu.assert_close(out, want, jnp.bfloat16, seed, "fixed sizes")


def test_window_covering_everything_is_causal_attention():
  rng, seed = ktu.fresh_rng()
  t, n = 192, 2
  q, k, v = ktu.random_qkv(rng, 1, t, n, 1, 64, jnp.float16)
  layout = AShapeLayout(n_init=jnp.array([0, 3], jnp.int32),
                        n_local=jnp.full((n,), t, jnp.int32))
  out = a_shape_attention_mgpu(q, k, v, layout, interpret=True)
  causal = jnp.tril(jnp.ones((t, t), bool))[None, None]
  ktu.assert_close(out, ktu.reference(q, k, v, causal), jnp.float16, seed,
                   "window == T")


def test_bad_inputs_raise():
  rng, _ = ktu.fresh_rng()
  q, k, v = ktu.random_qkv(rng, 1, 128, 2, 1, 64, jnp.bfloat16)
  layout = AShapeLayout(jnp.array([4, 0], jnp.int32),
                        jnp.array([64, 0], jnp.int32))
  call = lambda *a, **kw: a_shape_attention_mgpu(*a, interpret=True, **kw)
  with pytest.raises(TypeError, match="bfloat16 or float16"):
    f32 = lambda x: x.astype(jnp.float32)
    call(f32(q), f32(k), f32(v), layout)
  with pytest.raises(ValueError, match="multiple of 64"):
    call(q[:, :100], k[:, :100], v[:, :100], layout)
  with pytest.raises(ValueError, match="head dim"):
    q96, k96, v96 = ktu.random_qkv(rng, 1, 128, 2, 1, 96, jnp.bfloat16)
    call(q96, k96, v96, layout)
  with pytest.raises(ValueError, match="n_init"):
    call(q, k, v, AShapeLayout(jnp.zeros((3,), jnp.int32),
                               jnp.zeros((3,), jnp.int32)))
  with pytest.raises(TypeError, match="int32"):
    call(q, k, v, AShapeLayout(jnp.zeros((2,), jnp.float32),
                               jnp.zeros((2,), jnp.int32)))
  with pytest.raises(ValueError, match="SMEM"):
    q256, k256, v256 = ktu.random_qkv(rng, 1, 128, 2, 1, 256, jnp.bfloat16)
    call(q256, k256, v256, layout, config=W2S2)


@pytest.mark.parametrize("d,config", [(128, None), (64, None), (256, None),
                                      (128, W2S2)])
def test_lowers_for_h200(d, config):
  """The kernel lowers to one Mosaic GPU custom call with wgmma and TMA."""
  b, t, n, kv = 1, 1024, 4, 2
  q = jax.ShapeDtypeStruct((b, t, n, d), jnp.bfloat16)
  k = jax.ShapeDtypeStruct((b, t, kv, d), jnp.bfloat16)
  sizes = jax.ShapeDtypeStruct((n,), jnp.int32)

  def fn(q, k, v, n_init, n_local):
    return a_shape_attention_mgpu(q, k, v, AShapeLayout(n_init, n_local),
                                  config=config)

  text = ktu.lower_for_gpu(fn, (q, k, k, sizes, sizes)).as_text()
  assert text.count("stablehlo.custom_call @mosaic_gpu") == 1
  for op in ("wgmma", "cp.async.bulk", "mbarrier"):
    assert op in text, f"no {op} in the lowered module"


# GPU checks at 4K-16K tokens: MInference's 128 sink + 3968 local keys and
# random per-head sizes (head 0 empty), D = 128 with two configs, D = 64 and
# 256 with their defaults.
GPU_CASES = [
    (t, n, kv, 128, dtype, sizes, config)
    for t in (4096, 16384)
    for n, kv, dtype, sizes in ((8, 2, jnp.float16, "minference"),
                                (8, 2, jnp.bfloat16, "random"))
    for config in (None, W2S2P)
] + [(4096, 8, 2, 64, jnp.bfloat16, "random", None),
     (4096, 4, 1, 256, jnp.float16, "random", None)]


@gpu_checks.hopper_test
@pytest.mark.parametrize("t,n,kv,d,dtype,sizes,config", GPU_CASES)
def test_matches_reference_on_gpu(t, n, kv, d, dtype, sizes, config):
  rng, seed = ktu.fresh_rng()
  q, k, v = ktu.random_qkv(rng, 1, t, n, kv, d, dtype)
  if sizes == "minference":
    layout = AShapeLayout(jnp.full((n,), 128, jnp.int32),
                          jnp.full((n,), 3968, jnp.int32))
  else:
    layout = ktu.random_a_shape_layout(rng, n, t, inactive=(0,))
  out = a_shape_attention_mgpu(q, k, v, layout, config=config)
  gpu_checks.assert_matches_reference(
      out, q, k, v, a_shape_mask(layout, t, t), seed=seed,
      what=f"T={t} N={n} K={kv} D={d} {sizes} {config}",
      inactive_heads=(0,) if sizes == "random" else ())
