"""Score masks, the online-softmax update and the P @ V product in registers.

The compute warpgroup's per-step arithmetic (FlashAttention-2, Dao 2023,
section 3.1.1, in base 2 as FlashAttention-3, Shah et al. 2024, computes it):
scores [64, KR] in the WGMMA register layout, masked with iota compares where
the plan says a tile needs a mask, one rescale of the running (max, sum,
output) per step, and the merge of a seed state computed elsewhere.
"""

import functools

import jax
import jax.numpy as jnp
from jax import lax
from jax.experimental import pallas as pl
from jax.experimental.pallas import mosaic_gpu as plgpu

from pallas_kernels._mosaic_gpu.config import BLOCK
from pallas_kernels._mosaic_gpu.plans import MaskFn
from pallas_kernels._mosaic_gpu.stream import EMPTY_HALF, StreamMask


def wgmma_iota(shape, dim: int) -> jax.Array:
  """int32 index along `dim` of `shape`, in the WGMMA layout."""
  return plgpu.broadcasted_iota(jnp.int32, shape, dim,
                                layout=plgpu.Layout.WGMMA)


def masked_scores(s, mask: MaskFn, i, r0, key_start):
  """s [64, KR] with the pairs outside `mask` set to -inf (query rows from
  r0, key columns from key_start)."""
  rows = r0 + wgmma_iota(s.shape, 0)
  cols = key_start + wgmma_iota(s.shape, 1)
  return jnp.where(mask(i, rows, cols), s, -jnp.inf)


def apply_stream_mask(s, mask: StreamMask, first, read_chunks, r0):
  """s [64, 64] masked as a `StreamMask` says for the 64-row tile whose
  first SMEM word is `first` (header * 2 + gathered; EMPTY_HALF for the
  padding half of a paired stream's last step, all masked).

  One `lax.switch` over: mask-free, each of `mask.masks` (on the header),
  the gathered tile's mask and all masked. `read_chunks()` reads the
  gathered tile's GATHER chunk words; it runs only on the gathered branch.
  """
  header = lax.shift_right_arithmetic(first, 1)
  gathered = (first & 1) != 0
  kind = jnp.where(gathered, len(mask.masks) + 1, mask.kind(header))
  kind = jnp.where(first == EMPTY_HALF, len(mask.masks) + 2, kind)

  def masked(keep_fn):
    def branch(s):
      rows = r0 + wgmma_iota(s.shape, 0)
      return jnp.where(keep_fn(rows, wgmma_iota(s.shape, 1)), s, -jnp.inf)
    return branch

  def gathered_branch(s):
    return masked(functools.partial(mask.gathered, read_chunks()))(s)

  branches = ([lambda s: s]
              + [masked(functools.partial(fn, header)) for fn in mask.masks]
              + [gathered_branch,
                 lambda s: s - jnp.inf])  # all masked; s's layout kept
  return lax.switch(kind, branches, s)


def softmax_update(s, m_i, l_i, acc, qk_scale, masked: bool):
  """One online-softmax step (FlashAttention-2, section 3.1.1) in base 2.

  s: a tuple of f32 score tiles [64, KR_j] of one step (one rescale for
  all); m_i, l_i [64] (m kept scaled, so p is one FMA + exp2 per score);
  acc [64, D]. With `masked`, a row whose keys so far are all masked keeps
  m = -inf; its exponent base is 0 instead (p = alpha = 0, no NaN).
  Returns (p: tuple like s, f32; acc rescaled, m_new, l_new).
  """
  row_max = functools.reduce(jnp.maximum, [s_j.max(axis=1) for s_j in s])
  m_new = jnp.maximum(m_i, row_max * qk_scale)
  base = jnp.where(m_new == -jnp.inf, 0.0, m_new) if masked else m_new
  alpha = jnp.exp2(m_i - base)
  p = tuple(jnp.exp2(s_j * qk_scale
                     - lax.broadcast_in_dim(base, s_j.shape, [0]))
            for s_j in s)
  acc = acc * lax.broadcast_in_dim(alpha, acc.shape, [0])
  l_new = l_i * alpha + functools.reduce(
      jnp.add, [p_j.sum(axis=1) for p_j in p])
  return p, acc, m_new, l_new


def empty_state(d: int):
  """(acc [64, D], m [64], l [64]) of no key yet, in the WGMMA layouts."""
  row = plgpu.Layout.WGMMA.reduce(1)
  return (plgpu.layout_cast(jnp.full((BLOCK, d), 0.0, jnp.float32),
                            plgpu.Layout.WGMMA),
          plgpu.layout_cast(jnp.full((BLOCK,), -jnp.inf, jnp.float32), row),
          plgpu.layout_cast(jnp.full((BLOCK,), 0.0, jnp.float32), row))


def merge_seed(acc, m_i, l_i, o_smem, lse_smem):
  """The state (acc, m, l) merged with a seed's keys: the seed is the state
  acc = o, m = lse, l = 1 (acc = l = 0, m = -inf on its rows without keys).
  Returns (acc, l); the max is not needed after the last step."""
  o = plgpu.load(o_smem, layout=plgpu.Layout.WGMMA).astype(jnp.float32)
  lse = plgpu.load(lse_smem, layout=plgpu.Layout.WGMMA.reduce(1))
  m_new = jnp.maximum(m_i, lse)
  base = jnp.where(m_new == -jnp.inf, 0.0, m_new)
  alpha = jnp.exp2(m_i - base)
  beta = jnp.exp2(lse - base)
  bcast = lambda x: lax.broadcast_in_dim(x, acc.shape, [0])
  return acc * bcast(alpha) + o * bcast(beta), l_i * alpha + beta


def wgmma_accumulate(acc, lhs, rhs_refs, after_issue, *, fused: bool):
  """acc + sum_j lhs[j] @ rhs_refs[j] (lhs in registers), running
  `after_issue` meanwhile.

  `fused`: one register-operand wgmma into acc's registers (`pl.run_state`
  over an initialised accumulator, as FlashAttention-3 does), with
  `after_issue` running while it is in flight. Mosaic GPU interpret mode
  (jax 0.11.2) interprets neither `run_state` nor wgmma with a register
  operand, so there the same product is a plain f32-accumulated dot of the
  16-bit operands.
  """
  if fused:
    def body(acc_ref):
      for lhs_j, rhs_ref in zip(lhs, rhs_refs, strict=True):
        plgpu.wgmma(acc_ref, lhs_j, rhs_ref)
      after_issue()

    return pl.run_state(body)(plgpu.ACC.init(acc))
  after_issue()
  for lhs_j, rhs_ref in zip(lhs, rhs_refs, strict=True):
    acc = acc + jnp.dot(lhs_j, rhs_ref[...],
                        preferred_element_type=jnp.float32)
  return acc
