"""Mosaic GPU Block-Sparse kernel: interpret mode and lowering on CPU, and on
a Hopper GPU.

The kernel runs in Mosaic GPU interpret mode (`plgpu.InterpretGPUParams`),
which simulates the warpgroups, SMEM, TMA copies and barriers, against the
dense f32 reference on exactly the layout's key set. jax 0.11.2's
interpreter runs neither `pl.run_state` nor wgmma with a register operand, so
in interpret mode the P @ V product is a plain f32-accumulated dot (see
`_mosaic_gpu.softmax.wgmma_accumulate`); Q @ K^T, the TMA/barrier pipeline,
the index reads, masks and softmax are the GPU code. The lowering test
cross-lowers the real kernel for an abstract H200 on CPU (Pallas -> Mosaic
GPU MLIR; ptxas runs only on a GPU). The `gpu` tests run the compiled kernel
on a Hopper GPU at 4K-16K tokens against the f32 reference.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import gpu_checks
import kernel_test_utils as ktu
from pallas_kernels.block_sparse.pallas_mosaic_gpu import (
    Config,
    block_sparse_attention_mgpu,
)
from pallas_kernels.layouts import BlockSparseLayout
from pallas_kernels.reference import block_sparse_mask

W2S2 = Config(compute_wgs=2, max_concurrent_steps=2,
              use_schedule_barrier=False)
W2S2P = Config(compute_wgs=2, max_concurrent_steps=2,
               use_schedule_barrier=True)  # the ping-pong schedule
W1S3 = Config(compute_wgs=1, max_concurrent_steps=3)
CASES = [
    # b, t, n, kv, d, dtype, top_k, config
    (1, 192, 4, 2, 64, jnp.bfloat16, 3, W2S2),  # odd number of row blocks
    (1, 192, 4, 1, 128, jnp.float16, 2, None),  # default, odd blocks, G = 4
    (2, 256, 2, 2, 64, jnp.float16, 4, W2S2P),
    (1, 192, 3, 1, 64, jnp.bfloat16, 3, W1S3),  # one warpgroup, G = 3
    (1, 128, 2, 1, 256, jnp.bfloat16, 2, None),  # 1 warpgroup at D = 256
    (1, 320, 4, 2, 64, jnp.bfloat16, 4,  # one producer per ring, odd blocks
     Config(compute_wgs=2, max_concurrent_steps=2, ring_producers=True)),
]


@pytest.mark.parametrize("b,t,n,kv,d,dtype,top_k,config", CASES)
def test_matches_reference(b, t, n, kv, d, dtype, top_k, config):
  rng, seed = ktu.fresh_rng()
  q, k, v = ktu.random_qkv(rng, b, t, n, kv, d, dtype)
  layout = ktu.random_bs_layout(rng, b, n, t, top_k, inactive=(0,))
  out = block_sparse_attention_mgpu(q, k, v, layout, config=config,
                                    interpret=True)
  assert out.shape == q.shape and out.dtype == q.dtype
  want = ktu.reference(q, k, v, block_sparse_mask(layout, t, t))
  got = np.asarray(out.astype(jnp.float32))
  assert not got[:, :, 0].any(), f"count-0 head not zero (seed={seed})"
  if np.linalg.norm(want):
    ktu.assert_close(out, want, dtype, seed, f"T={t} D={d} {config}")
  else:
    assert not got.any(), f"empty layout, nonzero output (seed={seed})"


def test_dense_block_layout_equals_causal():
  """Every block selected (the diagonal in every row) == dense causal."""
  rng, seed = ktu.fresh_rng()
  b, t, n, kv, d = 1, 256, 2, 1, 64
  tb = t // 64
  q, k, v = ktu.random_qkv(rng, b, t, n, kv, d, jnp.bfloat16)
  count = jnp.broadcast_to(jnp.arange(1, tb + 1, dtype=jnp.int32), (b, n, tb))
  index = jnp.broadcast_to(jnp.arange(tb, dtype=jnp.int32), (b, n, tb, tb))
  out = block_sparse_attention_mgpu(q, k, v, BlockSparseLayout(count, index),
                                    interpret=True)
  causal = jnp.tril(jnp.ones((t, t), bool))[None, None]
  ktu.assert_close(out, ktu.reference(q, k, v, causal), jnp.bfloat16, seed,
                   "dense blocks")


def test_bad_inputs_raise():
  rng, _ = ktu.fresh_rng()
  q, k, v = ktu.random_qkv(rng, 1, 128, 2, 1, 64, jnp.bfloat16)
  layout = ktu.random_bs_layout(rng, 1, 2, 128, 2)
  call = lambda *a, **kw: block_sparse_attention_mgpu(*a, interpret=True,
                                                      **kw)
  with pytest.raises(TypeError, match="bfloat16 or float16"):
    f32 = lambda x: x.astype(jnp.float32)
    call(f32(q), f32(k), f32(v), layout)
  with pytest.raises(ValueError, match="multiple of 64"):
    lay = ktu.random_bs_layout(rng, 1, 2, 100, 2)
    call(q[:, :100], k[:, :100], v[:, :100], lay)
  with pytest.raises(ValueError, match="head dim"):
    q96, k96, v96 = ktu.random_qkv(rng, 1, 128, 2, 1, 96, jnp.bfloat16)
    call(q96, k96, v96, layout)
  with pytest.raises(ValueError, match="block_index"):
    call(q, k, v, BlockSparseLayout(layout.block_count,
                                    layout.block_index[0]))
  with pytest.raises(ValueError, match="block_size"):
    call(q, k, v, BlockSparseLayout(layout.block_count, layout.block_index,
                                    block_size=32))
  with pytest.raises(ValueError, match="SMEM"):
    q256, k256, v256 = ktu.random_qkv(rng, 1, 128, 2, 1, 256, jnp.bfloat16)
    call(q256, k256, v256, layout, config=W2S2)
  with pytest.raises(ValueError, match="compute_wgs"):
    Config(compute_wgs=3)
  with pytest.raises(ValueError, match="max_concurrent_steps"):
    Config(max_concurrent_steps=0)


@pytest.mark.parametrize("d,config", [
    (128, None), (64, None), (256, None), (128, W2S2),
    (128, Config(compute_wgs=2, max_concurrent_steps=2,
                 ring_producers=True))])
def test_lowers_for_h200(d, config):
  """The kernel lowers to one Mosaic GPU custom call with wgmma and TMA."""
  b, t, n, kv = 1, 1024, 4, 2
  tb = t // 64
  q = jax.ShapeDtypeStruct((b, t, n, d), jnp.bfloat16)
  k = jax.ShapeDtypeStruct((b, t, kv, d), jnp.bfloat16)
  i32 = lambda *s: jax.ShapeDtypeStruct(s, jnp.int32)

  def fn(q, k, v, count, index):
    return block_sparse_attention_mgpu(
        q, k, v, BlockSparseLayout(count, index), config=config)

  lowered = ktu.lower_for_gpu(fn, (q, k, k, i32(b, n, tb), i32(b, n, tb, 7)))
  text = lowered.as_text()
  assert text.count("stablehlo.custom_call @mosaic_gpu") == 1
  for op in ("wgmma", "cp.async.bulk", "mbarrier"):
    assert op in text, f"no {op} in the lowered module"



# GPU checks at 4K-16K tokens (D = 128 with three configs, D = 64 / 256 with
# their defaults), GQA 4 and 1, bf16 and fp16, head 0 empty.
GPU_CASES = [
    (t, n, kv, 128, dtype, config)
    for t in (4096, 16384)
    for n, kv, dtype in ((8, 2, jnp.bfloat16), (8, 8, jnp.float16))
    for config in (None, W2S2P, W1S3)
] + [(4096, 8, 2, 64, jnp.bfloat16, None),
     (4096, 4, 1, 256, jnp.bfloat16, None)]


@gpu_checks.hopper_test
@pytest.mark.parametrize("t,n,kv,d,dtype,config", GPU_CASES)
def test_matches_reference_on_gpu(t, n, kv, d, dtype, config):
  """The compiled kernel against the f32 reference on random layouts of up
  to 100 blocks per row (the diagonal mostly present, varied counts)."""
  rng, seed = ktu.fresh_rng()
  q, k, v = ktu.random_qkv(rng, 1, t, n, kv, d, dtype)
  layout = ktu.random_bs_layout(rng, 1, n, t, 100, inactive=(0,))
  out = block_sparse_attention_mgpu(q, k, v, layout, config=config)
  gpu_checks.assert_matches_reference(
      out, q, k, v, block_sparse_mask(layout, t, t), seed=seed,
      what=f"T={t} N={n} K={kv} D={d} {config}", inactive_heads=(0,))
