"""The benchmark's fallback layout generators produce valid layouts, and the
benchmark's row-sampled masks agree with the reference masks."""

import jax
import numpy as np
import pytest

import kernel_test_utils as ktu
from experiments import bench_common as bc
from pallas_kernels import reference


@pytest.mark.parametrize("t", [300, 5000])
def test_clustered_layouts_are_valid(t):
  _, seed = ktu.fresh_rng()
  key = jax.random.key(seed)
  vs = bc.clustered_vs_layout(key, 1, 2, t, 60, 300)
  ktu.check_vs_layout(vs, t)
  assert int(vs.block_count.max()) > 1 and int(vs.column_count.max()) > 0
  bsl = bc.clustered_bs_layout(key, 1, 2, t, 20, n_local=8)
  ktu.check_bs_layout(bsl)


def test_rows_masks_match_reference_masks():
  rng, seed = ktu.fresh_rng()
  t, n = 260, 3
  rows = np.array(sorted(rng.choice(t, 40, replace=False)))
  vs = ktu.random_vs_layout(rng, 1, n, t, 4, 30)
  bsl = ktu.random_bs_layout(rng, 1, n, t, 3)
  ash = ktu.random_a_shape_layout(rng, n, t)
  pairs = [
      (bc.vs_rows_mask(vs, rows, t), reference.vertical_slash_mask(vs, t, t)),
      (bc.bs_rows_mask(bsl, rows, t), reference.block_sparse_mask(bsl, t, t)),
      (bc.a_shape_rows_mask(ash, rows, t), reference.a_shape_mask(ash, t, t)),
  ]
  for got, full in pairs:
    np.testing.assert_array_equal(
        np.asarray(got), np.asarray(full)[:, :, rows], err_msg=f"{seed=}")
  part = bc.vs_rows_mask(vs, rows, t, slice(1, 3))
  np.testing.assert_array_equal(np.asarray(part),
                                np.asarray(pairs[0][1])[:, 1:3, rows])


def test_crossover_is_per_kernel_implementation():
  """The dense-fallback crossover of each (pattern, implementation): the
  smallest T from which the layer wins at every larger measured T."""
  from experiments.bench_kernels import crossover_from_rows

  def row(t, impl, speedup, kernel="a_shape", kv=8):
    return dict(kernel=kernel, K=kv, T=t, impl=impl, layer_speedup=speedup)

  rows = [row(4096, "triton", 1.1), row(8192, "triton", 0.8),
          row(16384, "triton", 1.2), row(8192, "mosaic_gpu", 1.05),
          row(16384, "mosaic_gpu", 1.4), row(4096, "mosaic_gpu", 0.9),
          row(8192, "triton", 5.0, kv=32),  # other K: ignored
          row(8192, "triton", 0.5, kernel="block_sparse"),
          row(16384, "triton", 0.7, kernel="block_sparse")]
  found = crossover_from_rows(rows, ["a_shape", "block_sparse"], kv=8)
  assert found["a_shape"]["crossover_T"] == 16384  # 8K loses after 4K won
  assert found["a_shape@mosaic_gpu"]["crossover_T"] == 8192
  assert found["a_shape"]["layer_speedup"] == {4096: 1.1, 8192: 0.8,
                                               16384: 1.2}
  assert found["block_sparse"]["crossover_T"] is None  # never wins
  assert "block_sparse@mosaic_gpu" not in found  # not measured


@pytest.mark.parametrize("impl,step_keys", [("mosaic_gpu_k64", 64),
                                             ("mosaic_gpu_k128", 128)])
def test_step_keys_impls_pass_their_config(impl, step_keys, monkeypatch):
  """`kernel_impls=[mosaic_gpu_k64 / _k128]` call the Vertical-Slash entry
  point's Mosaic GPU implementation with the default config for 64 / 128
  keys per step; asked for another pattern's kernel, they refuse."""
  from experiments import kernel_impls
  from pallas_kernels.vertical_slash import pallas_mosaic_gpu

  calls = []
  monkeypatch.setitem(kernel_impls.OPS, "vertical_slash",
                      lambda *args, **kwargs: calls.append((args, kwargs)))
  fn = kernel_impls.kernel_fn("vertical_slash", impl, head_dim=64,
                              interpret=True)
  fn("q", "k", "v", "layout")
  assert calls == [(("q", "k", "v", "layout"), dict(
      implementation="pallas_mosaic_gpu", interpret=True,
      config=pallas_mosaic_gpu.default_config(64, step_keys)))]
  with pytest.raises(ValueError, match="Vertical-Slash kernel"):
    kernel_impls.kernel_fn("block_sparse", impl, head_dim=64)
  with pytest.raises(ValueError, match="unknown kernel impl 'cuda'"):
    kernel_impls.kernel_fn("block_sparse", "cuda", head_dim=64)


def test_triton_sweep_configs():
  from experiments import kernel_impls
  from pallas_kernels import vertical_slash

  assert kernel_impls.triton_config("vertical_slash", [8, 3]) == (
      vertical_slash.Config(num_warps=8, num_stages=3))
  assert kernel_impls.describe(None) == "default"
  assert kernel_impls.describe(vertical_slash.Config(num_warps=8)) == (
      "block_c=64,num_warps=8,num_stages=2")
  with pytest.raises(ValueError, match="at most 2 values"):
    kernel_impls.triton_config("block_sparse", [4, 2, 1])
