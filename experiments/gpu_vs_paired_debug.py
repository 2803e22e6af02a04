"""GPU checks of the paired (128-key) Vertical-Slash stream steps on
hand-made layouts, one printed line per case (rel. L2 error against the
dense f32 reference, and the (head, query block) pairs whose rows are off
by more than 0.05).

Run on an H100/H200 from the repo root:
  PYTHONPATH=.:tests python3 -m experiments.gpu_vs_paired_debug

`synthetic` cases: a mask-free 128-row tile list (`k128_free`'s tiles), then
windows per query block m: the diagonal only (an empty second half), two or
four aligned windows, a misaligned run (a gathered half after the
primaries); each with 64-key steps where named `_k64`, at D = 64 with two
slots, with one warpgroup. `tests` cases: the kernel tests' hand-made runs
and many-tails layouts, as they are and with every block that has no
window given its diagonal one (`_filled`). In the seventh session the first
version of the paired stream passed every synthetic case and failed the
`tests` ones; in the eighth, the reworked producer passed all of them
(rel. error 1.8e-3 to 2.2e-3; before `four_aligned_d256` was added and
before `free_128_tiles` drew its windows with the tests' helper), also
with one QK wgmma per step and the producer a step ahead with 72 registers
(`experiments/results/gpu_vs_paired_steps_h200.md`).
"""

import sys

import jax.numpy as jnp
import numpy as np

import kernel_test_utils as ktu
import test_kernels_vertical_slash_mgpu as tvs
from experiments import gpu_vs_mgpu_variants as variants
from experiments.gpu_mgpu_kernels import _dims
from pallas_kernels import mosaic_gpu_core as core
from pallas_kernels.layouts import VerticalSlashLayout
from pallas_kernels.reference import vertical_slash_mask
from pallas_kernels.vertical_slash import pallas_mosaic_gpu as vs_mgpu


def _report(name, out, want):
  out = np.asarray(out.astype(jnp.float32))
  err = np.abs(out - want).max(axis=-1)[0]  # [T, N]
  bad = sorted({(int(h), int(r) // 64) for r, h in zip(*np.nonzero(
      err > 0.05))})
  rel = float(np.linalg.norm(out - want) / np.linalg.norm(want))
  print(f"{name}: rel {rel:.4g}, bad (head, block) {bad[:12]}", flush=True)


def run_layout(name, layout, t, d=128, config=None, step_keys=128):
  """The whole kernel (no columns in these layouts) on `layout`."""
  rng = np.random.default_rng(0)
  n = layout.block_count.shape[1]
  q, k, v = ktu.random_qkv(rng, 1, t, n, 1, d, jnp.bfloat16)
  if config is None:
    config = vs_mgpu.default_config(d, step_keys)
  out = vs_mgpu._fwd(q, k, v, layout.block_count, layout.block_offset,
                     layout.column_count, layout.column_index, block_size=64,
                     config=config, interpret=None, step_keys=step_keys)
  _report(name, out, ktu.reference(q, k, v, vertical_slash_mask(layout, t,
                                                                  t)))


def windows_layout(t, offsets_of_block, n=2):
  """Every head's query block m gets the windows offsets_of_block(m)."""
  tb = t // 64
  rows = [offsets_of_block(m) for m in range(tb)]
  width = max(1, max(len(r) for r in rows))
  count = np.zeros((1, n, tb), np.int32)
  offset = np.zeros((1, n, tb, width), np.int32)
  for m, o in enumerate(rows):
    count[0, :, m] = len(o)
    offset[0, :, m, :len(o)] = o
  return VerticalSlashLayout(
      jnp.asarray(count), jnp.asarray(offset),
      jnp.zeros((1, n, tb), jnp.int32), jnp.zeros((1, n, tb, 0), jnp.int32))


def with_diagonals(layout):
  """Blocks without windows get their diagonal window."""
  count = np.asarray(layout.block_count).copy()
  offset = np.asarray(layout.block_offset).copy()
  for _, h, m in zip(*np.nonzero(count == 0)):
    count[0, h, m], offset[0, h, m, 0] = 1, m * 64
  return VerticalSlashLayout(jnp.asarray(count), jnp.asarray(offset),
                             layout.column_count, layout.column_index)


def free_128_tiles(t=1024):
  """The mask-free 128-row tile list at depth 1 against its tiles' keys."""
  rng = np.random.default_rng(1)
  n, d = 2, 128
  q, k, v = ktu.random_qkv(rng, 1, t, n, 1, d, jnp.bfloat16)
  count, offset, keep = tvs.random_128_row_tiles(rng, t, n)
  out = core.tile_list_attention(
      q, k, v, (jnp.asarray(count), jnp.asarray(offset)),
      plan_fn=lambda refs, bb, h: variants._Plan128Free(*refs, bb, h, t),
      config=variants.W2S1, dims=_dims(q, k), interpret=None,
      name="free128", key_rows=128)
  _report("free_128_tiles", out, ktu.reference(q, k, v, jnp.asarray(keep)))


def synthetic(t=1024):
  free_128_tiles(t)
  diagonal = lambda m: [m * 64]
  four = lambda m: [0, 64, 256, m * 64] if m >= 5 else [m * 64]
  run = lambda m: [3, 67, m * 64] if m >= 3 else [m * 64]
  run_layout("diagonal_k64", windows_layout(t, diagonal), t, step_keys=64)
  run_layout("diagonal", windows_layout(t, diagonal), t)
  run_layout("two_aligned", windows_layout(
      t, lambda m: [0, m * 64] if m else [0]), t)
  run_layout("four_aligned", windows_layout(t, four), t)
  run_layout("misaligned_run", windows_layout(t, run), t)
  run_layout("misaligned_run_k64", windows_layout(t, run), t, step_keys=64)
  run_layout("four_aligned_d64", windows_layout(t, four), t, d=64)
  run_layout("four_aligned_w1s1", windows_layout(t, four), t,
             config=core.Config(compute_wgs=1, max_concurrent_steps=1,
                                plan_ahead=True))
  run_layout("four_aligned_d256", windows_layout(t, four), t, d=256)


def from_tests():
  many, t = tvs._many_tails_layout(), tvs.MANY_TAILS_T
  run_layout("many_tails", many, t)
  run_layout("many_tails_k64", many, t, step_keys=64)
  run_layout("many_tails_d64", many, t, d=64)
  run_layout("many_tails_filled", with_diagonals(many), t)
  runs = tvs._run_layout()
  run_layout("runs", runs, 448)
  run_layout("runs_filled", with_diagonals(runs), 448)


if __name__ == "__main__":
  which = sys.argv[1:] or ["synthetic", "tests"]
  if "synthetic" in which:
    synthetic()
  if "tests" in which:
    from_tests()
