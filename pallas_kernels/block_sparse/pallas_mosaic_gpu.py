"""Mosaic GPU (Hopper) Block-Sparse attention over a BlockSparseLayout.

A tile plan for the warp-specialised pipeline of `pallas_kernels._mosaic_gpu`
(FlashAttention-3, Shah et al. 2024: TMA copies into SMEM rings, wgmma):
query block m walks the key blocks `block_index[b, n, m, :block_count[b, n,
m]]` of MInference's block-sparse pattern (Jiang et al. 2024), read as scalars
from GMEM.

Only the diagonal block (id == m, necessarily the last entry of a row) needs
the causal mask; every other selected block is entirely left of the row block
and is mask-free. Rows with count 0 produce zeros.

Restrictions (the Pallas-Triton `block_sparse_attention` is the general
path): bf16/fp16, D in {64, 128, 256}, T == S a multiple of 64, block size 64,
Hopper (sm_90a) GPUs.
"""

import dataclasses
import functools

import jax
import jax.numpy as jnp
from beartype import beartype
from jax.experimental import pallas as pl
from jax.experimental.pallas import mosaic_gpu as plgpu
from jaxtyping import Array, Float, jaxtyped

from pallas_kernels import common
from pallas_kernels._mosaic_gpu import config as mgpu
from pallas_kernels._mosaic_gpu.config import BLOCK, Config, Profile
from pallas_kernels._mosaic_gpu.pipeline import tile_list_attention
from pallas_kernels._mosaic_gpu.plans import Segment, causal_mask
from pallas_kernels.layouts import BlockSparseLayout

__all__ = ["BLOCK", "Config", "Profile", "block_sparse_attention_mgpu",
           "unsupported_reason"]


@dataclasses.dataclass(frozen=True)
class _Plan:
  """Block-Sparse key tiles of one (batch, head): refs count [B, N, Tb],
  index [B, N, Tb, KB]."""

  cnt_ref: object
  idx_ref: object
  bb: jax.Array
  h: jax.Array

  def count(self, m):
    return self.cnt_ref[self.bb, self.h, m]

  def key_start(self, m, i):
    return pl.multiple_of(self.idx_ref[self.bb, self.h, m, i] * BLOCK, BLOCK)

  def segments(self, m):
    """Mask-free blocks, then the diagonal block (if selected), causal."""
    count = self.count(m)
    last = self.idx_ref[self.bb, self.h, m, jnp.maximum(count - 1, 0)]
    has_diag = (count > 0) & (last == m)
    return (Segment(count - has_diag.astype(jnp.int32), None),
            Segment(count, causal_mask))


def _check(q, k, v, block_count, block_index, block_size, config, profile):
  """Validates the inputs; returns the static dims."""
  op = "block_sparse_attention_mgpu"
  if block_size != BLOCK:
    common.check_qkv(q, k, v, op)
    raise ValueError(f"{op}: BlockSparseLayout.block_size={block_size} must"
                     f" be {BLOCK}")
  dims = mgpu.check_inputs(q, k, v, op, config, profile=profile)
  for name, arr, ndim in (("block_count", block_count, 3),
                          ("block_index", block_index, 4)):
    common.check_index_array(f"BlockSparseLayout.{name}", arr,
                             (dims.b, dims.n, dims.tb), ndim)
  return dims


@functools.partial(jax.jit, static_argnames=("block_size", "config",
                                             "interpret", "profile"))
def _fwd(q, k, v, block_count, block_index, *, block_size: int,
         config: Config, interpret, profile: Profile | None):
  dims = _check(q, k, v, block_count, block_index, block_size, config,
                profile)
  if not block_index.shape[-1]:  # never read
    block_index = jnp.zeros((dims.b, dims.n, dims.tb, 1), jnp.int32)
  return tile_list_attention(
      q, k, v, (block_count, block_index),
      plan_fn=lambda refs, bb, h: _Plan(*refs, bb, h), config=config,
      dims=dims, interpret=interpret, name="minf_block_sparse_mgpu",
      profile=profile)


def unsupported_reason(q, *, interpret: bool = False) -> str | None:
  """Why `block_sparse_attention_mgpu` cannot run on q here (None when it can):
  the implementation's "not supported here" test for op dispatch."""
  return mgpu.unsupported_reason(q, interpret=interpret)


@jaxtyped(typechecker=beartype)
def block_sparse_attention_mgpu(
    q: Float[Array, "B T N D"],
    k: Float[Array, "B S K D"],
    v: Float[Array, "B S K D"],
    layout: BlockSparseLayout,
    *,
    config: Config | None = None,
    interpret: bool | plgpu.InterpretGPUParams = False,
    profile: Profile | None = None,
) -> Float[Array, "B T N D"]:
  """Block-Sparse attention on Hopper via Mosaic GPU (wgmma + TMA).

  Same key set and output as `pallas_kernels.block_sparse.
  block_sparse_attention`: for query block m, key blocks
  `block_index[:block_count]` (ascending, <= m), causal on the diagonal
  block; heads with zero counts produce zeros; query head n reads KV head
  n // G. Softmax and accumulation in float32.

  Args:
    q: [B, T, N, D] queries (bfloat16 or float16).
    k: [B, S, K, D] keys, S == T a multiple of 64, N % K == 0.
    v: [B, S, K, D] values.
    layout: the selected 64-wide key blocks per 64-row query block.
    config: launch knobs; `Config.get_default(D)` if None.
    interpret: False (compile for the GPU), or True /
      `plgpu.InterpretGPUParams(...)` to run Mosaic GPU interpret mode on
      CPU (tests).
    profile: None, or Mosaic GPU's profiler over the kernel's named regions
      (a diagnostic; GPU only).

  Returns:
    [B, T, N, D] attention output in q's dtype.

  Raises:
    ValueError: on shapes this kernel does not take (D not in {64, 128,
      256}, T not a multiple of 64, block size != 64) or a config whose
      SMEM does not fit.
    TypeError: on dtypes other than bfloat16/float16 or non-int32 layouts.
  """
  if config is None:
    config = Config.get_default(q.shape[-1])
  if interpret is True:
    interpret = plgpu.InterpretGPUParams()
  return _fwd(q, k, v, layout.block_count, layout.block_index,
              block_size=layout.block_size, config=config,
              interpret=interpret or None, profile=profile)
