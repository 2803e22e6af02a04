"""Cross-lowers every Pallas-Triton kernel for abstract A100/H200 devices on
CPU.

Interpret mode hides GPU-only failures (power-of-two tensor sizes, 2-D dots,
unsupported primitives). Lowering under an abstract CUDA device runs the full
Pallas -> Triton-IR lowering without a GPU (reference/jax_pallas.md section 4),
so those errors fail here. The 1M-token x 32-head case also checks that every
pointer offset into a > 4 GiB array is computed in 64 bits.
"""

import re

import jax
import jax.numpy as jnp
import pytest

import kernel_test_utils as ktu

from pallas_kernels.a_shape.pallas_triton import a_shape_attention_triton
from pallas_kernels.block_sparse.pallas_triton import (
    block_sparse_attention_triton,
)
from pallas_kernels.flash.pallas_triton import flash_attention_triton
from pallas_kernels.layouts import (
    AShapeLayout,
    BlockSparseLayout,
    VerticalSlashChainLayout,
    VerticalSlashLayout,
)
from pallas_kernels.vertical_slash.pallas_triton import (
    vertical_slash_attention_triton,
)
from pallas_kernels.vertical_slash.tile_steps import tile_steps
from pallas_kernels.vs_chain_layout import vs_chain_layout
from pallas_kernels.vs_estimate import Config as EstimateConfig
from pallas_kernels.vs_estimate import vs_line_scores

jax_triton_lowering = pytest.importorskip(
    "jax._src.pallas.triton.lowering",
    reason="needs jax's Pallas-Triton lowering (jax 0.11.2)",
)
from jax._src.lib.mlir import ir  # noqa: E402


def _i32(*shape):
  return jax.ShapeDtypeStruct(shape, jnp.int32)


def _cases(b, t, n, kv, d, dtype, n_slash=96, n_vert=80, top_k=7):
  """(name, fn, abstract args) per kernel for the given shapes."""
  tb = -(-t // 64)
  q = jax.ShapeDtypeStruct((b, t, n, d), dtype)
  k = jax.ShapeDtypeStruct((b, t, kv, d), dtype)

  def vs(q, k, v, c, o, cc, ci):
    return vertical_slash_attention_triton(q, k, v,
                                           VerticalSlashLayout(c, o, cc, ci))

  def vs_chain(q, k, v, nxt, run_length, run_next, vert, prefix):
    return vertical_slash_attention_triton(q, k, v, VerticalSlashChainLayout(
        nxt, run_length, run_next, vert, prefix))

  def bsp(q, k, v, c, i):
    return block_sparse_attention_triton(q, k, v, BlockSparseLayout(c, i))

  def ash(q, k, v, ni, nl):
    return a_shape_attention_triton(q, k, v, AShapeLayout(ni, nl))

  return [
      ("flash", flash_attention_triton, (q, k, k)),
      ("a_shape", ash, (q, k, k, _i32(n), _i32(n))),
      ("vertical_slash", vs, (q, k, k, _i32(b, n, tb), _i32(b, n, tb, n_slash),
                              _i32(b, n, tb), _i32(b, n, tb, n_vert))),
      ("vertical_slash_chain", vs_chain,
       (q, k, k, *[_i32(b, n, t + 65)] * 3, _i32(b, n, n_vert),
        _i32(b, n, t + 65))),
      ("block_sparse", bsp, (q, k, k, _i32(b, n, tb), _i32(b, n, tb, top_k))),
  ]


def _triton_modules(lowered) -> list[str]:
  """The Triton IR (text) of every Pallas custom call in a lowered module."""
  calls = []

  def walk(op):
    for region in op.regions:
      for block in region.blocks:
        for child in block.operations:
          if child.operation.name == "stablehlo.custom_call":
            calls.append(child)
          walk(child.operation)

  walk(lowered.compiler_ir("stablehlo").operation)
  texts = []
  for call in calls:
    if "mhlo.backend_config" not in call.attributes:
      continue
    config = ir.DictAttr(call.attributes["mhlo.backend_config"])
    blob = ir.StringAttr(config["ir"]).value_bytes
    with jax_triton_lowering._new_ir_context():
      texts.append(str(ir.Module.parse(blob)))
  return texts


@pytest.mark.parametrize("device_kind", ["NVIDIA A100", "NVIDIA H200"])
@pytest.mark.parametrize(
    "d,t,kv", [(128, 1000, 2), (96, 333, 4), (256, 200, 4), (64, 40, 1)]
)
def test_kernels_lower_for_gpu(device_kind, d, t, kv):
  """Every kernel lowers to Triton IR (bf16; T not a multiple of 64)."""
  for name, fn, args in _cases(2, t, 4, kv, d, jnp.bfloat16):
    lowered = ktu.lower_for_gpu(fn, args, device_kind)
    modules = _triton_modules(lowered)
    assert len(modules) == 1, f"{name}: expected one Pallas call"
    assert "tt.dot" in modules[0], f"{name}: no tensor-core dot in the IR"


def test_float16_and_float32_lower():
  for dtype in (jnp.float16, jnp.float32):
    for name, fn, args in _cases(1, 130, 2, 1, 128, dtype):
      assert _triton_modules(ktu.lower_for_gpu(fn, args, "NVIDIA H200")), name


_SPLAT = re.compile(r"(%\w+) = tt\.splat (%arg\d+) ")
_ADDPTR = re.compile(r"tt\.addptr (%\w+), %\w+ : [^,]+, (.*)$")


def _offset_widths(module: str) -> dict[str, set[str]]:
  """Kernel argument -> integer widths of the offsets added to its pointer."""
  splat_of = {}
  widths: dict[str, set[str]] = {}
  for line in module.splitlines():
    if m := _SPLAT.search(line):
      splat_of[m.group(1)] = m.group(2)
    if m := _ADDPTR.search(line):
      base = splat_of.get(m.group(1), m.group(1))
      width = re.search(r"i(\d+)>?\s*$", m.group(2).strip()).group(1)
      widths.setdefault(base, set()).add(width)
  return widths


def test_one_million_tokens_32_heads_use_64_bit_offsets():
  """1M tokens x 32 heads x 128 (bf16: 8 GiB per array) in ONE call.

  The public MInference kernels overflow int32 at this size (head stride
  2^20 * 128 * 31 > 2^31). Pallas computes each load's offsets from the
  array's full shape and switches to 64 bits when the array exceeds 4 GiB;
  this asserts that every pointer into q, k, v and the output gets 64-bit
  offsets in each kernel.
  """
  for name, fn, args in _cases(1, 1 << 20, 32, 32, 128, jnp.bfloat16,
                               n_slash=6096, n_vert=1000, top_k=100):
    (module,) = _triton_modules(ktu.lower_for_gpu(fn, args, "NVIDIA H200"))
    widths = _offset_widths(module)
    n_index_args = len(args) - 3
    q_arg, out_arg = n_index_args, len(args)  # kernel args: index.., q, k, v, o
    big = [f"%arg{i}" for i in (q_arg, q_arg + 1, q_arg + 2, out_arg)]
    for arg in big:
      assert widths.get(arg) == {"64"}, (
          f"{name}: offsets into {arg} use widths {widths.get(arg)}"
      )


@pytest.mark.parametrize("device_kind", ["NVIDIA A100", "NVIDIA H200"])
@pytest.mark.parametrize("t,n,kv,d,last_q,block_k", [
    (1000, 4, 2, 128, 64, 64), (333, 6, 2, 96, 50, 128),
    (200, 2, 1, 64, 16, 16),
])
@pytest.mark.parametrize("scratch", ["skewed_store", "probs", "logits"])
def test_vs_estimate_lowers_for_gpu(device_kind, t, n, kv, d, last_q,
                                    block_k, scratch):
  """Both estimate launches lower; the scores launch holds the CTA barriers
  around its scratch round trip (which interpret mode cannot check): two
  in each of the two tile loops (unmasked, masked), and with the skewed
  store one more after zeroing the scratch."""
  q = jax.ShapeDtypeStruct((1, t, n, d), jnp.bfloat16)
  k = jax.ShapeDtypeStruct((1, t, kv, d), jnp.bfloat16)
  config = EstimateConfig(block_k=block_k, scratch=scratch)
  fn = lambda q, k: vs_line_scores(q, k, last_q, config=config)
  stats, scores = _triton_modules(ktu.lower_for_gpu(fn, (q, k), device_kind))
  assert "tt.dot" in stats and "tt.dot" in scores
  assert "gpu.barrier" not in stats
  assert scores.count("gpu.barrier") == (5 if scratch == "skewed_store"
                                         else 4)


def test_vs_estimate_one_million_tokens_use_64_bit_key_offsets():
  """K at 1M tokens x 32 KV heads x 128 is 8 GiB: 64-bit offsets into it."""
  q = jax.ShapeDtypeStruct((1, 1 << 20, 32, 128), jnp.bfloat16)
  fn = lambda q, k: vs_line_scores(q, k, 64)
  for module in _triton_modules(ktu.lower_for_gpu(fn, (q, q), "NVIDIA H200")):
    assert _offset_widths(module).get("%arg1") == {"64"}


@pytest.mark.parametrize("device_kind", ["NVIDIA A100", "NVIDIA H200"])
@pytest.mark.parametrize("t,bs,ns,nv", [(1 << 20, 64, 6096, 1000),
                                        (333, 16, 50, 7)])
def test_vs_chain_layout_builder_lowers_for_gpu(device_kind, t, bs, ns, nv):
  """Both launches of the chain-layout builder lower (32 heads); each
  counts leading zeros (the table launch for its search's dynamic step
  count, the runs launch for the run lengths)."""
  args = (_i32(1, 32, ns), _i32(1, 32), _i32(1, 32, nv), _i32(1, 32))
  fn = lambda s, sc, v, vc: vs_chain_layout(s, sc, v, vc, t, bs)
  modules = _triton_modules(ktu.lower_for_gpu(fn, args, device_kind))
  assert len(modules) == 2
  assert all("__nv_clz" in m for m in modules)


@pytest.mark.parametrize("device_kind", ["NVIDIA A100", "NVIDIA H200"])
@pytest.mark.parametrize("t,ns", [(1 << 20, 6096), (1088, 9)])
def test_vs_tile_steps_lowers_for_gpu(device_kind, t, ns):
  """The stream plan's steps count (one Triton launch) lowers at 1M x 32
  heads with the default slash budget, and for a short T whose 17 query
  blocks leave the last program overhanging."""
  tb = t // 64
  fn = lambda c, o: tile_steps(c, o, t=t)
  modules = _triton_modules(ktu.lower_for_gpu(
      fn, (_i32(1, 32, tb), _i32(1, 32, tb, ns)), device_kind))
  assert len(modules) == 1
