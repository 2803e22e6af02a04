"""The warp-specialised tile-list attention launch (Mosaic GPU, Hopper).

FlashAttention-3 (Shah et al. 2024): producer and consumer warpgroups
(section 3.1), TMA copies into SMEM rings guarded by mbarriers, QK^T and
P @ V as wgmma on the tensor cores, the online softmax in base 2 in
registers. Built on the structure of jax's `pallas/ops/gpu/attention_mgpu.py`
(`_attention_forward`), with the dense key loop replaced by a per-query-block
list of key tiles that a sparse pattern describes through a plan
(`plans.TilePlan`, or `stream.StreamPlan` with `stream=True`).

One CTA (`plgpu.kernel` program) handles `Config.compute_wgs` consecutive
64-row query blocks of one (batch, head): the compute warpgroups
(`consumer.py`) each own one query block and its K/V ring, the producer
warpgroup(s) (`producer.py`) copy the key tiles in. The CTAs run one
query-block pair across all heads, then the next pair (the G heads of a KV
group, which read the same K/V, side by side), from the last pair (most
keys) to the first.

Optionally a seed (output, base-2 log-sum-exp) of keys attended elsewhere
(the Vertical-Slash kernel's gathered columns) is merged into the softmax
state at the end: the result is attention over the union of both key sets.

Restrictions (the Pallas-Triton kernels are the general path): bf16/fp16,
D in {64, 128, 256}, T == S a multiple of 64, Hopper (sm_90a) GPUs.
"""

import functools

import jax
import jax.numpy as jnp
from jax import lax
from jax.experimental import pallas as pl
from jax.experimental.pallas import mosaic_gpu as plgpu

from pallas_kernels._mosaic_gpu.config import BLOCK, Config, Dims, Profile
from pallas_kernels._mosaic_gpu.consumer import compute_warpgroup
from pallas_kernels._mosaic_gpu.cta import (
    Barriers,
    Cta,
    Launch,
    Refs,
    Smem,
)
from pallas_kernels._mosaic_gpu.plans import PlanFn
from pallas_kernels._mosaic_gpu.producer import producer_warpgroups
from pallas_kernels._mosaic_gpu.stream import GATHER


def smem_transforms(key_rows: int):
  """SMEM transforms of the 16-bit q/o and K/V tiles: the (8, 64) tiling
  with the 128-byte swizzle, which wgmma reads and which takes key tiles
  of 64 rows and multiples of them up to 256 (and the 8-row chunk copies
  of a stream's gathered tiles)."""
  if key_rows % BLOCK or key_rows > 4 * BLOCK:
    raise ValueError(f"key_rows={key_rows}: a multiple of 64 <= 256")
  return (plgpu.TilingTransform((8, 64)), plgpu.SwizzleTransform(128))


def tile_list_attention(q, k, v, index_args: tuple, *, plan_fn: PlanFn,
                        config: Config, dims: Dims, interpret, name: str,
                        seed: tuple | None = None, key_rows: int = BLOCK,
                        stream: bool = False, profile: Profile | None = None):
  """Attention of each 64-row query block over its plan's key tiles.

  Args:
    q: [B, T, N, D] queries (bf16/fp16); k, v: [B, T, K, D].
    index_args: int32 arrays passed to the kernel in GMEM; `plan_fn` gets
      their refs and reads them as scalars.
    plan_fn: (index_refs, batch, head) -> TilePlan (a StreamPlan if
      `stream`).
    config: launch knobs (checked by `config.check_inputs`).
    dims: `check_inputs(...)`'s result.
    interpret: None, or `plgpu.InterpretGPUParams` (CPU interpret mode).
    name: kernel name.
    seed: None, or (o [B, T, N, D] in q's dtype, lse [B, N, T] f32 base-2
      log-sum-exp of the q-scaled logits, -inf / o = 0 on rows without
      seed keys): keys attended elsewhere, merged into each query block's
      softmax state at the end.
    key_rows: rows of a key tile, 64, 128, 192 or 256 (larger tiles: one
      online-softmax rescale per more keys). `key_start` must be a
      multiple of 8: Mosaic GPU's TMA into the tiled SMEM that wgmma reads
      takes only tile-aligned rows.
    stream: `plan_fn` returns a `StreamPlan` (key_rows 64, or 128 for
      paired steps: each step takes the stream's next two 64-row tiles
      into the slot's halves, each with its own words, masks and gather
      barrier; one N = 128 QK wgmma and one softmax rescale per step).
    profile: None, or Mosaic GPU's profiler over the named regions.

  Returns:
    [B, T, N, D] output in q's dtype; rows without any key are zero.
  """
  if stream and key_rows not in (BLOCK, 2 * BLOCK):
    raise ValueError(f"stream plans take 64- or 128-row key tiles, not"
                     f" {key_rows}")
  launch = Launch(dims=dims, config=config, dtype=q.dtype, key_rows=key_rows,
                  stream=stream, seeded=seed is not None,
                  fused=not interpret)
  n_index = len(index_args)

  def kernel(refs, smem, barriers):
    cta = _cta(launch, plan_fn, Refs(refs[:n_index], *refs[n_index:n_index + 3],
                                     refs[n_index + 3:-1], refs[-1]),
               smem, barriers)
    pl.when(cta.wg < launch.wgs)(functools.partial(compute_warpgroup, cta))
    pl.when(cta.wg >= launch.wgs)(functools.partial(producer_warpgroups, cta))

  def entry(*refs):
    pl.run_scoped(lambda *scratch: kernel(refs, *scratch),
                  _smem(launch), _barriers(launch), collective_axes="wg")

  b, _, n, _, _, _ = dims
  return plgpu.kernel(
      entry,
      out_type=jax.ShapeDtypeStruct(q.shape, q.dtype),
      grid=(n, launch.n_pairs, b), grid_names=("heads", "q_pair", "batch"),
      num_threads=launch.wgs + config.producers,
      thread_name="wg",
      compiler_params=_compiler_params(profile),
      interpret=interpret,
      kernel_name=_kernel_name(name, launch),
  )(*index_args, q, k, v, *(seed or ()))


def _cta(launch: Launch, plan_fn: PlanFn, refs: Refs, smem: Smem,
         barriers: Barriers) -> Cta:
  """This CTA's batch, query head, query-block pair and warpgroup, and the
  plan of its (batch, head)."""
  batch = lax.axis_index("batch")
  head = lax.axis_index("heads")
  pair = launch.n_pairs - 1 - lax.axis_index("q_pair")
  wg = lax.axis_index("wg")
  plan = plan_fn(refs.index, batch, head)
  return Cta(launch, refs, smem, barriers, batch, head, pair, wg, plan)


def _smem(launch: Launch) -> Smem:
  """The SMEM scratch: q/o tiles and K/V rings per compute warpgroup, the
  seed's lse, a stream's words per ring slot and pending chunks."""
  wgs, depth, d = launch.wgs, launch.depth, launch.dims.d
  transforms = smem_transforms(launch.key_rows)
  ring = lambda: plgpu.SMEM((wgs, depth, launch.key_rows, d), launch.dtype,
                            transforms=transforms)
  stream = launch.stream
  return Smem(
      qo=plgpu.SMEM((wgs, BLOCK, d), launch.dtype, transforms=transforms),
      k=ring(), v=ring(),
      lse=plgpu.SMEM((wgs, BLOCK), jnp.float32) if launch.seeded else None,
      words=(plgpu.SMEM((wgs, 2 * depth, launch.halves, 1 + GATHER),
                        jnp.int32) if stream else None),
      pending=plgpu.SMEM((wgs, GATHER), jnp.int32) if stream else None)


def _barriers(launch: Launch) -> Barriers:
  """The mbarriers; a step's loaded barrier takes one arrival per 64-row
  half (a gathered half's first chunk)."""
  wgs, depth, halves = launch.wgs, launch.depth, launch.halves
  loaded = lambda: plgpu.Barrier(num_arrivals=halves,
                                 num_barriers=wgs * depth)
  freed = lambda: plgpu.Barrier(num_arrivals=1, num_barriers=wgs * depth)
  return Barriers(
      q=plgpu.Barrier(num_barriers=wgs), k=loaded(), v=loaded(),
      k_free=freed(), v_free=freed(),
      schedule=plgpu.Barrier(num_arrivals=wgs) if launch.schedule else None,
      seed=(plgpu.Barrier(num_barriers=wgs),) * 2 if launch.seeded else None,
      # A gathered tile's chunks 1..7 of K and V (chunk 0 on k/v).
      gather=(plgpu.Barrier(num_arrivals=2 * (GATHER - 1),
                            num_barriers=wgs * depth * halves)
              if launch.stream else None))


def _compiler_params(profile: Profile | None) -> plgpu.CompilerParams:
  space = 0 if profile is None else profile.space
  return plgpu.CompilerParams(
      approx_math=True, profile_space=space,
      profile_dir="" if profile is None else profile.directory,
      profile_bounds_check=space > 0)


def _kernel_name(name: str, launch: Launch) -> str:
  """The kernel's name with its static shape: head dim, compute
  warpgroups, ring depth, key rows (if not 64), seeded, stream."""
  return (f"{name}_d{launch.dims.d}_w{launch.wgs}_s{launch.depth}"
          f"{f'_k{launch.key_rows}' if launch.key_rows != BLOCK else ''}"
          f"{'_seeded' if launch.seeded else ''}"
          f"{'_stream' if launch.stream else ''}")
