"""Kernel configs and shared helpers: validation and defaults."""

import dataclasses

import pytest

from pallas_kernels import a_shape, block_sparse, common, flash, vertical_slash


@pytest.mark.parametrize("d,want", [(64, 64), (96, 128), (128, 128),
                                    (80, 128), (256, 256), (8, 16)])
def test_padded_head_dim(d, want):
  assert common.padded_head_dim(d) == want


def test_configs_are_frozen_hashable_and_validated():
  for mod in (flash, a_shape, vertical_slash, block_sparse):
    for d in (64, 96, 128, 256):
      cfg = mod.Config.get_default(d)
      assert hash(cfg) == hash(mod.Config.get_default(d))
      with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.num_warps = 2
    with pytest.raises(ValueError, match="num_warps"):
      mod.Config(num_warps=3)
    with pytest.raises(ValueError, match="num_stages"):
      mod.Config(num_stages=0)
  for mod in (flash, a_shape):
    with pytest.raises(ValueError, match="block_q"):
      mod.Config(block_q=96)
    with pytest.raises(ValueError, match="block_k"):
      mod.Config(block_k=8)
    with pytest.raises(TypeError, match="block_k"):
      mod.Config(block_k=64.0)
  with pytest.raises(ValueError, match="block_c"):
    vertical_slash.Config(block_c=48)
