"""Launch knobs, profiler option and input checks of the Mosaic GPU kernels."""

import dataclasses
from typing import NamedTuple

import jax
import jax.numpy as jnp

from pallas_kernels import common

BLOCK = 64  # rows of a query block and of a key tile
SUPPORTED_HEAD_DIMS = (64, 128, 256)
# Opt-in dynamic SMEM of an H100/H200 CTA (227 KiB), minus a margin for the
# barriers and the cross-warp reduction scratch Mosaic GPU reserves.
SMEM_BYTES = 227 * 1024 - 4 * 1024


def _is_int(x) -> bool:
  return isinstance(x, int) and not isinstance(x, bool)


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
      and softmax phases (the ping-pong schedule of FlashAttention-3, Shah
      et al. 2024, section 3.1): a barrier both warpgroups keep in step.
    producer_registers: registers per thread of each producer warpgroup
      with two compute warpgroups (a multiple of 8 in [24, 96]); the
      compute warpgroups get the rest of the SM's 64K, rounded down to a
      multiple of 8 (40 -> 232, 56 -> 224, 72 -> 216 with one producer).
      With one compute warpgroup: 24 and 240.
    plan_ahead: stream plans only. The producer's loop body copies every
      ring's K tile of step i, then reads the plan of step i + 1 (its GMEM
      scalars), then copies every ring's V tile of step i; False: ring by
      ring, each ring's plan read, K copy and V copy in turn. With one
      slot per ring a release is followed at once by the copy into it, so
      the plan's GMEM latency is hidden while the V slot is still busy.
    ring_producers: with two compute warpgroups, one producer warpgroup
      per ring (four warpgroups), each walking its ring alone to its own
      step count, so no ring's copies wait behind the other ring's release
      (one producer for both rings copies ring 1's tile of step i only
      after ring 0 has released its slot of step i, however far ahead
      ring 1 is).
  """

  compute_wgs: int = 2
  max_concurrent_steps: int = 2
  use_schedule_barrier: bool = False
  producer_registers: int = 40
  plan_ahead: bool = False
  ring_producers: bool = False

  def __post_init__(self):
    if self.compute_wgs not in (1, 2):
      raise ValueError(f"compute_wgs={self.compute_wgs} must be 1 or 2")
    steps = self.max_concurrent_steps
    if not _is_int(steps) or steps < 1:
      raise ValueError(f"max_concurrent_steps={steps!r} must be an int >= 1")
    regs = self.producer_registers
    if not _is_int(regs) or regs % 8 or not 24 <= regs <= 96:
      raise ValueError(f"producer_registers={regs!r} must be a multiple of 8"
                       " in [24, 96]")

  @property
  def producers(self) -> int:
    """Producer warpgroups: one per ring with `ring_producers`, else 1."""
    return self.compute_wgs if self.ring_producers else 1

  @property
  def warpgroups(self) -> int:
    """Warpgroups per CTA: compute and producers."""
    return self.compute_wgs + self.producers

  def registers(self) -> tuple[int, int]:
    """(compute warpgroup, producer) registers per thread."""
    if self.compute_wgs == 1:
      return 240, 24
    spare = 65536 // 128 - self.producers * self.producer_registers
    return min(spare // 2 // 8 * 8, 232), self.producer_registers

  def smem_bytes(self, head_dim: int, itemsize: int = 2,
                 seeded: bool = False, key_rows: int = BLOCK) -> int:
    """SMEM of the q/o tiles, the K/V rings ([key_rows, D] tiles) and the
    seed's lse (if any; its output tile reuses the q/o tile)."""
    ring = 2 * self.max_concurrent_steps * key_rows * head_dim * itemsize
    per_wg = BLOCK * head_dim * itemsize + ring + (BLOCK * 4 if seeded else 0)
    return self.compute_wgs * per_wg

  @classmethod
  def get_default(cls, head_dim: int = 128) -> "Config":
    """2 query blocks per CTA while 2 rings fit in SMEM; 1 for D = 256."""
    if head_dim <= 128:
      return cls(compute_wgs=2, max_concurrent_steps=3 if head_dim <= 64
                 else 2)
    return cls(compute_wgs=1, max_concurrent_steps=2)


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class Profile:
  """Mosaic GPU's profiler over the kernel's named regions (a diagnostic).

  The kernel names its regions with `jax.named_scope`: "words", "qk",
  "mask", "softmax", "wait_v", "pv_wait_k" in the compute warpgroups;
  "wait_k_free", "copy_k", "plan", "wait_v_free", "copy_v" in the
  producers. With a `Profile`, each warpgroup of each CTA records up to
  `space` regions in SMEM (16 bytes per region) and each call writes a
  Chrome trace into `directory`. The clock reads cost time, and the trace
  is written by a host callback, so a profiled kernel lowers only on a GPU.

  Attributes:
    space: regions recorded per warpgroup and CTA (> 0).
    directory: where each call writes its trace.
  """

  space: int
  directory: str

  def __post_init__(self):
    if not _is_int(self.space) or self.space <= 0:
      raise ValueError(f"Profile.space={self.space!r} must be an int > 0")
    if not isinstance(self.directory, str) or not self.directory:
      raise ValueError("Profile.directory must be a non-empty path, got"
                       f" {self.directory!r}")

  def smem_bytes(self, warpgroups: int) -> int:
    """The profiler's SMEM buffer: 2 events of 2 int32 per region and
    warpgroup."""
    return warpgroups * self.space * 16


class Dims(NamedTuple):
  b: int  # batch
  t: int  # sequence length (queries == keys)
  n: int  # query heads
  g: int  # query heads per KV head
  d: int  # head dim
  tb: int  # 64-row query blocks


def takes(q) -> bool:
  """Whether q's dtype and shape are ones the Mosaic GPU kernels take (what
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
                 copy_rows: int | None = None,
                 profile: Profile | None = None) -> Dims:
  """Validates q/k/v for the Mosaic GPU kernels; returns the static dims.

  key_rows: rows of a ring slot; copy_rows: rows of its largest TMA copy
  (key_rows if None; 64 for a paired stream's 128-row slots); profile: the
  profiler's SMEM counts too.

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
  if profile is not None:
    need += profile.smem_bytes(config.warpgroups)
  if need > SMEM_BYTES:
    raise ValueError(
        f"{op}: {config} needs {need} bytes of SMEM at D={d}, more than"
        f" {SMEM_BYTES}; lower compute_wgs or max_concurrent_steps")
  return Dims(b, t, n, g, d, t // BLOCK)
