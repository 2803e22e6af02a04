"""Mosaic GPU Vertical-Slash kernel: GPU interpret mode on CPU, and lowering.

The windows run in the Mosaic GPU tile-list kernel (interpret mode,
`plgpu.InterpretGPUParams`: warpgroups, SMEM, TMA copies and barriers are
simulated), seeded with the (output, log-sum-exp) of the gathered columns
from the Pallas-Triton column kernel (Pallas interpret mode). The output is
checked against the dense f32 reference on exactly the layout's key set. In
interpret mode the P @ V product is a plain f32-accumulated dot
(`mosaic_gpu_core._wgmma_accumulate`). The lowering test cross-lowers both
launches for an abstract H200.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import kernel_test_utils as ktu
from pallas_kernels.layouts import VerticalSlashLayout
from pallas_kernels.reference import vertical_slash_mask
from pallas_kernels.vertical_slash.mosaic_gpu import (
    Config,
    vertical_slash_attention_mgpu,
)

W2S2 = Config(compute_wgs=2, max_concurrent_steps=2,
              use_schedule_barrier=False)
W1S3 = Config(compute_wgs=1, max_concurrent_steps=3)

CASES = [
    # b, t, n, kv, d, dtype, n_slash, n_vert, config
    (1, 256, 4, 2, 64, jnp.bfloat16, 3, 40, W2S2),
    (1, 192, 4, 1, 128, jnp.float16, 2, 100, None),  # > 1 column chunk
    (2, 128, 2, 2, 64, jnp.bfloat16, 2, 0, W1S3),  # no columns: unseeded
    (1, 192, 4, 4, 64, jnp.float16, 0, 50, None),  # columns only
    (1, 128, 2, 1, 256, jnp.bfloat16, 2, 30, None),  # 1 warpgroup, D = 256
]


@pytest.mark.parametrize("b,t,n,kv,d,dtype,n_slash,n_vert,config", CASES)
def test_matches_reference(b, t, n, kv, d, dtype, n_slash, n_vert, config):
  rng, seed = ktu.fresh_rng()
  q, k, v = ktu.random_qkv(rng, b, t, n, kv, d, dtype)
  layout = ktu.random_vs_layout(rng, b, n, t, n_slash, n_vert, inactive=(1,))
  out = vertical_slash_attention_mgpu(q, k, v, layout, config=config,
                                      interpret=True)
  assert out.shape == q.shape and out.dtype == q.dtype
  want = ktu.reference(q, k, v, vertical_slash_mask(layout, t, t))
  got = np.asarray(out.astype(jnp.float32))
  assert np.isfinite(got).all(), f"non-finite output (seed={seed})"
  assert not got[:, :, 1].any(), f"inactive head not zero (seed={seed})"
  if np.linalg.norm(want):
    ktu.assert_close(out, want, dtype, seed, f"T={t} D={d} {config}")


def test_diagonal_window_plus_all_columns_is_causal():
  """Window [r0, r0 + 64) and every column left of it == causal attention:
  mask-free column chunks, the seeded state and the diagonal mask."""
  rng, seed = ktu.fresh_rng()
  b, t, n, kv, d = 1, 256, 2, 1, 64
  tb = t // 64
  q, k, v = ktu.random_qkv(rng, b, t, n, kv, d, jnp.bfloat16)
  r0 = jnp.arange(tb, dtype=jnp.int32) * 64
  cols = jnp.where(jnp.arange(t - 64)[None, :] < r0[:, None],
                   jnp.arange(t - 64)[None, :], 7)  # padding: in range
  bcast = lambda x: jnp.broadcast_to(x, (b, n) + x.shape).astype(jnp.int32)
  layout = VerticalSlashLayout(
      block_count=bcast(jnp.ones((tb,))), block_offset=bcast(r0[:, None]),
      column_count=bcast(r0), column_index=bcast(cols))
  out = vertical_slash_attention_mgpu(q, k, v, layout, interpret=True)
  causal = jnp.tril(jnp.ones((t, t), bool))[None, None]
  ktu.assert_close(out, ktu.reference(q, k, v, causal), jnp.bfloat16, seed,
                   "diagonal window + columns")


def test_windows_past_the_sequence_end():
  """Windows starting in the last 63 rows (loaded from S - 64, masked to
  their own columns), windows right of some rows (rows with no key of a
  tile), padding offsets past the count."""
  rng, seed = ktu.fresh_rng()
  t, n = 192, 2
  q, k, v = ktu.random_qkv(rng, 1, t, n, 1, 64, jnp.float16)
  offset = np.full((1, n, 3, 3), t - 1, np.int32)  # padding
  count = np.array([[[1, 2, 2], [1, 1, 3]]], np.int32)
  offset[0, 0, 0, :1] = [20]
  offset[0, 0, 1, :2] = [10, 100]
  offset[0, 0, 2, :2] = [3, t - 1]
  offset[0, 1, 0, :1] = [63]
  offset[0, 1, 1, :1] = [127]
  offset[0, 1, 2, :3] = [10, 74, t - 40]
  ccount = np.array([[[0, 3, 2], [0, 0, 1]]], np.int32)
  cindex = np.full((1, n, 3, 4), t - 1, np.int32)
  cindex[0, 0, 1, :3] = [1, 2, 5]
  cindex[0, 0, 2, :2] = [1, 2]
  cindex[0, 1, 2, :1] = [5]
  layout = VerticalSlashLayout(*map(jnp.asarray,
                                    (count, offset, ccount, cindex)))
  ktu.check_vs_layout(layout, t)
  out = vertical_slash_attention_mgpu(q, k, v, layout, interpret=True)
  want = ktu.reference(q, k, v, vertical_slash_mask(layout, t, t))
  ktu.assert_close(out, want, jnp.float16, seed, "windows past the end")


def test_bad_inputs_raise():
  rng, _ = ktu.fresh_rng()
  q, k, v = ktu.random_qkv(rng, 1, 128, 2, 1, 64, jnp.bfloat16)
  layout = ktu.random_vs_layout(rng, 1, 2, 128, 2, 8)
  call = lambda *a, **kw: vertical_slash_attention_mgpu(*a, interpret=True,
                                                        **kw)
  with pytest.raises(TypeError, match="bfloat16 or float16"):
    f32 = lambda x: x.astype(jnp.float32)
    call(f32(q), f32(k), f32(v), layout)
  with pytest.raises(ValueError, match="multiple of 64"):
    lay = ktu.random_vs_layout(rng, 1, 2, 100, 2, 8)
    call(q[:, :100], k[:, :100], v[:, :100], lay)
  with pytest.raises(ValueError, match="head dim"):
    q96, k96, v96 = ktu.random_qkv(rng, 1, 128, 2, 1, 96, jnp.bfloat16)
    call(q96, k96, v96, layout)
  with pytest.raises(ValueError, match="at least 80"):
    lay = ktu.random_vs_layout(rng, 1, 2, 64, 1, 0)
    call(q[:, :64], k[:, :64], v[:, :64], lay)
  with pytest.raises(ValueError, match="block_offset"):
    call(q, k, v, VerticalSlashLayout(
        layout.block_count, layout.block_offset[0], layout.column_count,
        layout.column_index))
  with pytest.raises(ValueError, match="block_size"):
    call(q, k, v, VerticalSlashLayout(
        layout.block_count, layout.block_offset, layout.column_count,
        layout.column_index, block_size=32))
  with pytest.raises(ValueError, match="SMEM"):
    q256, k256, v256 = ktu.random_qkv(rng, 1, 128, 2, 1, 256, jnp.bfloat16)
    call(q256, k256, v256, layout, config=W2S2)


@pytest.mark.parametrize("d,n_vert,config", [(128, 80, None), (64, 80, None),
                                             (256, 80, None),
                                             (128, 0, W2S2)])
def test_lowers_for_h200(d, n_vert, config):
  """One Mosaic GPU call (wgmma, TMA) plus, with columns, one Triton call."""
  b, t, n, kv, n_slash = 1, 1024, 4, 2, 9
  tb = t // 64
  q = jax.ShapeDtypeStruct((b, t, n, d), jnp.bfloat16)
  k = jax.ShapeDtypeStruct((b, t, kv, d), jnp.bfloat16)
  i32 = lambda *s: jax.ShapeDtypeStruct(s, jnp.int32)

  def fn(q, k, v, c, o, cc, ci):
    return vertical_slash_attention_mgpu(
        q, k, v, VerticalSlashLayout(c, o, cc, ci), config=config)

  args = (q, k, k, i32(b, n, tb), i32(b, n, tb, n_slash), i32(b, n, tb),
          i32(b, n, tb, n_vert))
  text = ktu.lower_for_gpu(fn, args).as_text()
  assert text.count("stablehlo.custom_call @mosaic_gpu") == 1
  assert text.count("__gpu$xla.gpu.triton") == (1 if n_vert else 0)
  for op in ("wgmma", "cp.async.bulk", "mbarrier"):
    assert op in text, f"no {op} in the lowered module"
