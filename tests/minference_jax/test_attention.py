"""Tests for the attention seam: factory, dispatch, merging, validation."""

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import pallas_kernels
from minference_jax import attention as attention_lib
from minference_jax.attention import (
    DEFAULT_DENSE_THRESHOLD,
    DEFAULT_DENSE_THRESHOLDS,
    DenseAttention,
    MInferenceAttention,
    available_backends,
    make_attention,
)
from minference_jax.pattern_config import PatternConfig
from minference_jax.patterns import (
    AShape,
    BlockSparse,
    Dense,
    PatternKind,
    VerticalSlash,
)
from minference_jax.types import AttentionFn
from pallas_kernels import dispatch, vertical_slash
from pallas_kernels.layouts import AShapeLayout
from pallas_kernels.reference import (
    a_shape_mask,
    block_sparse_mask,
    causal_mask,
    masked_attention_reference,
    vertical_slash_mask,
)

ATOL = 2e-5  # f32 inputs, f32 accumulation everywhere


def _index():
  return pytest.importorskip(
      "minference_jax.index",
      reason="minference_jax.index (index builders) is not written yet",
  )


def _pallas(*names):
  missing = [n for n in names if not hasattr(pallas_kernels, n)]
  if missing:
    pytest.skip(f"pallas_kernels does not export {missing} (not written yet)")


# One canonical shape (B, T, N, K, D) for the sparse tests: the index
# builders and XLA paths are jitted on shapes and static budgets, so sharing
# shapes and budgets across tests keeps the compile time (the cost on CPU) low.
SHAPE = dict(b=1, t=192, n=6, kv=2, d=16)


def _qkv(seed, b=1, t=192, n=6, kv=2, d=16, s=None, dtype=jnp.float32):
  s = t if s is None else s
  kq, kk, kv_ = jax.random.split(jax.random.key(seed), 3)
  q = jax.random.normal(kq, (b, t, n, d), dtype)
  k = jax.random.normal(kk, (b, s, kv, d), dtype)
  v = jax.random.normal(kv_, (b, s, kv, d), dtype)
  return q, k, v


def _dense_reference(q, k, v, q_offset=0):
  mask = causal_mask(q.shape[1], k.shape[1], q_offset)[None, None]
  return masked_attention_reference(q, k, v, mask)


def _close(a, b, atol=ATOL):
  np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=atol, rtol=0)


# ---------------------------------------------------------------- factory
def test_factory_backends_satisfy_protocol_and_are_hashable():
  cfg = PatternConfig.uniform(VerticalSlash(30, 50), 2, 4)
  assert set(available_backends()) >= {"dense", "xla", "pallas", "auto"}
  for backend in available_backends():
    for config in (None, cfg, AShape(4, 16)):
      attn = make_attention(config, backend)
      assert isinstance(attn, AttentionFn)
      assert dataclasses.is_dataclass(attn)
      assert hash(attn) == hash(make_attention(config, backend))
      with pytest.raises(dataclasses.FrozenInstanceError):
        attn.interpret = True  # type: ignore[misc]
  assert isinstance(make_attention(cfg, "dense"), DenseAttention)
  assert isinstance(make_attention(None, "xla"), DenseAttention)
  xla = make_attention(cfg, "xla")
  assert isinstance(xla, MInferenceAttention)
  assert (xla.backend, xla.dense_threshold) == ("xla", 0)
  gpu = make_attention(cfg, "auto", platform="gpu")
  assert gpu.backend == "pallas"
  assert gpu.dense_threshold == DEFAULT_DENSE_THRESHOLDS
  assert max(v for _, v in DEFAULT_DENSE_THRESHOLDS) == DEFAULT_DENSE_THRESHOLD
  assert gpu.dense.implementation == "auto"
  cpu = make_attention(cfg, "auto", platform="cpu", dense_threshold=5)
  assert (cpu.backend, cpu.dense_threshold) == ("xla", 5)
  pallas = make_attention(cfg, "pallas", interpret=True)
  assert pallas.interpret and pallas.dense.implementation == "pallas_triton"
  assert (pallas.implementation, pallas.vs_layout) == ((), "expanded")


def test_factory_rejects_bad_arguments():
  with pytest.raises(ValueError, match="unknown backend 'cuda'"):
    make_attention(None, "cuda")
  with pytest.raises(ValueError, match="dense_threshold must be"):
    make_attention(None, "auto", dense_threshold=-1)
  with pytest.raises(TypeError, match="pattern_config must be"):
    make_attention({"0": "vertical_and_slash"}, "xla")
  with pytest.raises(ValueError, match="already registered"):
    attention_lib.register_backend("xla", attention_lib._dense_factory)
  with pytest.raises(ValueError, match="backend must be"):
    MInferenceAttention(pattern_config=Dense(), backend="cuda")
  with pytest.raises(ValueError, match="implementation must be"):
    DenseAttention(implementation="flash")
  with pytest.raises(TypeError):  # keyword-only fields
    MInferenceAttention(Dense(), "xla")  # type: ignore[misc]


# ------------------------------------------------------------------ dense
@pytest.mark.parametrize("backend", ["dense", "xla", "auto"])
def test_dense_prefill_and_decode_match_reference(backend):
  attn = make_attention(None, backend)
  q, k, v = _qkv(0, **{**SHAPE, "b": 2})
  _close(attn(q, k, v, layer_idx=0), _dense_reference(q, k, v))
  q2 = q[:, -5:]  # a decode/chunked step: 5 queries at positions 187..191
  out = attn(q2, k, v, layer_idx=3, q_offset=187)
  _close(out, _dense_reference(q2, k, v, q_offset=187))


def test_all_dense_config_equals_dense():
  cfg = PatternConfig.uniform(Dense(), num_layers=2, num_heads=6)
  q, k, v = _qkv(1, **{**SHAPE, "b": 2})
  out = make_attention(cfg, "xla")(q, k, v, layer_idx=1)
  _close(out, _dense_reference(q, k, v))


# ------------------------------------------------------------ mixed layers
# Every kind, two Vertical-Slash `last_q` groups, budgets sparse at T = 192.
_MIXED = (
    VerticalSlash(n_vertical=30, n_slash=50),
    AShape(n_init=4, n_local=40),
    BlockSparse(top_k=2),
    Dense(),
    VerticalSlash(n_vertical=60, n_slash=70, last_q=32),
    AShape(n_init=0, n_local=64),
)
# Every kind with a budget that covers the whole causal triangle.
_COVERING = (
    AShape(n_init=0, n_local=512),
    VerticalSlash(n_vertical=4096, n_slash=4096),
    BlockSparse(top_k=100),
    AShape(n_init=512, n_local=1),
    Dense(),
    VerticalSlash(n_vertical=100, n_slash=4096),
)


def _per_head_expected(q, k, v, patterns):
  """Each head's output from its own pattern's reference mask.

  Indices come from one index-builder call per kind over ALL heads with
  per-head budgets (no `active`, no grouping), masks from
  `pallas_kernels.reference`, outputs from the dense masked reference.
  """
  index = _index()
  t, s, n = q.shape[1], k.shape[1], q.shape[2]

  def values(cls, field, default):
    return tuple(
        getattr(p, field) if isinstance(p, cls) else default for p in patterns
    )

  a_shape = AShapeLayout(
      jnp.asarray(values(AShape, "n_init", 0), jnp.int32),
      jnp.asarray(values(AShape, "n_local", 0), jnp.int32),
  )
  full = (q.shape[0], n, t, s)
  masks = {
      Dense: jnp.broadcast_to(causal_mask(t, s), full),
      AShape: jnp.broadcast_to(a_shape_mask(a_shape, t, s), full),
  }
  if any(isinstance(p, BlockSparse) for p in patterns):
    layout = index.block_sparse_indices(q, k, values(BlockSparse, "top_k", 1))
    masks[BlockSparse] = block_sparse_mask(layout, t, s)
  vs_masks = {}
  for last_q in sorted(set(values(VerticalSlash, "last_q", 0)) - {0}):
    idx = index.vertical_slash_indices(
        q, k, values(VerticalSlash, "n_vertical", 0),
        values(VerticalSlash, "n_slash", 0), last_q,
    )
    layout = index.vertical_slash_layout(idx, t)
    vs_masks[last_q] = vertical_slash_mask(layout, t, s)
  head_masks = []
  for h, p in enumerate(patterns):
    mask = vs_masks[p.last_q] if isinstance(p, VerticalSlash) else masks[
        type(p)
    ]
    head_masks.append(mask[:, h])
  mask = jnp.stack(head_masks, axis=1)  # [B, N, T, S]
  return masked_attention_reference(q, k, v, mask)


@functools.lru_cache(maxsize=1)
def _mixed_case():
  """Random inputs and per-head reference outputs for the `_MIXED` layer.

  Shared by the XLA, fallback and Pallas tests (computed once per session).
  """
  q, k, v = _qkv(3, **SHAPE)
  return q, k, v, _per_head_expected(q, k, v, _MIXED)


def test_mixed_layer_equals_per_head_references():
  q, k, v, expected = _mixed_case()
  cfg = PatternConfig(layers=(_MIXED[::-1], _MIXED))
  out = make_attention(cfg, "xla")(q, k, v, layer_idx=1)
  _close(out, expected)
  # The patterns are sparse here: the merged output is not dense attention.
  dense = _dense_reference(q, k, v)
  for h, p in enumerate(_MIXED):
    err = float(jnp.max(jnp.abs(out[:, :, h] - dense[:, :, h])))
    assert (err < ATOL) if isinstance(p, Dense) else (err > 1e-2), (h, p)


def test_patterns_covering_everything_equal_dense():
  q, k, v = _qkv(4, **SHAPE)
  _index()
  cfg = PatternConfig(layers=(_COVERING,))
  out = make_attention(cfg, "xla")(q, k, v, layer_idx=0)
  _close(out, _dense_reference(q, k, v))


def test_layer_through_jit_with_partial():
  q, k, v = _qkv(5, **SHAPE)
  layer = (VerticalSlash(30, 50), AShape(4, 40)) * 3
  expected = _per_head_expected(q, k, v, layer)
  attn = make_attention(PatternConfig(layers=(layer,)), "xla")
  fn = jax.jit(functools.partial(attn, layer_idx=0))
  _close(fn(q, k, v), expected)
  # An equal config gives an equal attention object with an equal hash, so
  # it can be a static jit argument (and hits the same compile cache).
  same = make_attention(PatternConfig(layers=(layer,)), "xla")
  assert same == attn and hash(same) == hash(attn)
  assert same != make_attention(PatternConfig(layers=(layer[::-1],)), "xla")


def test_short_prefill_below_block_and_budgets():
  # T = 40 < 64 and below the budgets: the index builders clamp, and these
  # patterns then cover the whole causal triangle (dense output), except
  # the last head's 8-key window.
  q, k, v = _qkv(6, b=1, t=40, n=6, kv=2, d=16)
  layer = (
      VerticalSlash(),  # MInference's default (1000, 6096)
      BlockSparse(),  # top 100 blocks
      Dense(),
      VerticalSlash(n_vertical=30, n_slash=50),
      AShape(),  # (128, 3968)
      AShape(n_init=0, n_local=8),  # the one head that stays sparse
  )
  out = make_attention(PatternConfig(layers=(layer,)), "xla")(
      q, k, v, layer_idx=0
  )
  dense = _dense_reference(q, k, v)
  _close(out[:, :, :5], dense[:, :, :5])
  window = AShapeLayout(jnp.zeros((6,), jnp.int32), jnp.full((6,), 8))
  sparse = masked_attention_reference(q, k, v, a_shape_mask(window, 40, 40))
  _close(out[:, :, 5], sparse[:, :, 5])


def test_single_pattern_applies_to_every_layer_and_head():
  q, k, v = _qkv(7, **SHAPE)
  pattern = AShape(n_init=4, n_local=40)
  expected = _per_head_expected(q, k, v, (pattern,) * 6)
  attn = make_attention(pattern, "xla")
  _close(attn(q, k, v, layer_idx=17), expected)


# --------------------------------------------------------- dense routing
def test_decode_and_chunked_steps_go_dense():
  _index()
  cfg = PatternConfig.uniform(AShape(n_init=4, n_local=40), 1, 6)
  attn = make_attention(cfg, "xla")
  q, k, v = _qkv(8, **SHAPE)
  chunk = q[:, 100:132]
  out = attn(chunk, k, v, layer_idx=0, q_offset=100)
  _close(out, _dense_reference(chunk, k, v, q_offset=100))
  # T == S but q_offset != 0 is impossible (keys would be missing).
  with pytest.raises(ValueError, match="exceeds the S=192 keys"):
    attn(q, k, v, layer_idx=0, q_offset=1)
  # T < S with q_offset = 0 (a prefix of a longer cache) also runs dense.
  first = q[:, :32]
  _close(attn(first, k, v, layer_idx=0), _dense_reference(first, k, v))
  sparse = attn(q, k, v, layer_idx=0)  # the full prefill is sparse
  assert float(jnp.max(jnp.abs(sparse - _dense_reference(q, k, v)))) > 1e-2


def test_dense_threshold_routes_short_prefills_dense():
  _index()
  cfg = PatternConfig.uniform(AShape(n_init=4, n_local=40), 1, 6)
  q, k, v = _qkv(9, **SHAPE)
  dense = _dense_reference(q, k, v)
  below = make_attention(cfg, "auto", dense_threshold=193, platform="cpu")
  _close(below(q, k, v, layer_idx=0), dense)
  at = make_attention(cfg, "auto", dense_threshold=192, platform="cpu")
  assert float(jnp.max(jnp.abs(at(q, k, v, layer_idx=0) - dense))) > 1e-2


def test_per_kind_thresholds_route_each_kind():
  """{"a_shape": 0, "vertical_slash": 10**6}: A-shape heads sparse, VS dense."""
  _index()
  heads = (AShape(n_init=4, n_local=40), VerticalSlash(n_vertical=30,
                                                        n_slash=50)) * 3
  cfg = PatternConfig(layers=(heads,))
  q, k, v = _qkv(11, **SHAPE)
  dense = _dense_reference(q, k, v)
  attn = make_attention(
      cfg, "auto", platform="cpu",
      dense_threshold={"a_shape": 0, "vertical_slash": 10**6},
  )
  assert attn.threshold_for(PatternKind.BLOCK_SPARSE) == 0
  out = attn(q, k, v, layer_idx=0)
  err = jnp.max(jnp.abs(out - dense), axis=(0, 1, 3))  # [N]
  assert (err[1::2] < 1e-5).all(), f"VS heads must be dense: {err}"
  assert (err[0::2] > 1e-2).all(), f"A-shape heads must be sparse: {err}"
  with pytest.raises(ValueError, match="unknown pattern kind"):
    make_attention(cfg, "auto", dense_threshold={"diagonal": 5})
  with pytest.raises(ValueError, match="dense_threshold must be"):
    make_attention(cfg, "auto", dense_threshold={"a_shape": -1})


def test_not_implemented_sparse_path_falls_back_to_dense(monkeypatch):
  q, k, v, expected = _mixed_case()

  def unsupported(*args, **kwargs):
    raise NotImplementedError("pretend this head dim is unsupported")

  monkeypatch.setitem(vertical_slash.OP.implementations, "xla",
                      dispatch.Implementation(unsupported))
  out = make_attention(PatternConfig(layers=(_MIXED,)), "xla")(
      q, k, v, layer_idx=0
  )
  dense = _dense_reference(q, k, v)
  for h, p in enumerate(_MIXED):
    want = dense if isinstance(p, VerticalSlash) else expected
    _close(out[:, :, h], want[:, :, h])


# ------------------------------------------------------------- validation
@pytest.mark.parametrize(
    "change, error, message",
    [
        (lambda q, k, v: (q[0], k, v), ValueError, r"q must be \[B, T, N, D\]"),
        (lambda q, k, v: (q, k, v[..., :8]), ValueError, "same shape"),
        (lambda q, k, v: (q[..., :8], k, v), ValueError, "head dim differs"),
        (lambda q, k, v: (q[:, :, :3], k, v), ValueError, "not divisible"),
        (lambda q, k, v: (q, k[:1], v[:1]), ValueError, "batch differs"),
        (lambda q, k, v: (q.astype(jnp.bfloat16), k, v), TypeError,
         "dtypes must agree"),
        (lambda q, k, v: (q, k.astype(jnp.int32), v.astype(jnp.int32)),
         TypeError, "dtypes must agree"),
        (lambda q, k, v: (np.zeros((2, 3)), k, v), ValueError, "q must be"),
        (lambda q, k, v: ([1.0], k, v), TypeError, "q must be an array"),
    ],
)
def test_bad_tensors_raise(change, error, message):
  q, k, v = _qkv(11, **{**SHAPE, "b": 2})
  for attn in (
      make_attention(None, "dense"),
      make_attention(PatternConfig.uniform(AShape(1, 8), 1, 6), "xla"),
  ):
    with pytest.raises(error, match=message):
      attn(*change(q, k, v), layer_idx=0)


def test_bad_indices_and_config_mismatch_raise():
  q, k, v = _qkv(12, **SHAPE)
  attn = make_attention(PatternConfig.uniform(AShape(1, 8), 2, 6), "xla")
  with pytest.raises(ValueError, match="layer_idx=2 out of range"):
    attn(q, k, v, layer_idx=2)
  with pytest.raises(TypeError, match="layer_idx must be a static int"):
    attn(q, k, v, layer_idx=-1)
  with pytest.raises(TypeError, match="layer_idx must be a static int"):
    attn(q, k, v, layer_idx=jnp.int32(0))
  with pytest.raises(TypeError, match="q_offset must be a static int"):
    attn(q[:, :1], k, v, layer_idx=0, q_offset=-3)
  wrong_heads = make_attention(PatternConfig.uniform(AShape(1, 8), 2, 8))
  with pytest.raises(ValueError, match="8 heads per layer but q has N=6"):
    wrong_heads(q, k, v, layer_idx=0)


# ----------------------------------------------------------------- pallas
def test_pallas_interpret_mixed_layer_matches_references():
  _pallas(
      "flash_attention",
      "a_shape_attention",
      "vertical_slash_attention",
      "block_sparse_attention",
  )
  q, k, v, expected = _mixed_case()
  cfg = PatternConfig(layers=(_MIXED,))
  attn = make_attention(cfg, "pallas", interpret=True)
  _close(attn(q, k, v, layer_idx=0), expected)
  # The O(T) chain layout gives the same layer.
  chain = dataclasses.replace(attn, vs_layout="chain")
  _close(chain(q, k, v, layer_idx=0), expected)
  assert chain == make_attention(cfg, "pallas", interpret=True,
                                 vs_layout="chain")
  with pytest.raises(ValueError, match="vs_layout must be"):
    dataclasses.replace(attn, vs_layout="runs")
  with pytest.raises(ValueError, match="implementation must be"):
    make_attention(cfg, "pallas", implementation="cuda")
  # An all-dense layer runs the Pallas flash kernel.
  dense_cfg = PatternConfig.uniform(Dense(), 1, 6)
  out = make_attention(dense_cfg, "pallas", interpret=True)(
      q, k, v, layer_idx=0
  )
  _close(out, _dense_reference(q, k, v))


def test_mosaic_gpu_kernels_layer_matches_triton_kernels():
  """implementation="pallas_mosaic_gpu" (Mosaic GPU interpret mode) gives
  the layer the Triton kernels give, on every sparse kind (bf16, T a
  multiple of 64, D=64: what the Mosaic GPU kernels take); the backend's
  order picks them only outside interpret mode."""
  q, k, v = _qkv(11, t=256, n=6, kv=2, d=64, dtype=jnp.bfloat16)
  cfg = PatternConfig(layers=(_MIXED,))
  triton = make_attention(cfg, "pallas", interpret=True)
  mosaic = make_attention(cfg, "pallas", interpret=True,
                          implementation="pallas_mosaic_gpu")
  for kind in (PatternKind.A_SHAPE, PatternKind.BLOCK_SPARSE,
               PatternKind.VERTICAL_SLASH):
    assert triton.implementation_order(kind) == ("pallas_triton",)
    assert mosaic.implementation_order(kind) == ("pallas_mosaic_gpu",)
  want = triton(q, k, v, layer_idx=0).astype(jnp.float32)
  got = mosaic(q, k, v, layer_idx=0).astype(jnp.float32)
  scale = float(jnp.max(jnp.abs(want)))
  np.testing.assert_allclose(np.asarray(got), np.asarray(want),
                             atol=2e-2 * scale, rtol=0)
