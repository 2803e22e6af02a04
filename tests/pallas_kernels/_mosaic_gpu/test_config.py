"""The Mosaic GPU core's launch knobs, profiler option and input checks."""

import jax.numpy as jnp
import pytest

from pallas_kernels._mosaic_gpu import config as mgpu
from pallas_kernels._mosaic_gpu.config import Config, Profile


def test_config_rejects_bad_knobs():
  with pytest.raises(ValueError, match="compute_wgs"):
    Config(compute_wgs=3)
  with pytest.raises(ValueError, match="max_concurrent_steps"):
    Config(max_concurrent_steps=0)
  with pytest.raises(ValueError, match="max_concurrent_steps"):
    Config(max_concurrent_steps=True)
  for regs in (100, 44, 16, 40.0):
    with pytest.raises(ValueError, match="producer_registers"):
      Config(producer_registers=regs)


def test_registers_split_the_register_file():
  """Each producer takes `producer_registers`, the compute warpgroups the
  rest of 64K per SM (rounded down to 8, at most 232); one compute
  warpgroup always runs with one producer of 24."""
  assert Config(producer_registers=40).registers() == (232, 40)
  assert Config(producer_registers=72).registers() == (216, 72)
  assert Config(producer_registers=40,
                ring_producers=True).registers() == (216, 40)
  assert Config(compute_wgs=1, ring_producers=True).producers == 1
  assert Config(compute_wgs=1).registers() == (240, 24)
  for cfg in (Config(), Config(ring_producers=True, producer_registers=56),
              Config(producer_registers=96)):
    compute, producer = cfg.registers()
    assert 2 * compute + cfg.producers * producer <= 512, cfg
    assert compute % 8 == 0, cfg


def test_smem_bytes_counts_tiles_rings_and_seed():
  cfg = Config(compute_wgs=2, max_concurrent_steps=2)
  tile = 64 * 128 * 2  # one [64, 128] bf16 tile
  assert cfg.smem_bytes(128) == 2 * (tile + 2 * 2 * tile)
  assert cfg.smem_bytes(128, seeded=True) == cfg.smem_bytes(128) + 2 * 256
  assert cfg.smem_bytes(128, key_rows=128) == 2 * (tile + 2 * 2 * 2 * tile)


def test_profile_is_checked_and_takes_smem():
  with pytest.raises(ValueError, match="space"):
    Profile(space=0, directory="traces")
  with pytest.raises(ValueError, match="space"):
    Profile(space=True, directory="traces")
  with pytest.raises(ValueError, match="directory"):
    Profile(space=64, directory="")
  profile = Profile(space=64, directory="traces")
  q = jnp.zeros((1, 128, 2, 128), jnp.bfloat16)
  k = jnp.zeros((1, 128, 1, 128), jnp.bfloat16)
  for cfg in (Config(), Config(ring_producers=True), Config(compute_wgs=1)):
    assert profile.smem_bytes(cfg.warpgroups) == cfg.warpgroups * 64 * 16
    mgpu.check_inputs(q, k, k, "test", cfg, profile=profile)  # fits
  # A profile too large for the SMEM left by the default config.
  with pytest.raises(ValueError, match="SMEM"):
    mgpu.check_inputs(q, k, k, "test", Config(),
                      profile=Profile(space=2048, directory="traces"))


@pytest.mark.parametrize("t,d,dtype", [
    (128, 64, jnp.bfloat16), (192, 256, jnp.float16), (130, 64, jnp.bfloat16),
    (128, 96, jnp.bfloat16), (128, 64, jnp.float32), (0, 64, jnp.bfloat16),
])
def test_takes_agrees_with_the_input_checks(t, d, dtype):
  """`takes(q)` is True exactly when the kernels' own input checks accept
  q (default config); `unsupported_reason` in interpret mode says None
  exactly then, and off a Hopper GPU always names the GPU."""
  q = jnp.zeros((1, t, 2, d), dtype)
  k = jnp.zeros((1, t, 1, d), dtype)
  try:
    mgpu.check_inputs(q, k, k, "test", Config.get_default(d))
    accepted = True
  except (TypeError, ValueError):
    accepted = False
  assert mgpu.takes(q) == accepted
  assert (mgpu.unsupported_reason(q, interpret=True) is None) == accepted
  assert not mgpu.hopper_gpu()  # CPU tests
  assert "Hopper" in mgpu.unsupported_reason(q)


def test_unsupported_reason_names_the_length_limit():
  q = jnp.zeros((1, 256, 2, 64), jnp.bfloat16)
  assert mgpu.unsupported_reason(q, interpret=True, max_t=256) is None
  assert "T <= 192" in mgpu.unsupported_reason(q, interpret=True, max_t=192)
