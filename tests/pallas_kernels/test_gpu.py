"""GPU correctness checks (`make gpu-test`: pytest -m gpu, a real GPU).

1. The op battery (`attention_op_test_base`) natively, not in interpret
   mode: Pallas-Triton for every op, Mosaic GPU for the sparse ops on the
   cases it takes (on a Hopper GPU), cuDNN for dense attention.
2. The seam on the GPU: the "pallas" layer (Mosaic GPU / Pallas-Triton)
   equals the "xla" layer on a mixed-pattern layer.
3. The kernels at 2K-32K tokens (GQA, D 64/96/128/256, bf16/fp16, T not a
   multiple of 64) on layouts from the index builders and from random
   lines, each implementation that takes the case, against the f32
   reference on the kernel's exact key set for a sample of query row
   blocks (always the first and the last); outputs finite, inactive heads
   zero.
4. One call over 1M tokens x 32 query heads x 32 KV heads x 128 (8 GiB per
   array, past int32 offsets) per sparse kernel, rows at the highest
   addresses checked.

Seeds are fixed (printed in failure messages with the case).
"""

import dataclasses
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import kernel_test_utils as ktu
from attention_op_test_base import CASES_64, AttentionOpTestBase
from minference_jax import index
from minference_jax.attention import make_attention
from minference_jax.pattern_config import PatternConfig
from minference_jax.patterns import AShape, BlockSparse, Dense, VerticalSlash
from pallas_kernels import a_shape, block_sparse, flash, reference
from pallas_kernels import vertical_slash
from pallas_kernels.layouts import AShapeLayout

pytestmark = pytest.mark.gpu

BF16, F16 = jnp.bfloat16, jnp.float16
MOSAIC = dict(DTYPES=(BF16, F16), HEAD_DIMS=(64, 128, 256), T_MULTIPLE=64)


# ------------------------------------------------------------ 1. battery
class TestTritonVerticalSlash(AttentionOpTestBase):
  OP, IMPLEMENTATION = "vertical_slash", "pallas_triton"


class TestTritonBlockSparse(AttentionOpTestBase):
  OP, IMPLEMENTATION = "block_sparse", "pallas_triton"


class TestTritonAShape(AttentionOpTestBase):
  OP, IMPLEMENTATION = "a_shape", "pallas_triton"


class TestTritonFlash(AttentionOpTestBase):
  OP, IMPLEMENTATION = "flash", "pallas_triton"


class TestCudnnFlash(AttentionOpTestBase):
  OP, IMPLEMENTATION = "flash", "cudnn"
  DTYPES, EXTRA_CASES = (BF16, F16), CASES_64["flash"]


class _Mosaic(AttentionOpTestBase):
  IMPLEMENTATION = "pallas_mosaic_gpu"
  DTYPES, HEAD_DIMS, T_MULTIPLE = MOSAIC["DTYPES"], MOSAIC["HEAD_DIMS"], 64

  def setup_method(self):
    reason = vertical_slash.pallas_mosaic_gpu.unsupported_reason(
        jax.ShapeDtypeStruct((1, 64, 1, 64), BF16))
    if reason is not None:
      pytest.skip(f"Mosaic GPU: {reason}")


class TestMosaicVerticalSlash(_Mosaic):
  OP, EXTRA_CASES = "vertical_slash", CASES_64["vertical_slash"]


class TestMosaicBlockSparse(_Mosaic):
  OP, EXTRA_CASES = "block_sparse", CASES_64["block_sparse"]


class TestMosaicAShape(_Mosaic):
  OP, EXTRA_CASES = "a_shape", CASES_64["a_shape"]


# --------------------------------------------------------------- 2. seam
def test_pallas_layer_equals_xla_layer():
  """Every kind in one layer on a GPU: the "pallas" backend (Mosaic GPU
  where it applies, else Pallas-Triton; dense heads in the A-shape launch)
  against the "xla" backend, which the CPU tests check against the
  reference."""
  layer = (VerticalSlash(200, 400), AShape(64, 512), BlockSparse(8), Dense(),
           VerticalSlash(100, 300, last_q=32), AShape(0, 1024)) * 2
  cfg = PatternConfig(layers=(layer,))
  key = jax.random.key(0)
  q, k, v = (jax.random.normal(kk, (1, 4096, n, 128), BF16) for kk, n in
             zip(jax.random.split(key, 3), (12, 4, 4)))
  got = make_attention(cfg, "pallas")(q, k, v, layer_idx=0)
  want = make_attention(cfg, "xla")(q, k, v, layer_idx=0)
  got, want = (np.asarray(x.astype(jnp.float32)) for x in (got, want))
  rel = np.linalg.norm(got - want) / np.linalg.norm(want)
  assert np.isfinite(got).all() and rel <= 1e-2, f"rel err {rel:.2e}"


# ----------------------------------------------------- 3. long sequences
OPS = {"vs": vertical_slash.OP, "bs": block_sparse.OP, "a": a_shape.OP}
MASKS = {"vs": reference.vertical_slash_mask,
         "bs": reference.block_sparse_mask, "a": reference.a_shape_mask}
# (T, N, K, D, dtype, random lines too): the sizes the GPU check had before
# it became these tests (experiments/gpu_check_kernels.py, now deleted).
LONG_CASES = [
    (4133, 32, 8, 128, BF16, True), (4096, 8, 4, 96, F16, False),
    (3000, 8, 8, 64, BF16, False), (2100, 4, 1, 256, BF16, False),
    (32768, 32, 8, 128, BF16, True),
]


def structured_qkv(seed, t, n, kv, d, dtype):
  """Gaussian q/k/v with a few strong key columns per KV head (aligned with
  its query heads) and one strong diagonal: the builders pick real lines."""
  keys = jax.random.split(jax.random.key(seed), 6)
  g = n // kv
  q = jax.random.normal(keys[0], (1, t, n, d))
  k = jax.random.normal(keys[1], (1, t, kv, d))
  v = jax.random.normal(keys[2], (1, t, kv, d))
  u = jax.random.normal(keys[3], (kv, d))
  u = u / jnp.linalg.norm(u, axis=-1, keepdims=True)
  cols = jax.random.randint(keys[4], (kv, 3), 0, t)
  k = k.at[0, cols, jnp.arange(kv)[:, None]].add(
      2.0 * math.sqrt(d) * u[:, None])
  q = q + 2.0 * jnp.repeat(u, g, axis=0)
  offset = seed % t
  w = jax.random.normal(keys[5], (1, t, d))
  q = q + 1.5 * w[:, :, None]
  k = k.at[:, : t - offset].add(1.5 * w[:, offset:, None])
  return q.astype(dtype), k.astype(dtype), v.astype(dtype)


def random_lines_layout(rng, n, t, n_vertical=1000, n_slash=6096,
                        inactive=()):
  """A VerticalSlashLayout merged by the real builder from random lines:
  slash offsets 0..99, most others within a few thousand of the diagonal,
  10% far; verticals 0..29 and random columns (MInference's forced lines
  plus realistic spreads: unaligned windows, runs, many columns)."""
  ns, nv = min(n_slash, t), min(n_vertical, t)
  slash = np.zeros((1, n, ns), np.int32)
  vertical = np.full((1, n, nv), t - 1, np.int32)
  s_count, v_count = np.zeros((1, n), np.int32), np.zeros((1, n), np.int32)
  for h in range(n):
    if h in inactive:
      continue
    near = 100 + rng.exponential(1500, ns)
    far = rng.uniform(0, t, ns)
    offs = np.where(rng.random(ns) < 0.1, far, near).astype(np.int64)
    offs = np.unique(np.concatenate([np.arange(min(100, t)), offs[offs < t]]))
    offs = offs[::-1][:ns]
    slash[0, h, : len(offs)], s_count[0, h] = offs, len(offs)
    cols = np.unique(np.concatenate([np.arange(min(30, t)),
                                     rng.integers(30, max(t, 31), nv)]))
    cols = cols[cols < t][:nv]
    vertical[0, h, : len(cols)], v_count[0, h] = cols, len(cols)
  indices = index.VerticalSlashIndices(
      jnp.asarray(vertical), jnp.asarray(v_count), jnp.asarray(slash),
      jnp.asarray(s_count))
  return index.vertical_slash_layout(indices, t)


def a_shape_sizes(rng, n):
  """Odd heads MInference's 128 + 3968, even heads random, last inactive."""
  n_init = np.where(np.arange(n) % 2, 128, rng.integers(0, 300, n))
  n_local = np.where(np.arange(n) % 2, 3968, rng.integers(1, 2000, n))
  n_init[-1] = n_local[-1] = 0
  return AShapeLayout(jnp.asarray(n_init, jnp.int32),
                      jnp.asarray(n_local, jnp.int32))


def sample_rows(rng, t, n_blocks=8):
  """The rows of the first, the last and `n_blocks` random row blocks."""
  tb = -(-t // 64)
  blocks = np.array(sorted({0, tb - 1}
                           | set(rng.integers(0, tb, n_blocks).tolist())))
  rows = (blocks[:, None] * 64 + np.arange(64)).reshape(-1)
  return rows[rows < t]


def heads_of(layout, heads: slice):
  """The layout restricted to query heads `heads`."""
  if isinstance(layout, AShapeLayout):
    return AShapeLayout(layout.n_init[heads], layout.n_local[heads])
  return dataclasses.replace(layout, **{
      f.name: getattr(layout, f.name)[:, heads]
      for f in dataclasses.fields(layout) if not f.metadata.get("static")})


def rows_relative_error(out, q, k, v, rows, mask_fn, heads_per_chunk=8):
  """||out - ref|| / ||ref|| over `rows` (f32 reference on the key set
  `mask_fn(heads)` [B or 1, heads, R, S]), computed in head chunks;
  returns (relative error, all outputs finite)."""
  n, g = q.shape[2], q.shape[2] // k.shape[2]
  step = max(g, heads_per_chunk // g * g)
  rows_j = jnp.asarray(rows)
  num = den = 0.0
  for h0 in range(0, n, step):
    heads = slice(h0, min(n, h0 + step))
    kv = slice(h0 // g, (heads.stop - 1) // g + 1)
    f32 = lambda x: x.astype(jnp.float32)  # noqa: E731
    want = reference.masked_attention_reference(
        f32(q[:, rows_j, heads]), f32(k[:, :, kv]), f32(v[:, :, kv]),
        mask_fn(heads))
    got = f32(out[:, rows_j, heads])
    num += float(jnp.sum((got - want) ** 2))
    den += float(jnp.sum(want**2))
  finite = bool(jnp.all(jnp.isfinite(out)))
  return math.sqrt(num / max(den, 1e-30)), finite


def implementations(op, q, layout):
  """The op's Pallas implementations that take these inputs here."""
  names = ["pallas_triton"]
  if op is not flash.OP and op.implementations[
      "pallas_mosaic_gpu"].unsupported(q, q, q, layout,
                                       interpret=False) is None:
    names.append("pallas_mosaic_gpu")
  if op is flash.OP and op.implementations["cudnn"].unsupported(
      q, q, q, q_offset=0, interpret=False) is None:
    names.append("cudnn")
  return names


def check(kind, name, out, q, k, v, layout, rows, what, heads_per_chunk=8):
  t = q.shape[1]
  if kind == "flash":
    mask_fn = lambda heads: reference.causal_mask(t, t, rows=rows)[  # noqa
        None, None]
  else:
    mask_fn = lambda heads: MASKS[kind](  # noqa: E731
        heads_of(layout, heads), t, t, rows=rows)
  rel, finite = rows_relative_error(out, q, k, v, rows, mask_fn,
                                    heads_per_chunk)
  assert finite, f"non-finite output ({name}, {what})"
  assert rel <= 1e-2, f"rel err {rel:.2e} ({name}, {what})"


@pytest.mark.parametrize("t, n, kv, d, dtype, random_lines", LONG_CASES)
def test_kernels_match_the_reference_on_sampled_rows(t, n, kv, d, dtype,
                                                     random_lines):
  seed = t + n + d
  rng = np.random.default_rng(seed)
  q, k, v = structured_qkv(seed, t, n, kv, d, dtype)
  active = (True,) * (n - 1) + (False,)
  layouts = [
      ("vs", "builder", index.vertical_slash_layout(
          index.vertical_slash_indices(q, k, 1000, 6096, active=active), t)),
      ("bs", "builder", index.block_sparse_indices(q, k, 100, active=active)),
      ("a", "per-head sizes", a_shape_sizes(rng, n)),
  ]
  if random_lines:
    layouts += [
        ("vs", "random lines",
         random_lines_layout(rng, n, t, inactive=(n - 1,))),
        ("bs", "random blocks",
         ktu.random_bs_layout(rng, 1, n, t, 100, inactive=(n - 1,))),
    ]
  rows = sample_rows(rng, t)
  for kind, source, layout in layouts:
    for name in implementations(OPS[kind], q, layout):
      what = f"{kind} {source} T={t} N={n} K={kv} D={d} {dtype}, seed={seed}"
      out = OPS[kind](q, k, v, layout, implementation=name)
      check(kind, name, out, q, k, v, layout, rows, what)
      assert not np.asarray(out[:, :, -1].astype(jnp.float32)).any(), (
          f"inactive head not zero ({name}, {what})")
  for name in implementations(flash.OP, q, None):
    out = flash.flash_attention(q, k, v, implementation=name)
    check("flash", name, out, q, k, v, None, rows, f"T={t}, seed={seed}")


# ------------------------------------------------------------------ 4. 1M
@pytest.mark.parametrize("kind", ["a", "bs", "vs"])
def test_one_call_over_one_million_tokens(kind):
  """64-bit addressing: 1M tokens x 32 heads x 32 KV heads x 128 in one
  call; the first, a middle and the last row block checked."""
  t, n, d, seed = 1 << 20, 32, 128, 7
  rng = np.random.default_rng(seed)
  keys = jax.random.split(jax.random.key(seed), 3)
  q, k, v = (jax.random.normal(key, (1, t, n, d), BF16) for key in keys)
  if kind == "a":
    layout = AShapeLayout(jnp.full((n,), 128, jnp.int32),
                          jnp.full((n,), 3968, jnp.int32))
  elif kind == "bs":
    layout = index.block_sparse_indices(q, k, 100)
  else:
    layout = random_lines_layout(rng, n, t)
  tb = t // 64
  rows = np.concatenate([np.arange(64), (tb // 2) * 64 + np.arange(64),
                         (tb - 1) * 64 + np.arange(64)])
  for name in implementations(OPS[kind], q, layout):
    out = jax.block_until_ready(
        OPS[kind](q, k, v, layout, implementation=name))
    check(kind, name, out, q, k, v, layout, rows,
          f"{kind} T=1M N=32 K=32 D=128, seed={seed}", heads_per_chunk=1)
    del out
