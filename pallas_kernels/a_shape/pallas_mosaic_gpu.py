"""Mosaic GPU (Hopper) A-shape attention: sink keys plus a causal local window.

A tile plan for the warp-specialised pipeline of `pallas_kernels._mosaic_gpu`
(FlashAttention-3, Shah et al. 2024: TMA copies into SMEM rings, wgmma). Row
r reads key j <= r iff j < n_init (sink) or r - j < n_local (window), each key
once: MInference's A-shape (Jiang et al. 2024), StreamingLLM's attention sinks
plus a sliding window (Xiao et al. 2024), with per-head sizes read from GMEM.
Query block m (rows [r0, r0 + 64)) walks, in order:

1. sink tiles [0, 64), [64, 128), ... over [0, min(n_init, r0 + 64 -
   n_local)), keeping only keys outside the row's window (the window tiles
   count the others): mask-free while the whole tile is a sink left of every
   row's window, masked on the (at most 2) tiles that straddle the sink end or
   the window start;
2. window tiles at 64-aligned starts from the one holding r0 + 1 - n_local up
   to the diagonal tile [r0, r0 + 64): the first (at most 2) straddle the
   window start and are masked, the middle ones are inside every row's
   window and mask-free, the diagonal tile gets the causal (and window) mask.

A head with n_init = n_local = 0 walks no tile and produces zeros.

Restrictions (the Pallas-Triton `a_shape_attention` is the general path):
bf16/fp16, D in {64, 128, 256}, T == S a multiple of 64, Hopper (sm_90a).
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
from pallas_kernels._mosaic_gpu.plans import Segment
from pallas_kernels.layouts import AShapeLayout

__all__ = ["Config", "Profile", "a_shape_attention_mgpu",
           "unsupported_reason"]


@dataclasses.dataclass(frozen=True)
class _Plan:
  """A-shape key tiles of one head: sizes n_init, n_local (int32 [])."""

  n_init: jax.Array
  n_local: jax.Array

  def _bounds(self, m):
    """(n_sink_free, n_sink, lo, m_lo, n_window) of query block m.

    Sink tiles [0, n_sink), the first n_sink_free mask-free; window tiles
    lo .. m (64-aligned key blocks; n_window of them, 0 without a window),
    mask-free on [m_lo, m).
    """
    zero = jnp.int32(0)
    r0 = m * BLOCK
    ni, nl = self.n_init, self.n_local
    sink_end = jnp.maximum(jnp.minimum(ni, r0 + BLOCK - nl), zero)
    sink_free_end = jnp.maximum(jnp.minimum(ni, r0 + 1 - nl), zero)
    lo = common.idiv(jnp.maximum(r0 + 1 - nl, zero), BLOCK)
    first_free = common.cdiv(jnp.maximum(r0 + BLOCK - nl, zero), BLOCK)
    m_lo = jnp.clip(first_free, lo, m)
    n_window = jnp.where(nl > 0, m + 1 - lo, zero)
    return (common.idiv(sink_free_end, BLOCK), common.cdiv(sink_end, BLOCK),
            lo, m_lo, n_window)

  def count(self, m):
    _, n_sink, _, _, n_window = self._bounds(m)
    return n_sink + n_window

  def key_start(self, m, i):
    _, n_sink, lo, _, _ = self._bounds(m)
    block = jnp.where(i < n_sink, i, lo + i - n_sink)
    return pl.multiple_of(block * BLOCK, BLOCK)

  def _sink_mask(self, i, rows, cols):
    """Sink keys left of the row's window (and causal)."""
    del i
    return ((cols < self.n_init) & (rows - cols >= self.n_local)
            & (cols <= rows))

  def _window_mask(self, i, rows, cols):
    """Keys within the row's window (and causal)."""
    del i
    return (rows - cols < self.n_local) & (cols <= rows)

  def segments(self, m):
    n_sink_free, n_sink, lo, m_lo, n_window = self._bounds(m)
    has_window = n_window > 0
    lead_end = n_sink + jnp.where(has_window, m_lo - lo, 0)
    free_end = n_sink + jnp.where(has_window, m - lo, 0)
    return (Segment(n_sink_free, None),
            Segment(n_sink, self._sink_mask),
            Segment(lead_end, self._window_mask),
            Segment(free_end, None),
            Segment(n_sink + n_window, self._window_mask))


def _plan_fn(refs, bb, h):
  del bb
  n_init_ref, n_local_ref = refs
  return _Plan(n_init_ref[h], n_local_ref[h])


@functools.partial(jax.jit,
                   static_argnames=("config", "interpret", "profile"))
def _fwd(q, k, v, n_init, n_local, *, config: Config, interpret,
         profile: Profile | None):
  op = "a_shape_attention_mgpu"
  dims = mgpu.check_inputs(q, k, v, op, config, profile=profile)
  for name, arr in (("n_init", n_init), ("n_local", n_local)):
    common.check_index_array(f"AShapeLayout.{name}", arr, (dims.n,), 1)
  # Negative sizes behave as 0 (as in the reference mask).
  n_init = jnp.maximum(n_init, 0)
  n_local = jnp.maximum(n_local, 0)
  return tile_list_attention(
      q, k, v, (n_init, n_local), plan_fn=_plan_fn, config=config,
      dims=dims, interpret=interpret, name="minf_a_shape_mgpu",
      profile=profile)


def unsupported_reason(q, *, interpret: bool = False) -> str | None:
  """Why `a_shape_attention_mgpu` cannot run on q here (None when it can):
  the implementation's "not supported here" test for op dispatch."""
  return mgpu.unsupported_reason(q, interpret=interpret)


@jaxtyped(typechecker=beartype)
def a_shape_attention_mgpu(
    q: Float[Array, "B T N D"],
    k: Float[Array, "B S K D"],
    v: Float[Array, "B S K D"],
    layout: AShapeLayout,
    *,
    config: Config | None = None,
    interpret: bool | plgpu.InterpretGPUParams = False,
    profile: Profile | None = None,
) -> Float[Array, "B T N D"]:
  """A-shape attention on Hopper via Mosaic GPU (wgmma + TMA).

  Same key set and output as `pallas_kernels.a_shape.a_shape_attention`:
  row r reads keys j <= r with j < n_init[n] or r - j < n_local[n], each
  once; a head with n_init = n_local = 0 produces zeros. Query head n reads
  KV head n // G. Softmax and accumulation in float32.

  Args:
    q: [B, T, N, D] queries (bfloat16 or float16).
    k: [B, S, K, D] keys, S == T a multiple of 64, N % K == 0.
    v: [B, S, K, D] values.
    layout: per-head int32 `n_init` [N] and `n_local` [N].
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
      256}, T not a multiple of 64), bad layout shapes, or a config whose
      SMEM does not fit.
    TypeError: on dtypes other than bfloat16/float16 or non-int32 layouts.
  """
  if config is None:
    config = Config.get_default(q.shape[-1])
  if interpret is True:
    interpret = plgpu.InterpretGPUParams()
  return _fwd(q, k, v, layout.n_init, layout.n_local, config=config,
              interpret=interpret or None, profile=profile)
