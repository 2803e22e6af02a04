"""Mosaic GPU Vertical-Slash kernel: interpret mode and lowering on CPU, and
on a Hopper GPU.

The windows and their run tails (gathered 64-row tiles of 8-row chunks) run
in the Mosaic GPU tile-list pipeline (interpret mode,
`plgpu.InterpretGPUParams`: warpgroups, SMEM, TMA copies and barriers are
simulated), seeded with the (output, log-sum-exp) of the gathered columns
from the Pallas-Triton column kernel (Pallas interpret mode). The output is
checked against the dense f32 reference on exactly the layout's key set. In
interpret mode the P @ V product is a plain f32-accumulated dot
(`_mosaic_gpu.softmax.wgmma_accumulate`); the per-step choice of mask (a
`StreamMask`, a `lax.switch` on the words the producer wrote) runs as on the
GPU, and `test_stream_covers_the_key_set_once` also walks the producer's
stream (`stream_advance`) and the masks directly. Cases run one and two
compute warpgroups (two need `PJRT_NPROC`, set in conftest.py, on small
hosts), 64-key steps and paired 128-key steps (two of the stream's 64-row
tiles per 128-row slot), with the producer a step ahead
(`Config.plan_ahead`) and ring by ring. The lowering test cross-lowers both
launches for an abstract H200; the `gpu` tests run them on a Hopper GPU at
4K-16K tokens.
"""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import gpu_checks
import kernel_test_utils as ktu
from pallas_kernels._mosaic_gpu.stream import (
    GATHER,
    StreamState,
    stream_advance,
)
from pallas_kernels.layouts import VerticalSlashLayout
from pallas_kernels.reference import vertical_slash_mask
from pallas_kernels.vertical_slash import pallas_mosaic_gpu as vs_mgpu
from pallas_kernels.vertical_slash import tile_steps
from pallas_kernels.vertical_slash.pallas_mosaic_gpu import (
    Config,
    vertical_slash_attention_mgpu,
)

W2S2 = Config(compute_wgs=2, max_concurrent_steps=2,
              use_schedule_barrier=False)
W2S2P = Config(compute_wgs=2, max_concurrent_steps=2,
               use_schedule_barrier=True)  # ping-pong, with the column seed
W1S2 = Config(compute_wgs=1, max_concurrent_steps=2)
W2S1P = Config(compute_wgs=2, max_concurrent_steps=1,
               use_schedule_barrier=True)  # 128-key steps at D = 128
W1S3 = Config(compute_wgs=1, max_concurrent_steps=3)

# Paired (128-key) steps: the D = 128 default (one K/V slot per warpgroup,
# the producer a step ahead), also run at D = 64; one warpgroup.
PAIRED = vs_mgpu.default_config(128, 128)
PAIRED_W1 = Config(compute_wgs=1, max_concurrent_steps=2, plan_ahead=True)

CASES = [
    # b, t, n, kv, d, dtype, n_slash, n_vert, config, step_keys
    (1, 256, 4, 2, 64, jnp.bfloat16, 3, 40, W2S2, 64),
    (1, 192, 4, 1, 128, jnp.float16, 2, 100, None, 64),  # > 1 column chunk
    (1, 320, 4, 2, 64, jnp.bfloat16, 4, 20, W1S2, 64),  # one warpgroup
    (2, 128, 2, 2, 64, jnp.bfloat16, 2, 0, W1S3, 64),  # no columns: tails only
    (1, 192, 4, 4, 64, jnp.float16, 0, 50, None, 64),  # columns only
    (1, 128, 2, 1, 256, jnp.bfloat16, 2, 30, None, 64),  # 1 warpgroup, D = 256
    (1, 64, 2, 1, 64, jnp.bfloat16, 1, 0, W1S2, 64),  # one block
    (1, 320, 4, 2, 64, jnp.bfloat16, 5, 30, W2S2P, 64),  # odd blocks: one idle
    # One producer warpgroup per ring, odd blocks (one ring idle).
    (1, 320, 4, 2, 64, jnp.bfloat16, 5, 30,
     dataclasses.replace(W2S2, ring_producers=True), 64),
    # Paired steps: the default config at D = 128 (an odd window count per
    # block leaves an empty half), one warpgroup, the ping-pong, D = 256.
    (1, 256, 4, 2, 128, jnp.bfloat16, 3, 40, None, 128),
    (2, 192, 2, 2, 64, jnp.float16, 4, 0, PAIRED_W1, 128),
    (1, 320, 4, 2, 128, jnp.bfloat16, 5, 30, W2S1P, 128),
    (1, 128, 2, 1, 256, jnp.bfloat16, 2, 30, None, 128),
]


@pytest.mark.parametrize(
    "b,t,n,kv,d,dtype,n_slash,n_vert,config,step_keys", CASES)
def test_matches_reference(b, t, n, kv, d, dtype, n_slash, n_vert, config,
                           step_keys):
  rng, seed = ktu.fresh_rng()
  q, k, v = ktu.random_qkv(rng, b, t, n, kv, d, dtype)
  layout = ktu.random_vs_layout(rng, b, n, t, n_slash, n_vert, inactive=(1,))
  out = vertical_slash_attention_mgpu(q, k, v, layout, config=config,
                                      step_keys=step_keys, interpret=True)
  assert out.shape == q.shape and out.dtype == q.dtype
  want = ktu.reference(q, k, v, vertical_slash_mask(layout, t, t))
  got = np.asarray(out.astype(jnp.float32))
  assert np.isfinite(got).all(), f"non-finite output (seed={seed})"
  assert not got[:, :, 1].any(), f"inactive head not zero (seed={seed})"
  if np.linalg.norm(want):
    ktu.assert_close(out, want, dtype, seed,
                     f"T={t} D={d} {config} {step_keys} keys per step")


def test_diagonal_window_plus_all_columns_is_causal():
  """Window [r0, r0 + 64) and every column left of it == causal attention:
  mask-free column chunks, the seeded state and the diagonal mask."""
  rng, seed = ktu.fresh_rng()
  b, t, n, kv, d = 1, 256, 2, 1, 64
  tb = t // 64
  q, k, v = ktu.random_qkv(rng, b, t, n, kv, d, jnp.bfloat16)
  r0 = jnp.arange(tb, dtype=jnp.int32) * 64
  cols = jnp.where(jnp.arange(t - 64)[None, :] < r0[:, None],
                   jnp.arange(t - 64)[None, :], 7)  # padding: in range
  bcast = lambda x: jnp.broadcast_to(x, (b, n) + x.shape).astype(jnp.int32)
  layout = VerticalSlashLayout(
      block_count=bcast(jnp.ones((tb,))), block_offset=bcast(r0[:, None]),
      column_count=bcast(r0), column_index=bcast(cols))
  out = vertical_slash_attention_mgpu(q, k, v, layout, interpret=True)
  causal = jnp.tril(jnp.ones((t, t), bool))[None, None]
  ktu.assert_close(out, ktu.reference(q, k, v, causal), jnp.bfloat16, seed,
                   "diagonal window + columns")


def test_windows_past_the_sequence_end():
  """Windows starting in the last 63 rows (loaded from S - 64, masked to
  their own columns), windows right of some rows (rows with no key of a
  tile), padding offsets past the count."""
  rng, seed = ktu.fresh_rng()
  t, n = 192, 2
  q, k, v = ktu.random_qkv(rng, 1, t, n, 1, 64, jnp.float16)
  offset = np.full((1, n, 3, 3), t - 1, np.int32)  # padding
  count = np.array([[[1, 2, 2], [1, 1, 3]]], np.int32)
  offset[0, 0, 0, :1] = [20]
  offset[0, 0, 1, :2] = [10, 100]
  offset[0, 0, 2, :2] = [3, t - 1]
  offset[0, 1, 0, :1] = [63]
  offset[0, 1, 1, :1] = [127]
  offset[0, 1, 2, :3] = [10, 74, t - 40]
  ccount = np.array([[[0, 3, 2], [0, 0, 1]]], np.int32)
  cindex = np.full((1, n, 3, 4), t - 1, np.int32)
  cindex[0, 0, 1, :3] = [1, 2, 5]
  cindex[0, 0, 2, :2] = [1, 2]
  cindex[0, 1, 2, :1] = [5]
  layout = VerticalSlashLayout(*map(jnp.asarray,
                                    (count, offset, ccount, cindex)))
  ktu.check_vs_layout(layout, t)
  out = vertical_slash_attention_mgpu(q, k, v, layout, interpret=True)
  want = ktu.reference(q, k, v, vertical_slash_mask(layout, t, t))
  ktu.assert_close(out, want, jnp.float16, seed, "windows past the end")


# Hand-made windows of query block 5 (rows [320, 384)) of T = 448 (head 0)
# and of block 6 (head 1): misaligned runs of 3 and 1 windows, an aligned
# run, a misaligned run that crosses the diagonal (its tail right of r0),
# and a run ending at the sequence end.
RUN_WINDOWS = ([3, 67, 131, 200, 270], [5, 100, 164, 256, 384])


def _run_layout(t=448):
  tb = t // 64
  count = np.zeros((1, 2, tb), np.int32)
  offset = np.full((1, 2, tb, 6), 7, np.int32)
  for h, (m, wins) in enumerate(zip((5, 6), RUN_WINDOWS)):
    count[0, h, m] = len(wins)
    offset[0, h, m, :len(wins)] = wins
  zeros = np.zeros((1, 2, tb), np.int32)
  return VerticalSlashLayout(*map(jnp.asarray, (
      count, offset, zeros, np.zeros((1, 2, tb, 0), np.int32))))


# T = 1280: query block 19 of head 0 has 18 runs of one window each, all
# misaligned (18 run tails: three gathered tiles of 8 + 8 + 2); block 18 a
# misaligned run of 3 and 13 single windows, 11 of them misaligned, the
# last crossing the diagonal (12 tails: 8 + 4). Head 1 has tails in the
# last chunk of the sequence, [1272, T): 7 keys right of every row of block
# 17, 2 right of every row of block 18, and in block 19 a run crossing the
# diagonal whose last window starts at T - 3: its tile clamped to T - 64
# keeps the keys from 1272 on, and it leaves no tail.
MANY_TAILS_T = 1280
MANY_TAILS_WINDOWS = {
    (0, 19): [1 + 66 * j for j in range(18)],
    (0, 18): [3, 67, 131] + [200 + 75 * j for j in range(13)],
    (1, 17): [5, 1215],
    (1, 18): [1130, 1210],
    (1, 19): [3, 1146, 1213, 1277],
}


def _many_tails_layout():
  t = MANY_TAILS_T
  tb = t // 64
  count = np.zeros((1, 2, tb), np.int32)
  offset = np.full((1, 2, tb, 18), 9, np.int32)
  for (h, m), wins in MANY_TAILS_WINDOWS.items():
    count[0, h, m] = len(wins)
    offset[0, h, m, :len(wins)] = wins
  zeros = np.zeros((1, 2, tb), np.int32)
  return VerticalSlashLayout(*map(jnp.asarray, (
      count, offset, zeros, np.zeros((1, 2, tb, 0), np.int32))))


@pytest.mark.parametrize("config,step_keys", [
    (W1S3, 64), (None, 64), (PAIRED, 128),
    (dataclasses.replace(PAIRED, plan_ahead=False), 128)])
def test_misaligned_runs_and_tails(config, step_keys):
  """Runs of contiguous windows at unaligned starts: the first tile of a
  run masked, the others not, the run tails (incl. right of r0) in a
  gathered tile. With paired steps, block 5 pairs a window that leaves a
  run tail with the gathered tile of that tail in one step (the producer a
  step ahead, or ring by ring)."""
  rng, seed = ktu.fresh_rng()
  t = 448
  q, k, v = ktu.random_qkv(rng, 1, t, 2, 1, 64, jnp.bfloat16)
  layout = _run_layout(t)
  ktu.check_vs_layout(layout, t)
  out = vertical_slash_attention_mgpu(q, k, v, layout, config=config,
                                      step_keys=step_keys, interpret=True)
  want = ktu.reference(q, k, v, vertical_slash_mask(layout, t, t))
  ktu.assert_close(out, want, jnp.bfloat16, seed,
                   f"misaligned runs {config} {step_keys}")


@pytest.mark.parametrize("config,step_keys", [
    (W1S2, 64), (None, 64), (PAIRED, 128),
    (Config(compute_wgs=2, max_concurrent_steps=1), 64)])  # one-slot ring
def test_many_tails_and_tails_at_the_sequence_end(config, step_keys):
  """More than 8 run tails per query block (several gathered tiles, the
  last one partly empty) and tails in the last chunks of the sequence."""
  rng, seed = ktu.fresh_rng()
  t = MANY_TAILS_T
  q, k, v = ktu.random_qkv(rng, 1, t, 2, 1, 64, jnp.bfloat16)
  layout = _many_tails_layout()
  ktu.check_vs_layout(layout, t)
  steps = np.asarray(tile_steps.tile_steps(
      layout.block_count, layout.block_offset, t=t, interpret=True))
  assert steps[0, 0, 19] == 18 + 3 and steps[0, 0, 18] == 16 + 2
  out = vertical_slash_attention_mgpu(q, k, v, layout, config=config,
                                      step_keys=step_keys, interpret=True)
  want = ktu.reference(q, k, v, vertical_slash_mask(layout, t, t))
  ktu.assert_close(out, want, jnp.bfloat16, seed, "many tails")


def _assert_counted_once(seen, wrong, layout, t):
  """`seen` (how often the tiles count each pair) equals the layout's exact
  key set, and no mask-free tile dropped a pair (`wrong` empty)."""
  want = np.asarray(vertical_slash_mask(layout, t, t)).astype(np.int32)
  assert not wrong, f"mask-free tiles that drop pairs: {wrong}"
  bad = np.argwhere(seen != np.broadcast_to(want, seen.shape))
  assert not len(bad), f"{len(bad)} pairs counted wrongly, e.g. {bad[:5]}"


def _stream_key_sets(layout, t):
  """[B, N, T, T] int: how often the stream plan's steps (primary tiles as
  their header's mask keeps them, gathered tiles as the tail mask keeps
  their chunks) count each pair, walking the producer's schedule
  (`stream_advance`, two steps past the count); and the mask-free
  tiles that drop a pair (must be none)."""
  cnt = np.asarray(layout.block_count)
  steps = tile_steps.tile_steps_reference(layout.block_count,
                                         layout.block_offset, t)
  refs = (steps, layout.block_count, jnp.asarray(layout.block_offset))
  seen = np.zeros(cnt.shape[:2] + (t, t), np.int32)
  wrong = []
  lane = np.arange(64, dtype=np.int32)
  for bb, h, m in np.ndindex(cnt.shape):
    plan = vs_mgpu._WindowStream(*refs, bb, h, t)
    (seg,) = plan.segments(m)
    sm = seg.mask
    r0, n_steps, n_win = m * 64, int(plan.count(m)), int(cnt[bb, h, m])
    rows = jnp.asarray(r0 + lane[:, None] + 0 * lane[None, :])
    cols = jnp.asarray(0 * lane[:, None] + lane[None, :])
    state = StreamState(jnp.int32(0), jnp.int32(0), plan.stream_init(m))
    pending = []
    for i in range(n_steps + 2):
      p_in = jnp.clip(state.p, 0, max(n_win - 1, 0))
      tile, nxt = plan.stream_next(m, p_in, state.plan)
      gathered, primary, state = stream_advance(state, tile, nxt, n_win,
                                                i < n_steps)
      if primary:
        start = int(tile.start)
        keep = np.asarray(sm.masks[0](tile.header, rows, cols))
        if not int(sm.kind(tile.header)):
          if not keep.all():
            wrong.append((bb, h, m, i))
          keep = np.ones_like(keep)
        seen[bb, h, r0:r0 + 64, start:start + 64] += keep
        if tile.has_chunk:
          pending.append(int(tile.chunk))
      if gathered:
        assert 0 < len(pending) <= GATHER
        words = pending + [pending[0] // 8 * 8] * (GATHER - len(pending))
        keep = np.asarray(sm.gathered(tuple(map(jnp.int32, words)), rows,
                                      cols))
        for j, word in enumerate(words):
          for c in range(8):
            seen[bb, h, r0:r0 + 64, word // 8 * 8 + c] += keep[:, 8 * j + c]
        pending = []
    assert int(state.p) == n_win and not pending, (bb, h, m)
  return seen, wrong


@pytest.mark.parametrize("kind", ["runs", "many_tails", "random"])
def test_stream_covers_the_key_set_once(kind):
  """The stream's window tiles and gathered tail tiles count every causal
  window pair exactly once and nothing else, in `count(m)` steps; a tile
  whose header says mask-free keeps every pair."""
  t = MANY_TAILS_T if kind == "many_tails" else 448
  if kind == "runs":
    layout = _run_layout(t)
  elif kind == "many_tails":
    layout = _many_tails_layout()
  else:
    rng, _ = ktu.fresh_rng()
    layout = ktu.random_vs_layout(rng, 1, 2, t, 6, 0)
  _assert_counted_once(*_stream_key_sets(layout, t), layout, t)


def test_bad_inputs_raise():
  rng, _ = ktu.fresh_rng()
  q, k, v = ktu.random_qkv(rng, 1, 128, 2, 1, 64, jnp.bfloat16)
  layout = ktu.random_vs_layout(rng, 1, 2, 128, 2, 8)
  call = lambda *a, **kw: vertical_slash_attention_mgpu(*a, interpret=True,
                                                        **kw)
  with pytest.raises(TypeError, match="bfloat16 or float16"):
    f32 = lambda x: x.astype(jnp.float32)
    call(f32(q), f32(k), f32(v), layout)
  with pytest.raises(ValueError, match="multiple of 64"):
    lay = ktu.random_vs_layout(rng, 1, 2, 100, 2, 8)
    call(q[:, :100], k[:, :100], v[:, :100], lay)
  with pytest.raises(ValueError, match="head dim"):
    q96, k96, v96 = ktu.random_qkv(rng, 1, 128, 2, 1, 96, jnp.bfloat16)
    call(q96, k96, v96, layout)
  with pytest.raises(ValueError, match="block_offset"):
    call(q, k, v, VerticalSlashLayout(
        layout.block_count, layout.block_offset[0], layout.column_count,
        layout.column_index))
  with pytest.raises(ValueError, match="block_size"):
    call(q, k, v, VerticalSlashLayout(
        layout.block_count, layout.block_offset, layout.column_count,
        layout.column_index, block_size=32))
  with pytest.raises(ValueError, match="SMEM"):
    q256, k256, v256 = ktu.random_qkv(rng, 1, 128, 2, 1, 256, jnp.bfloat16)
    call(q256, k256, v256, layout, config=W2S2)
  with pytest.raises(ValueError, match="SMEM"):  # 2 x 2 slots of 128 rows
    q128, k128, v128 = ktu.random_qkv(rng, 1, 128, 2, 1, 128, jnp.bfloat16)
    call(q128, k128, v128, layout, config=W2S2, step_keys=128)
  with pytest.raises(ValueError, match="step_keys"):
    call(q, k, v, layout, step_keys=96)


def _lowered_for_h200(d, n_slash, n_vert, **kwargs) -> str:
  """The kernel (`**kwargs`: config, step_keys) lowered for an abstract
  H200 at B=1, T=1024, N=4, K=2, as text."""
  b, t, n, kv = 1, 1024, 4, 2
  tb = t // 64
  q = jax.ShapeDtypeStruct((b, t, n, d), jnp.bfloat16)
  k = jax.ShapeDtypeStruct((b, t, kv, d), jnp.bfloat16)
  i32 = lambda *s: jax.ShapeDtypeStruct(s, jnp.int32)

  def fn(q, k, v, c, o, cc, ci):
    return vertical_slash_attention_mgpu(
        q, k, v, VerticalSlashLayout(c, o, cc, ci), **kwargs)

  args = (q, k, k, i32(b, n, tb), i32(b, n, tb, n_slash), i32(b, n, tb),
          i32(b, n, tb, n_vert))
  return ktu.lower_for_gpu(fn, args).as_text()


@pytest.mark.parametrize("d,n_vert,config,step_keys,kernel", [
    (128, 80, None, 64, "d128_w2_s2_seeded_stream"),
    (64, 80, None, 64, "d64_w2_s3_seeded_stream"),
    (256, 80, None, 64, "d256_w1_s2_seeded_stream"),
    (128, 0, W2S2, None, "d128_w2_s2_stream"),  # a config: 64 keys
    (128, 80, None, None, "d128_w2_s1_k128_seeded_stream"),  # auto: 128
    (64, 80, None, 128, "d64_w2_s2_k128_seeded_stream"),
    (256, 0, None, 128, "d256_w1_s1_k128_stream"),
    (128, 0, W2S1P, 128, "d128_w2_s1_k128_stream")])
def test_lowers_for_h200(d, n_vert, config, step_keys, kernel):
  """One Mosaic GPU call (wgmma, TMA; windows and run tails), one Triton
  call for the steps count and one for the columns, if any. Without a
  config and step_keys the kernel takes `auto_step_keys` (paired at D =
  128 and this T: 128-row key tiles, one slot per warpgroup); a given
  config keeps 64 keys per step."""
  text = _lowered_for_h200(d, 9, n_vert, config=config, step_keys=step_keys)
  assert text.count("stablehlo.custom_call @mosaic_gpu") == 1
  assert text.count("__gpu$xla.gpu.triton") == 1 + (n_vert > 0)
  assert "minf_vertical_slash_tile_steps" in text
  assert f"minf_vertical_slash_mgpu_{kernel}" in text
  for op in ("wgmma", "cp.async.bulk", "mbarrier"):
    assert op in text, f"no {op} in the lowered module"


@pytest.mark.parametrize("t,n_slash", [(448, 6), (1280, 40), (4160, 90)])
def test_tile_steps_kernel_equals_the_xla_pass(t, n_slash):
  """The Pallas-Triton steps count (interpret mode) equals the XLA pass on
  random layouts: Tb below, above and not a multiple of its 16 rows per
  program (7, 20, 65 query blocks), an inactive head, padding entries past
  each count (rows of up to ~50 windows: one chunk; several chunks are the
  next test's)."""
  rng, seed = ktu.fresh_rng()
  layout = ktu.random_vs_layout(rng, 2, 3, t, n_slash, 4, inactive=(1,))
  want = tile_steps.tile_steps_reference(layout.block_count,
                                         layout.block_offset, t)
  got = tile_steps.tile_steps(layout.block_count, layout.block_offset, t=t,
                              interpret=True)
  assert got.shape == want.shape and got.dtype == jnp.int32
  np.testing.assert_array_equal(np.asarray(got), np.asarray(want),
                                err_msg=f"seed={seed}")
  tails = np.asarray(want) - np.asarray(layout.block_count)
  assert tails.max() >= 1, "no run tails: the case tests nothing"


def test_tile_steps_kernel_on_many_tails():
  """More than GATHER tails in a row (two gathered tiles) and tails at the
  sequence end: the hand-made layout of the kernel test above."""
  layout = _many_tails_layout()
  got = np.asarray(tile_steps.tile_steps(
      layout.block_count, layout.block_offset, t=MANY_TAILS_T,
      interpret=True))
  want = np.asarray(tile_steps.tile_steps_reference(
      layout.block_count, layout.block_offset, MANY_TAILS_T))
  np.testing.assert_array_equal(got, want)
  assert got[0, 0, 19] == 18 + 3 and got[0, 0, 18] == 16 + 2


def test_tile_steps_kernel_walks_several_chunks():
  """A row with 80 windows (two 64-window chunks, the next-window read
  crossing the chunk boundary) in a slash budget of 90 (not a multiple of
  the chunk): every window ends its own run, so the tails are (o + 64) % 8
  != 0 ones; the other rows are empty or hold a single window."""
  tb, ns, n_win = 100, 90, 80
  t = tb * 64
  count = np.zeros((1, 2, tb), np.int32)
  offset = np.zeros((1, 2, tb, ns), np.int32)
  starts = 3 + 70 * np.arange(n_win)  # gaps of 6 keys: runs of one window
  count[0, 0, tb - 1] = n_win
  offset[0, 0, tb - 1, :n_win] = starts
  offset[0, 0, tb - 1, n_win:] = starts[-1]  # padding (never read as data)
  count[0, 1, 10] = 1
  offset[0, 1, 10, 0] = 581  # one window ending a run with a 5-key tail
  layout = VerticalSlashLayout(jnp.asarray(count), jnp.asarray(offset),
                               jnp.zeros((1, 2, tb), jnp.int32),
                               jnp.zeros((1, 2, tb, 1), jnp.int32))
  ktu.check_vs_layout(layout, t)
  got = np.asarray(tile_steps.tile_steps(
      layout.block_count, layout.block_offset, t=t, interpret=True))
  want = np.asarray(tile_steps.tile_steps_reference(
      layout.block_count, layout.block_offset, t))
  np.testing.assert_array_equal(got, want)
  n_tails = int(np.sum((starts + 64) % 8 != 0))
  assert got[0, 0, tb - 1] == n_win + -(-n_tails // 8)
  assert got[0, 1, 10] == 2  # the window and one gathered tile


def test_auto_step_keys():
  """Paired steps at D = 128 up to PAIRED_MAX_T, 64-key steps otherwise."""
  assert vs_mgpu.auto_step_keys(vs_mgpu.PAIRED_MAX_T, 128) == 128
  assert vs_mgpu.auto_step_keys(1024, 128) == 128
  assert vs_mgpu.auto_step_keys(vs_mgpu.PAIRED_MAX_T + 64, 128) == 64
  for d in (64, 256):
    assert vs_mgpu.auto_step_keys(1024, d) == 64


def _builder_layout(q, k, t: int) -> VerticalSlashLayout:
  """The index builder's layout at MInference's default budgets (1000
  vertical / 6096 slash lines) estimated from q/k; head 0 inactive."""
  from minference_jax import index

  n = q.shape[2]
  ind = index.vertical_slash_indices(q, k, 1000, 6096,
                                     active=(False,) + (True,) * (n - 1))
  return index.vertical_slash_layout(ind, t)


# GPU checks at 4K-16K tokens: (T, N, K, D, dtype, layout, config,
# step_keys); step_keys None: `auto_step_keys` (paired at D = 128).
GPU_CASES = [
    (t, 8, 2, 128, jnp.bfloat16, source, None, None)
    for t in (4096, 16384) for source in ("builder", "random")
] + [
    (4096, 8, 2, 128, jnp.float16, "builder", None, 64),
    (4096, 8, 8, 128, jnp.float16, "random", None, 64),
    (4096, 8, 2, 128, jnp.bfloat16, "random", W2S1P, 128),  # ping-pong
    (4096, 8, 2, 128, jnp.bfloat16, "random",
     dataclasses.replace(W2S2, ring_producers=True), 64),
    (4096, 8, 2, 64, jnp.bfloat16, "random", None, None),
    (4096, 8, 2, 64, jnp.float16, "random", None, 128),
    (4096, 4, 1, 256, jnp.bfloat16, "random", None, None),
    (4096, 4, 1, 256, jnp.bfloat16, "random", None, 128),
    (448, 2, 1, 64, jnp.bfloat16, "runs", None, None),
    (448, 2, 1, 128, jnp.bfloat16, "runs", None, None),
    (MANY_TAILS_T, 2, 1, 128, jnp.bfloat16, "many_tails", None, 64),
    (MANY_TAILS_T, 2, 1, 128, jnp.bfloat16, "many_tails", None, 128),
]


@gpu_checks.hopper_test
@pytest.mark.parametrize("t,n,kv,d,dtype,source,config,step_keys",
                         GPU_CASES)
def test_matches_reference_on_gpu(t, n, kv, d, dtype, source, config,
                                  step_keys):
  """Both launches compiled, against the f32 reference: the index
  builder's layouts, random layouts (runs of unaligned windows, columns),
  and the hand-made run and many-tails layouts."""
  rng, seed = ktu.fresh_rng()
  q, k, v = ktu.random_qkv(rng, 1, t, n, kv, d, dtype)
  inactive = (0,)
  if source == "builder":
    layout = _builder_layout(q, k, t)
  elif source == "random":
    layout = ktu.random_vs_layout(rng, 1, n, t, 100, 300, inactive=(0,))
  else:
    layout = _run_layout(t) if source == "runs" else _many_tails_layout()
    inactive = ()
  out = vertical_slash_attention_mgpu(q, k, v, layout, config=config,
                                      step_keys=step_keys)
  gpu_checks.assert_matches_reference(
      out, q, k, v, vertical_slash_mask(layout, t, t), seed=seed,
      what=f"T={t} N={n} K={kv} D={d} {source} {config} {step_keys}",
      inactive_heads=inactive)
