"""Mosaic GPU (Hopper) tile-list attention: the pipeline of the MGPU kernels.

FlashAttention-3-style (Shah et al. 2024): warp-specialised, with TMA copies
into SMEM rings and wgmma on the tensor cores. Built on the structure of
jax's `pallas/ops/gpu/attention_mgpu.py` (`_attention_forward`), with the
dense key loop replaced by a per-query-block list of key tiles
([key_rows, D], key_rows = 64, 80 or 128) that a sparse pattern describes
through a `TilePlan`:

- `count(m)`: the number of key tiles of query block m;
- `key_start(m, i)`: the first key row of tile i, in [0, S - key_rows]. It
  must be 8-aligned: Mosaic GPU's TMA into the tiled SMEM that wgmma reads
  only takes rows aligned to the (8, swizzle / 2) tiling. 64-row tiles at
  any 8-aligned start keep the 128-byte swizzle (the Vertical-Slash kernel
  reads its windows so, checked on an H200); an 80-row tile at o - o % 8
  holds a 64-key window that starts at any o, but only with the 32-byte
  swizzle;
- `segments(m)`: consecutive step ranges, each with a static mask kind:
  None (mask-free), a function `mask(i, rows, cols) -> bool [64, KR]` of
  the absolute query rows and key columns of tile i (causal diagonal, window
  edges, ...), or a `CondMask` that decides per step whether the tile needs
  its mask. Only the tiles that need a mask pay for one.

A stream plan (`tile_list_attention(..., stream=True)`, protocol in
`pallas_kernels.mosaic_gpu_stream`) instead hands its tiles to the producer
one step at a time, in order, with a header word per step that the producer
writes into SMEM beside the ring slot (the consumer's masks read it from
there: no per-step GMEM reads in the compute warpgroup), and gathers 8-row
chunks into extra 64-row tiles (eight 8-row TMA copies each, which the
(8, 64) tiling and the 128-byte swizzle of a slot take). The consumer reads
a step's words before its wgmma (the producer rewrites them only after the
slot's release), waits a gathered tile's chunks 1..7 (K and V) on a second
barrier per slot and masks it with the plan's `StreamMask.gathered`.
With 128-row slots (paired steps) each step takes the stream's next two
64-row tiles into the slot's halves, each with its own words, masks and
gather barrier: one N = 128 QK wgmma, sliced into the halves for the masks,
and one online-softmax rescale per 128 keys.

One CTA (`plgpu.kernel` program) handles `Config.compute_wgs` consecutive
64-row query blocks of one (batch, head):
- compute warpgroup w owns query block m = pair * compute_wgs + w: its q tile
  (loaded once, reused for the output), its own K/V SMEM ring (the query
  blocks walk different key tiles) and the online softmax in registers;
- the last warpgroup is the producer: it reads the tile starts as scalars
  from GMEM and issues the TMA copies of key/value tile i into ring slot
  i % depth of warpgroup w as soon as that slot is released (consumed
  barrier).

Optionally a seed (output, base-2 log-sum-exp) of keys attended elsewhere
(the Vertical-Slash kernel's gathered columns) is merged into the softmax
state at the end: the result is attention over the union of both key sets.

Restrictions (the Pallas-Triton kernels are the general path): bf16/fp16,
D in {64, 128, 256}, T == S a multiple of 64, Hopper (sm_90a) GPUs.
"""

import dataclasses
import functools
import math
from typing import Callable, NamedTuple, Protocol, Sequence

import jax
import jax.numpy as jnp
from jax import lax
from jax.experimental import pallas as pl
from jax.experimental.pallas import mosaic_gpu as plgpu

from pallas_kernels import common
from pallas_kernels.mosaic_gpu_stream import (  # noqa: F401 (re-exported)
    CHUNK,
    GATHER,
    StreamMask,
    StreamPlan,
    StreamState,
    StreamStep,
    stream_advance,
)

BLOCK = 64  # rows of a query block and of a key tile
# The first SMEM word of a paired stream step's padding half (no sub-step
# left: an in-range tile, all masked); words of real sub-steps are >= 0.
EMPTY_HALF = -2
SUPPORTED_HEAD_DIMS = (64, 128, 256)
# Opt-in dynamic SMEM of an H100/H200 CTA (227 KiB), minus a margin for the
# barriers and the cross-warp reduction scratch Mosaic GPU reserves.
SMEM_BYTES = 227 * 1024 - 4 * 1024
LOG2E = math.log2(math.e)

# mask(i, rows, cols) -> keep: step i's absolute query rows / key columns,
# both int32 [64, KR] in the WGMMA layout; keep is bool [64, KR].
MaskFn = Callable[[jax.Array, jax.Array, jax.Array], jax.Array]


class CondMask(NamedTuple):
  """A mask that only some steps of a segment need, decided per step.

  Step i first takes its scalars: `x, carry = scalars(i, carry)` (`carry`
  starts as `init` at the segment's first step and passes scalars on to the
  next step, e.g. the previous tile's start, so no step re-reads them);
  then `need(i, x)` (bool []) picks between the masked path, `mask(i, x,
  rows, cols)` like a `MaskFn`, and the mask-free one (`lax.cond`): the
  tiles that need no mask skip the iota compares. The softmax keeps the
  all-masked-row guard on every step of the segment.
  """

  scalars: Callable  # (i, carry) -> (x, carry), pytrees of int32 []
  init: object  # the carry before the segment's first step
  need: Callable  # (i, x) -> bool []
  mask: Callable  # (i, x, rows, cols) -> bool [64, KR]


class Segment(NamedTuple):
  """Steps [previous segment's end, end) of a query block's tile list."""

  end: jax.Array  # int32 []
  mask: MaskFn | CondMask | StreamMask | None  # static: None = mask-free


class TilePlan(Protocol):
  """One (batch, head)'s key tiles per query block m (traced in-kernel)."""

  def count(self, m: jax.Array) -> jax.Array:
    """int32 []: tiles of query block m."""

  def key_start(self, m: jax.Array, i: jax.Array) -> jax.Array:
    """int32 []: first key row of tile i < count(m), in [0, S - KR]
    (8-aligned; see the module doc)."""

  def segments(self, m: jax.Array) -> Sequence[Segment]:
    """Ascending ends, the last == count(m); one static mask kind each."""


# plan_fn(index_refs, batch, head) -> TilePlan; index_refs are the GMEM refs
# of `tile_list_attention`'s `index_args`, read as scalars.
PlanFn = Callable[[tuple, jax.Array, jax.Array], TilePlan]


FASTEST_AXES = ("heads", "query_blocks", "gqa_group")


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class Config:
  """Launch knobs of the Mosaic GPU kernels.

  Attributes:
    compute_wgs: compute warpgroups per CTA (1 or 2); each owns one 64-row
      query block, so a CTA covers compute_wgs consecutive query blocks.
    max_concurrent_steps: depth of each warpgroup's K/V SMEM ring (>= 1):
      key tiles in flight, counting the one being computed. 1 loads step
      i + 1's K once step i's QK^T is done and its V once step i's P @ V
      is done; with 128-row key tiles at D = 128 only 1 fits for two
      warpgroups. A stream's words sit in a ring of 2 * depth entries,
      so a one-slot ring serves stream plans too.
    use_schedule_barrier: with 2 compute warpgroups, alternate their wgmma
      and softmax phases (FA3's ping-pong schedule). Off by default: on an
      H200 it gained 2-3% on Block-Sparse and lost up to 6% on A-shape and
      1-4% on Vertical-Slash, and it adds a barrier both warpgroups must
      keep in step.
    fastest_axis: the order of the CTAs, a lever on L2 reuse where the
      kernel is HBM-bound: "heads" (one query-block pair across all heads,
      then the next pair: the G heads of a KV group, which read the same
      K/V, run side by side), "query_blocks" (consecutive pairs of one
      head, which share the sink and local tiles, but the G heads of a
      group run far apart), or "gqa_group" (the G heads of one KV group
      for consecutive pairs, then the next KV head).
    producer_registers: registers per thread of the producer warpgroup
      with two compute warpgroups (a multiple of 8 in [24, 96]); the
      compute warpgroups get the rest of the SM's 64K, rounded down to a
      multiple of 8 (40 -> 232, 56 -> 224, 72 -> 216). With one compute
      warpgroup: 24 and 240.
    plan_ahead: stream plans only. The producer's loop body copies every
      ring's K tile of step i, then reads the plan of step i + 1 (its GMEM
      scalars), then copies every ring's V tile of step i; False: ring by
      ring, each ring's plan read, K copy and V copy in turn. With one
      slot per ring, a release is followed at once by the copy into it,
      so the plan's GMEM latency is better spent while the V slot is still
      busy (H200, 128-key steps at 128K, same run: 54.7 -> 53.5 ms with 40
      producer registers, 52.0 -> 50.6 with 56, against every ring's K
      before its V without the plan ahead;
      `experiments/results/gpu_vs_paired_steps_h200_s8.md`).
    ring_producers: with two compute warpgroups, one producer warpgroup
      per ring (four warpgroups), each walking its ring alone to its own
      step count, so no ring's copies wait behind the other ring's release
      (one producer for both rings copies ring 1's tile of step i only
      after ring 0 has released its slot of step i, however far ahead
      ring 1 is). Each producer gets `producer_registers`, the compute
      warpgroups the rest (40 -> 216).
    profile_space / profile_dir: with profile_space > 0, Mosaic GPU's
      profiler records the kernel's named regions (`jax.named_scope`:
      "words", "qk", "mask", "softmax", "wait_v", "pv_wait_k" in the
      compute warpgroups; "wait_k_free", "copy_k", "plan", "wait_v_free",
      "copy_v" in the producers) for up to profile_space regions per
      warpgroup and CTA, in SMEM (16 bytes per region and warpgroup),
      and writes a Chrome trace into
      the directory profile_dir after each call (a diagnostic: the clock
      reads cost time; `experiments/gpu_mgpu_profile.py` sums it up).
  """

  compute_wgs: int = 2
  max_concurrent_steps: int = 2
  use_schedule_barrier: bool = False
  fastest_axis: str = "heads"
  producer_registers: int = 40
  plan_ahead: bool = False
  ring_producers: bool = False
  profile_space: int = 0
  profile_dir: str = ""

  def __post_init__(self):
    if self.compute_wgs not in (1, 2):
      raise ValueError(f"compute_wgs={self.compute_wgs} must be 1 or 2")
    steps = self.max_concurrent_steps
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
      raise ValueError(f"max_concurrent_steps={steps!r} must be an int >= 1")
    if self.fastest_axis not in FASTEST_AXES:
      raise ValueError(f"fastest_axis={self.fastest_axis!r} must be one of"
                       f" {FASTEST_AXES}")
    regs = self.producer_registers
    if (isinstance(regs, bool) or not isinstance(regs, int)
        or regs % 8 or not 24 <= regs <= 96):
      raise ValueError(f"producer_registers={regs!r} must be a multiple of 8"
                       " in [24, 96]")
    space = self.profile_space
    if isinstance(space, bool) or not isinstance(space, int) or space < 0:
      raise ValueError(f"profile_space={space!r} must be an int >= 0")
    if bool(space) != bool(self.profile_dir):
      raise ValueError("profile_space and profile_dir go together: both set"
                       f" or neither (got {space!r}, {self.profile_dir!r})")

  @property
  def producers(self) -> int:
    """Producer warpgroups: one per ring with `ring_producers`, else 1."""
    return self.compute_wgs if self.ring_producers else 1

  def registers(self) -> tuple[int, int]:
    """(compute warpgroup, producer) registers per thread."""
    if self.compute_wgs == 1:
      return 240, 24
    spare = 65536 // 128 - self.producers * self.producer_registers
    return min(spare // 2 // 8 * 8, 232), self.producer_registers

  def smem_bytes(self, head_dim: int, itemsize: int = 2,
                 seeded: bool = False, key_rows: int = BLOCK) -> int:
    """SMEM of the q/o tiles, the K/V rings ([key_rows, D] tiles), the
    seed's lse (if any; its output tile reuses the q/o tile) and the
    profiler's buffer (if `profile_space`)."""
    ring = 2 * self.max_concurrent_steps * key_rows * head_dim * itemsize
    per_wg = BLOCK * head_dim * itemsize + ring + (BLOCK * 4 if seeded else 0)
    # The profiler's buffer: 2 events of 2 int32 per region, per warpgroup.
    profile = ((self.compute_wgs + self.producers) * self.profile_space * 16)
    return self.compute_wgs * per_wg + profile

  @classmethod
  def get_default(cls, head_dim: int = 128) -> "Config":
    """2 query blocks per CTA while 2 rings fit in SMEM; 1 for D = 256."""
    if head_dim <= 128:
      return cls(compute_wgs=2, max_concurrent_steps=3 if head_dim <= 64
                 else 2)
    return cls(compute_wgs=1, max_concurrent_steps=2)


class Dims(NamedTuple):
  b: int  # batch
  t: int  # sequence length (queries == keys)
  n: int  # query heads
  g: int  # query heads per KV head
  d: int  # head dim
  tb: int  # 64-row query blocks


def takes(q) -> bool:
  """Whether q's dtype and shape are ones the MGPU kernels take (what
  `check_inputs` checks of q; the GPU itself must be a Hopper)."""
  return (q.dtype in (jnp.dtype(jnp.bfloat16), jnp.dtype(jnp.float16))
          and q.shape[-1] in SUPPORTED_HEAD_DIMS
          and q.shape[1] % BLOCK == 0 and q.shape[1] > 0)


def hopper_gpu() -> bool:
  """Whether the default device is a Hopper GPU (sm_90: wgmma, TMA)."""
  if jax.default_backend() != "gpu":
    return False
  cc = getattr(jax.devices()[0], "compute_capability", "")
  return str(cc).split(".")[0] == "9"


def unsupported_reason(q, *, interpret: bool = False,
                       max_t: int | None = None) -> str | None:
  """Why the Mosaic GPU kernels cannot run on q here; None when they can.

  They need a Hopper GPU (unless `interpret`), bfloat16/float16, D in
  SUPPORTED_HEAD_DIMS and T a positive multiple of 64 (at most `max_t`).
  """
  if not interpret and not hopper_gpu():
    return "needs a Hopper GPU (sm_90)"
  if not takes(q):
    return (f"takes bfloat16/float16, D in {SUPPORTED_HEAD_DIMS} and T a"
            f" positive multiple of {BLOCK}; got {q.dtype}, D={q.shape[-1]},"
            f" T={q.shape[1]}")
  if max_t is not None and q.shape[1] > max_t:
    return f"takes T <= {max_t}, got T={q.shape[1]}"
  return None


def check_inputs(q, k, v, op: str, config: Config, *,
                 seeded: bool = False, key_rows: int = BLOCK,
                 copy_rows: int | None = None) -> Dims:
  """Validates q/k/v for the MGPU kernels; returns the static dims.

  key_rows: rows of a ring slot; copy_rows: rows of its largest TMA copy
  (key_rows if None; 64 for a paired stream's 128-row slots).

  Raises:
    TypeError: dtype not bfloat16/float16.
    ValueError: D not in SUPPORTED_HEAD_DIMS, T not a positive multiple of
      64, or a config whose SMEM does not fit.
  """
  b, t, n, _, g, d = common.check_qkv(q, k, v, op)
  if q.dtype not in (jnp.dtype(jnp.bfloat16), jnp.dtype(jnp.float16)):
    raise TypeError(f"{op}: q.dtype={q.dtype} not supported; use bfloat16 or"
                    " float16 (the Pallas-Triton kernel takes float32)")
  if d not in SUPPORTED_HEAD_DIMS:
    raise ValueError(f"{op}: head dim D={d} must be one of"
                     f" {SUPPORTED_HEAD_DIMS} (the Pallas-Triton kernel takes"
                     " any D <= 256)")
  if t % BLOCK or t == 0:
    raise ValueError(f"{op}: T={t} must be a positive multiple of {BLOCK}"
                     " (the Pallas-Triton kernel takes any T)")
  copy_rows = key_rows if copy_rows is None else copy_rows
  if t < copy_rows:
    raise ValueError(f"{op}: T={t} must be at least {copy_rows} (one key"
                     " tile)")
  need = config.smem_bytes(d, q.dtype.itemsize, seeded, key_rows)
  if need > SMEM_BYTES:
    raise ValueError(
        f"{op}: {config} needs {need} bytes of SMEM at D={d}, more than"
        f" {SMEM_BYTES}; lower compute_wgs or max_concurrent_steps")
  return Dims(b, t, n, g, d, t // BLOCK)


def causal_mask(i, rows, cols):
  """Key column <= query row (the diagonal tile)."""
  del i
  return cols <= rows


def _wgmma_accumulate(acc, lhs, rhs_refs, after_issue, *, fused: bool):
  """acc + sum_j lhs[j] @ rhs_refs[j] (lhs in registers), running
  `after_issue` meanwhile.

  `fused`: one register-operand wgmma into acc's registers (`pl.run_state`
  over an initialised accumulator, as FA3 does), with `after_issue` running
  while it is in flight. Mosaic GPU interpret mode (jax 0.11.2) interprets
  neither `run_state` nor wgmma with a register operand, so there the same
  product is a plain f32-accumulated dot of the 16-bit operands.
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


def _wgmma_iota(shape, dim: int) -> jax.Array:
  """int32 index along `dim` of `shape`, in the WGMMA layout."""
  return plgpu.broadcasted_iota(jnp.int32, shape, dim,
                                layout=plgpu.Layout.WGMMA)


def _masked_scores(s, mask: MaskFn, i, r0, key_start):
  """s [64, KR] with the pairs outside `mask` set to -inf."""
  rows = r0 + _wgmma_iota(s.shape, 0)
  cols = key_start + _wgmma_iota(s.shape, 1)
  return jnp.where(mask(i, rows, cols), s, -jnp.inf)


def _apply_stream_mask(s, mask: StreamMask, first, read_chunks, r0):
  """s [64, 64] masked as a `StreamMask` says for the 64-row tile whose
  first SMEM word is `first` (header * 2 + gathered; EMPTY_HALF for the
  padding half of a paired stream's last step, all masked);
  `read_chunks()` reads its GATHER chunk words, only on the gathered
  branch (0.4-1.0% faster than reading them before the QK wgmma at 128K
  on an H200, `experiments/results/gpu_vs_stream_masks_h200_s10.md`)."""
  header = lax.shift_right_arithmetic(first, 1)
  gathered = (first & 1) != 0
  kind = jnp.where(gathered, len(mask.masks) + 1, mask.kind(header))
  kind = jnp.where(first == EMPTY_HALF, len(mask.masks) + 2, kind)

  def masked(keep_fn):
    def branch(s):
      rows = r0 + _wgmma_iota(s.shape, 0)
      return jnp.where(keep_fn(rows, _wgmma_iota(s.shape, 1)), s, -jnp.inf)
    return branch

  def gathered_branch(s):
    return masked(functools.partial(mask.gathered, read_chunks()))(s)

  branches = ([lambda s: s]
              + [masked(functools.partial(fn, header)) for fn in mask.masks]
              + [gathered_branch,
                 lambda s: s - jnp.inf])  # all masked; s's layout kept
  return lax.switch(kind, branches, s)


def _apply_mask(s, mask, i, x, r0, key_start):
  """s [64, KR] masked by a `Segment.mask` (a function or a `CondMask`; a
  `StreamMask` goes through `_apply_stream_mask`); x: a `CondMask`'s
  scalars of step i; `key_start()` gives the tile's first key row (read
  only on the masked path). A `CondMask` runs as `lax.cond`."""
  if not isinstance(mask, CondMask):
    return _masked_scores(s, mask, i, r0, key_start())
  fn = lambda i, rows, cols: mask.mask(i, x, rows, cols)
  masked = lambda s: _masked_scores(s, fn, i, r0, key_start())
  return lax.cond(mask.need(i, x), masked, lambda s: s, s)


def _softmax_update(s, m_i, l_i, acc, qk_scale, masked: bool):
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


def _empty_state(d: int):
  """(acc [64, D], m [64], l [64]) of no key yet, in the WGMMA layouts."""
  row = plgpu.Layout.WGMMA.reduce(1)
  return (plgpu.layout_cast(jnp.full((BLOCK, d), 0.0, jnp.float32),
                            plgpu.Layout.WGMMA),
          plgpu.layout_cast(jnp.full((BLOCK,), -jnp.inf, jnp.float32), row),
          plgpu.layout_cast(jnp.full((BLOCK,), 0.0, jnp.float32), row))


def _merge_seed(acc, m_i, l_i, o_smem, lse_smem):
  """The state (acc, m, l) merged with the seed's keys: the seed is the
  state acc = o, m = lse, l = 1 (acc = l = 0, m = -inf on its rows without
  keys)."""
  o = plgpu.load(o_smem, layout=plgpu.Layout.WGMMA).astype(jnp.float32)
  lse = plgpu.load(lse_smem, layout=plgpu.Layout.WGMMA.reduce(1))
  m_new = jnp.maximum(m_i, lse)
  base = jnp.where(m_new == -jnp.inf, 0.0, m_new)
  alpha = jnp.exp2(m_i - base)
  beta = jnp.exp2(lse - base)
  bcast = lambda x: lax.broadcast_in_dim(x, acc.shape, [0])
  return acc * bcast(alpha) + o * bcast(beta), l_i * alpha + beta


def smem_transforms(key_rows: int):
  """SMEM transforms (tiling, swizzle) of the 16-bit q/o and K/V tiles.

  64-row key tiles and multiples of them up to 256: the 128-byte swizzle.
  80-row key tiles (8-aligned tiles holding a 64-key window that starts
  anywhere): P @ V contracts over the 80 rows in groups of swizzle / 2
  elements, so only the 32-byte swizzle fits; wgmma wants the same
  transforms on q (the QK^T operand in SMEM) and on K and V.
  """
  if key_rows % BLOCK == 0 and key_rows <= 4 * BLOCK:
    swizzle = 128
  elif key_rows % 16 == 0 and key_rows <= 4 * BLOCK:
    swizzle = 32
  else:
    raise ValueError(f"key_rows={key_rows}: 64, or a multiple of 16 <= 256")
  return (plgpu.TilingTransform((8, swizzle // 2)),
          plgpu.SwizzleTransform(swizzle))


def _grid(fastest_axis: str, n: int, n_pairs: int, g: int, b: int) -> dict:
  """`plgpu.kernel`'s grid and grid names for `Config.fastest_axis`."""
  if fastest_axis == "heads":
    return dict(grid=(n, n_pairs, b), grid_names=("heads", "q_pair", "batch"))
  if fastest_axis == "query_blocks":
    return dict(grid=(n_pairs, n, b), grid_names=("q_pair", "heads", "batch"))
  return dict(grid=(g * n_pairs, n // g, b),  # "gqa_group"
              grid_names=("group_pair", "kv_head", "batch"))


def _head_and_pair(fastest_axis: str, n_pairs: int, g: int):
  """(query head, query-block pair) of this CTA; the pairs run from the
  last (most keys) to the first."""
  if fastest_axis == "gqa_group":
    i = lax.axis_index("group_pair")
    h = lax.axis_index("kv_head") * g + lax.rem(i, jnp.int32(g))
    return h, n_pairs - 1 - lax.div(i, jnp.int32(g))
  return lax.axis_index("heads"), n_pairs - 1 - lax.axis_index("q_pair")


def tile_list_attention(q, k, v, index_args: tuple, *, plan_fn: PlanFn,
                        config: Config, dims: Dims, interpret, name: str,
                        seed: tuple | None = None, key_rows: int = BLOCK,
                        stream: bool = False):
  """Attention of each 64-row query block over its plan's key tiles.

  Args:
    q: [B, T, N, D] queries (bf16/fp16); k, v: [B, T, K, D].
    index_args: int32 arrays passed to the kernel in GMEM; `plan_fn` gets
      their refs and reads them as scalars.
    plan_fn: (index_refs, batch, head) -> TilePlan.
    config: launch knobs (checked by `check_inputs`).
    dims: `check_inputs(...)`'s result.
    interpret: None, or `plgpu.InterpretGPUParams` (CPU interpret mode).
    name: kernel name.
    seed: None, or (o [B, T, N, D] in q's dtype, lse [B, N, T] f32 base-2
      log-sum-exp of the q-scaled logits, -inf / o = 0 on rows without
      seed keys): keys attended elsewhere, merged into each query block's
      softmax state at the end.
    key_rows: rows of a key tile: 64, 128, 192 or 256 with the 128-byte
      swizzle (128-key steps: one online-softmax rescale per 128 keys), or
      another multiple of 16 up to 256 with the 32-byte swizzle, e.g. 80
      for tiles at 8-aligned starts that hold a 64-key window starting
      anywhere. `key_start` must be a multiple of 8: Mosaic GPU's TMA into
      the tiled SMEM that wgmma reads takes only tile-aligned rows.
    stream: `plan_fn` returns a `StreamPlan` (key_rows 64, or 128 for
      paired steps): the producer walks its 64-row tiles in order, writes
      each one's header into SMEM for the consumer's `StreamMask` and
      gathers 8-row chunks into extra tiles (see the module doc).

  Returns:
    [B, T, N, D] output in q's dtype; rows without any key are zero.
  """
  b, t, n, g, d, tb = dims
  dtype = q.dtype
  wgs = config.compute_wgs
  depth = config.max_concurrent_steps
  seeded = seed is not None
  if stream and key_rows not in (BLOCK, 2 * BLOCK):
    raise ValueError(f"stream plans take 64- or 128-row key tiles, not"
                     f" {key_rows}")
  # A stream step of 128 keys pairs two of the plan's 64-row sub-steps.
  halves = key_rows // BLOCK if stream else 1
  # The ping-pong also runs with a seed: in the sixth session it matched the
  # f32 reference on the H200 as closely as the default config (a one-off
  # check noted in `gpu_vs_mgpu_pingpong_h200.md`; `gpu_vs_mgpu_variants`'
  # check now covers it too), and the interpret-mode hang that had kept it
  # off was the host thread starvation tests/conftest.py describes.
  schedule = config.use_schedule_barrier and wgs == 2
  n_pairs = pl.cdiv(tb, wgs)
  n_index = len(index_args)
  qk_scale = d**-0.5 * LOG2E  # softmax in base 2 (exp2)

  def kernel(refs, smem, barriers):
    index_refs = refs[:n_index]
    q_ref, k_ref, v_ref = refs[n_index:n_index + 3]
    seed_refs = refs[n_index + 3:-1]
    o_ref = refs[-1]
    qo_smem, k_smem, v_smem, seed_smem, stream_smem = smem
    (q_bars, k_bars, v_bars, k_free, v_free, sched_bar, seed_bars,
     gather_bars) = barriers
    bb = lax.axis_index("batch")
    h, pair = _head_and_pair(config.fastest_axis, n_pairs, g)
    wg = lax.axis_index("wg")
    plan = plan_fn(index_refs, bb, h)

    def block_of(w):
      """(m clamped to a real block, valid, count) of warpgroup w; count:
      steps (a paired stream's steps take two of the plan's tiles)."""
      m, valid, tiles = plan_tiles(w)
      return m, valid, lax.div(tiles + halves - 1, jnp.int32(halves))

    def plan_tiles(w):
      """(m clamped to a real block, valid, the plan's count(m))."""
      m = pair * wgs + w
      valid = m < tb
      m_c = jnp.minimum(m, tb - 1)
      return m_c, valid, jnp.where(valid, plan.count(m_c), 0)

    def schedule_sync():
      if schedule:
        plgpu.barrier_arrive(sched_bar)
        plgpu.barrier_wait(sched_bar)

    def merge_seed(w, r0, acc, m_i, l_i):
      """Merges warpgroup w's seed (its output tile loaded into the free q/o
      tile, its lse TMA issued at the start) into (acc, l)."""
      o_seed, _ = seed_refs
      qo = qo_smem.at[w]
      plgpu.copy_gmem_to_smem(o_seed.at[bb, pl.ds(r0, BLOCK), h], qo,
                              seed_bars[0].at[w])
      plgpu.barrier_wait(seed_bars[0].at[w])
      plgpu.barrier_wait(seed_bars[1].at[w])
      return _merge_seed(acc, m_i, l_i, qo, seed_smem.at[w])

    def stream_words(w, i):
      """The words the producer wrote for ring w's step i, one pair per
      64-row half: (header * 2 + gathered, a function that reads its
      GATHER chunk words); on a gathered half, waits for its chunks 1..7
      of K and V.

      The words sit in a ring of 2 * depth entries: the producer rewrites
      step i's only for step i + 2 * depth, after step i + depth has
      released its K slot. So the chunk words, read in the mask branch
      after step i's QK wgmma and release, still see step i's words."""
      slot = lax.rem(i, depth)
      entry = lax.rem(i, 2 * depth)

      def half_words(half):
        word = lambda j: stream_smem[0][w, entry, half, j]
        first = word(0)

        @pl.when((first & 1) != 0)
        def _():
          plgpu.barrier_wait(gather_bars.at[(w * depth + slot) * halves
                                            + half])

        return first, lambda: tuple(word(1 + j) for j in range(GATHER))

      return tuple(half_words(half) for half in range(halves))

    @pl.when(wg < wgs)
    def _compute():
      plgpu.set_max_registers(config.registers()[0], action="increase")
      w = wg
      m, valid, count = block_of(w)
      r0 = m * BLOCK
      qo = qo_smem.at[w]
      plgpu.copy_gmem_to_smem(q_ref.at[bb, pl.ds(r0, BLOCK), h], qo,
                              q_bars.at[w])
      if seeded:  # the lse tile, read at the end
        plgpu.copy_gmem_to_smem(seed_refs[1].at[bb, h, pl.ds(r0, BLOCK)],
                                seed_smem.at[w], seed_bars[1].at[w])
      acc, m_i, l_i = _empty_state(d)
      plgpu.barrier_wait(q_bars.at[w])

      @pl.when(count > 0)
      def _():
        plgpu.barrier_wait(k_bars.at[w * depth])

      if schedule:
        pl.when(w == 1)(schedule_sync)

      def step(i, carry, mask=None):
        acc, m_i, l_i, aux = carry
        slot = lax.rem(i, depth)
        x = None

        def slot_tiles(ring):
          """The slot's tile, or a paired stream's two 64-row halves (the
          P @ V operands)."""
          if halves == 1:
            return (ring.at[w, slot],)
          return tuple(ring.at[w, slot, pl.ds(j * BLOCK, BLOCK)]
                       for j in range(halves))

        if isinstance(mask, CondMask):  # scalars read before the wgmma
          x, aux = mask.scalars(i, aux)
        elif isinstance(mask, StreamMask):  # before the slot is released
          with jax.named_scope("words"):
            x = stream_words(w, i)

        def compute_qk(acc_ref):  # one wgmma over the whole slot
          plgpu.wgmma(acc_ref, qo, k_smem.at[w, slot].transpose((1, 0)))
          schedule_sync()
          return acc_ref[...]

        # [64, KR] scores; a paired stream's two [64, 64] halves, sliced
        # from one N = 128 wgmma (one per half took 58.4 against 54.0 ms
        # at 128K on an H200, `gpu_vs_paired_steps_h200_s8.md`).
        with jax.named_scope("qk"):
          s_all = pl.run_scoped(compute_qk,
                                plgpu.ACC((BLOCK, key_rows), jnp.float32))
        s = tuple(s_all[:, j * BLOCK:(j + 1) * BLOCK] for j in range(halves)
                  ) if halves > 1 else (s_all,)
        plgpu.barrier_arrive(k_free.at[w * depth + slot])
        with jax.named_scope("mask"):
          if isinstance(mask, StreamMask):
            s = tuple(_apply_stream_mask(s_j, mask, first, read, r0)
                      for s_j, (first, read) in zip(s, x, strict=True))
          elif mask is not None:
            (s,) = s
            s = (_apply_mask(s, mask, i, x, r0,
                             lambda: plan.key_start(m, i)),)
        with jax.named_scope("softmax"):
          p, acc, m_new, l_i = _softmax_update(s, m_i, l_i, acc, qk_scale,
                                               masked=mask is not None)
          p16 = tuple(p_j.astype(dtype) for p_j in p)
        if schedule:
          acc, l_i, m_new, p16 = lax.optimization_barrier(
              (acc, l_i, m_new, p16))
          plgpu.barrier_arrive(sched_bar)
        with jax.named_scope("wait_v"):
          plgpu.barrier_wait(v_bars.at[w * depth + slot])
        if schedule:
          plgpu.barrier_wait(sched_bar)

        def wait_next_k():  # overlaps the in-flight PV wgmma
          nxt = i + 1

          @pl.when(nxt < count)
          def _():
            plgpu.barrier_wait(k_bars.at[w * depth + lax.rem(nxt, depth)])

        with jax.named_scope("pv_wait_k"):  # P @ V, then the next K
          acc = _wgmma_accumulate(acc, p16, slot_tiles(v_smem), wait_next_k,
                                  fused=not interpret)
        plgpu.barrier_arrive(v_free.at[w * depth + slot])
        return acc, m_new, l_i, aux

      carry = (acc, m_i, l_i)
      start = jnp.int32(0)
      for seg in plan.segments(m):
        end = jnp.minimum(seg.end, count)
        aux = seg.mask.init if isinstance(seg.mask, CondMask) else ()
        *carry, _ = lax.fori_loop(start, end,
                                  functools.partial(step, mask=seg.mask),
                                  (*carry, aux))
        start = jnp.maximum(start, end)
      acc, m_i, l_i = carry
      if schedule:
        # Keep the ping-pong in step with the other warpgroup's longer list.
        other = block_of(1 - w)[2]

        def idle(i, _):
          schedule_sync()
          schedule_sync()

        lax.fori_loop(count, jnp.maximum(count, other), idle, None)
        pl.when(w == 0)(schedule_sync)
      if seeded:
        acc, l_i = merge_seed(w, r0, acc, m_i, l_i)

      # l >= 1 on every row that saw a key (its max contributes exp2(0)), and
      # acc == l == 0 on rows without keys: max(l, 1) gives zeros.
      acc = acc / lax.broadcast_in_dim(jnp.maximum(l_i, 1.0), acc.shape, [0])
      qo[...] = acc.astype(dtype)
      plgpu.commit_smem()

      @pl.when(valid)
      def _():
        plgpu.copy_smem_to_gmem(qo, o_ref.at[bb, pl.ds(r0, BLOCK), h])

      plgpu.wait_smem_to_gmem(0)

    @pl.when(wg >= wgs)
    def _producer():
      plgpu.set_max_registers(config.registers()[1], action="decrease")
      kv_head = lax.div(h, jnp.int32(g))
      blocks = [block_of(w) for w in range(wgs)]

      def issue(w, i, wait):
        """Step i of ring w: wait for slot i % depth to be released by step
        i - depth (if `wait`), then copy key/value tile i into it (if any).

        The waits run to count + depth, so the producer observes every
        release (Mosaic GPU interpret mode checks that no barrier phase goes
        unobserved; on the GPU the drain is idle time at the end).
        """
        m, _, count = blocks[w]
        slot = lax.rem(i, depth)
        # Read before the wait (an in-range tile even past the count).
        start = plan.key_start(m, jnp.clip(i, 0, jnp.maximum(count - 1, 0)))

        def copy(src_ref, dst_ref, bar):
          @pl.when(i < count)
          def _():
            plgpu.copy_gmem_to_smem(
                src_ref.at[bb, pl.ds(start, key_rows), kv_head],
                dst_ref.at[w, slot], bar.at[w * depth + slot])

        if not wait:
          copy(k_ref, k_smem, k_bars)
          copy(v_ref, v_smem, v_bars)
          return

        @pl.when(i < count + depth)
        def _():
          with jax.named_scope("wait_k_free"):
            plgpu.barrier_wait(k_free.at[w * depth + slot])
          with jax.named_scope("copy_k"):
            copy(k_ref, k_smem, k_bars)
          with jax.named_scope("wait_v_free"):
            plgpu.barrier_wait(v_free.at[w * depth + slot])
          with jax.named_scope("copy_v"):
            copy(v_ref, v_smem, v_bars)

      def plan_stream(w, i, state: StreamState):
        """Step i of ring w for a stream plan: the plan's next `halves`
        tiles, each its next primary tile or a gathered tile
        (`stream_advance`), for the slot's 64-row halves; a paired step
        past the plan's last tile loads an in-range tile as an EMPTY_HALF.
        Only the plan's scalar reads (GMEM) and no waits, so that with
        `config.plan_ahead` they run a step ahead, between the K and the V
        copies. Returns (the halves for `load_stream`, the next
        `StreamState`)."""
        m, _, count = blocks[w]
        subs, left = [], []
        with jax.named_scope("plan"):
          for half in range(halves):
            # Read before the wait (an in-range primary even past the last).
            p_in = jnp.clip(state.p, 0, jnp.maximum(n_primary[w] - 1, 0))
            tile, next_plan = plan.stream_next(m, p_in, state.plan)
            live = i * halves + half < n_tiles[w]
            gathered, primary, next_state = stream_advance(
                state, tile, next_plan, n_primary[w], live)
            empty = (i < count) & ~live
            # A gathered half takes its pending chunks from SMEM, except
            # those the earlier halves of this step left (`left`: passed on
            # in registers; every new chunk is stored after the step's
            # copies, so no half's SMEM reads race a store of the same
            # step).
            subs.append(dict(tile=tile, gathered=gathered,
                             whole=primary | empty, empty=empty,
                             pending=state.pending, left=tuple(left)))
            left.append((primary & tile.has_chunk, state.pending, tile.chunk))
            state = next_state
        return (subs, tuple(left)), state

      def load_stream(w, i, planned, wait, which):
        """`issue` for a stream plan and the tiles `which` ("k", "v"): waits
        for ring w's slot (if `wait`), copies step i's halves
        (`plan_stream`) into it (the K copies with each half's words for
        the consumer); after the V copies, stores the step's new pending
        chunks."""
        subs, left = planned
        _, _, count = blocks[w]
        slot = lax.rem(i, depth)
        bar = w * depth + slot
        pending_ref = stream_smem[1].at[w]  # [GATHER]

        def chunk_words(sub):
          """A gathered half's GATHER chunk words; the slots past its
          pending chunks repeat chunk 0's row with bits 0 (an in-range copy
          whose keys the mask drops)."""
          words = [pending_ref[j] for j in range(GATHER)]
          for wrote, index, chunk in sub["left"]:
            words = [jnp.where(wrote & (index == j), chunk, word)
                     for j, word in enumerate(words)]
          blank = words[0] - (words[0] & (CHUNK - 1))
          return [jnp.where(j < sub["pending"], word, blank)
                  for j, word in enumerate(words)]

        def load(src_ref, dst_ref, bars, with_words):
          for half, sub in enumerate(subs):
            tile, empty = sub["tile"], sub["empty"]
            words_ref = stream_smem[0].at[w, lax.rem(i, 2 * depth), half]
            rows = half * BLOCK

            @pl.when(sub["whole"])
            def _():
              if with_words:
                words_ref[0] = jnp.where(empty, EMPTY_HALF, tile.header * 2)
              start = jnp.where(empty, 0, tile.start)
              plgpu.copy_gmem_to_smem(
                  src_ref.at[bb, pl.ds(pl.multiple_of(start, 8), BLOCK),
                             kv_head],
                  dst_ref.at[w, slot, pl.ds(rows, BLOCK)], bars.at[bar])

            @pl.when(sub["gathered"])
            def _():
              chunks = chunk_words(sub)
              if with_words:
                words_ref[0] = jnp.int32(1)
                for j, word in enumerate(chunks):
                  words_ref[1 + j] = word
              for j, word in enumerate(chunks):
                row = pl.multiple_of(word - (word & (CHUNK - 1)), CHUNK)
                plgpu.copy_gmem_to_smem(
                    src_ref.at[bb, pl.ds(row, CHUNK), kv_head],
                    dst_ref.at[w, slot, pl.ds(rows + j * CHUNK, CHUNK)],
                    bars.at[bar] if j == 0 else
                    gather_bars.at[bar * halves + half])

        parts = {"k": (k_ref, k_smem, k_bars, k_free, True),
                 "v": (v_ref, v_smem, v_bars, v_free, False)}
        for part in which:
          src, dst, bars, free, with_words = parts[part]
          if wait:
            @pl.when(i < count + depth)
            def _():
              with jax.named_scope(f"wait_{part}_free"):
                plgpu.barrier_wait(free.at[bar])
              with jax.named_scope(f"copy_{part}"):
                load(src, dst, bars, with_words)
          else:
            with jax.named_scope(f"copy_{part}"):
              load(src, dst, bars, with_words)
        if "v" not in which:  # the V copies still read the pending chunks
          return
        for wrote, index, chunk in left:
          @pl.when(wrote)
          def _():
            pending_ref[index] = chunk

      def issue_stream(rings, carry, i, wait):
        """Step i of the rings `rings` (the plan's reads, the K and V
        copies); the carry is each ring's `StreamState` after step i - 1,
        and with `config.plan_ahead` also step i's `plan_stream` (read
        during step i - 1). Returns the carry of step i + 1."""
        if not config.plan_ahead:  # ring by ring
          states = list(carry)
          for j, w in enumerate(rings):
            planned, states[j] = plan_stream(w, i, states[j])
            load_stream(w, i, planned, wait, ("k", "v"))
          return tuple(states)
        states, plans = carry
        for j, w in enumerate(rings):
          load_stream(w, i, plans[j], wait, ("k",))
        ahead = [plan_stream(w, i + 1, states[j])
                 for j, w in enumerate(rings)]
        for j, w in enumerate(rings):
          load_stream(w, i, plans[j], wait, ("v",))
        return (tuple(state for _, state in ahead),
                tuple(planned for planned, _ in ahead))

      if stream:
        n_primary = [plan.primary_count(blocks[w][0]) for w in range(wgs)]
        n_tiles = [plan_tiles(w)[2] for w in range(wgs)]

      def produce(rings):
        """The producer of the rings `rings`: fills them, then refills each
        slot as it is released, to the longest ring's count + depth."""
        longest = blocks[rings[0]][2]
        for w in rings[1:]:
          longest = jnp.maximum(longest, blocks[w][2])
        if stream:
          carry = tuple(StreamState(jnp.int32(0), jnp.int32(0),
                                    plan.stream_init(blocks[w][0]))
                        for w in rings)
          if config.plan_ahead:
            first = [plan_stream(w, 0, state)
                     for w, state in zip(rings, carry)]
            carry = (tuple(state for _, state in first),
                     tuple(planned for planned, _ in first))
          for i in range(depth):  # fill the rings
            carry = issue_stream(rings, carry, i, wait=False)

          @pl.loop(depth, longest + depth, init_carry=carry)
          def _(i, carry):
            return issue_stream(rings, carry, i, wait=True)
          return

        for i in range(depth):  # fill the rings
          for w in rings:
            issue(w, i, wait=False)

        @pl.loop(depth, longest + depth)
        def _(i):
          for w in rings:
            issue(w, i, wait=True)

      if config.producers == 1:
        produce(tuple(range(wgs)))
        return
      for w in range(wgs):  # producer wgs + w drives ring w alone
        pl.when(wg == wgs + w)(functools.partial(produce, (w,)))

  def entry(*refs):
    transforms = smem_transforms(key_rows)
    qo = plgpu.SMEM((wgs, BLOCK, d), dtype, transforms=transforms)
    ring = lambda: plgpu.SMEM((wgs, depth, key_rows, d), dtype,
                              transforms=transforms)
    seed_smem = plgpu.SMEM((wgs, BLOCK), jnp.float32) if seeded else None
    # A stream's words per ring slot, and each ring's pending chunks.
    stream_smem = ((plgpu.SMEM((wgs, 2 * depth, halves, 1 + GATHER),
                               jnp.int32),
                    plgpu.SMEM((wgs, GATHER), jnp.int32)) if stream else None)
    smem = (qo, ring(), ring(), seed_smem, stream_smem)
    # One copy per 64-row half of a step (a gathered half's first chunk).
    loaded = lambda: plgpu.Barrier(num_arrivals=halves,
                                   num_barriers=wgs * depth)
    freed = lambda: plgpu.Barrier(num_arrivals=1, num_barriers=wgs * depth)
    barriers = (
        plgpu.Barrier(num_barriers=wgs), loaded(), loaded(), freed(), freed(),
        plgpu.Barrier(num_arrivals=wgs) if schedule else None,
        (plgpu.Barrier(num_barriers=wgs),) * 2 if seeded else None,
        # A gathered tile's chunks 1..7 of K and V (chunk 0 on k/v_bars).
        plgpu.Barrier(num_arrivals=2 * (GATHER - 1),
                      num_barriers=wgs * depth * halves)
        if stream else None,
    )
    pl.run_scoped(lambda *scratch: kernel(refs, *scratch), smem, barriers,
                  collective_axes="wg")

  return plgpu.kernel(
      entry,
      out_type=jax.ShapeDtypeStruct(q.shape, dtype),
      **_grid(config.fastest_axis, n, n_pairs, g, b),
      num_threads=wgs + config.producers,
      thread_name="wg",
      compiler_params=plgpu.CompilerParams(
          approx_math=True, profile_space=config.profile_space,
          profile_dir=config.profile_dir,
          profile_bounds_check=config.profile_space > 0),
      interpret=interpret,
      kernel_name=(f"{name}_d{d}_w{wgs}_s{depth}"
                   f"{f'_k{key_rows}' if key_rows != BLOCK else ''}"
                   f"{'_seeded' if seeded else ''}"
                   f"{'_stream' if stream else ''}"),
  )(*index_args, q, k, v, *(seed or ()))
