"""Which implementation the attention seam runs, per backend, implementation
override, VS layout, interpret mode, device (faked) and input shape.

`old_choice` is the choice the seam made before the ops had one entry point
each (the `kernels=` field and the per-pattern if-ladder), written out: the
restructured seam must pick exactly the same kernels for every case.
"""

import itertools

import jax
import jax.numpy as jnp
import pytest

import kernel_test_utils as ktu
from minference_jax import attention as attention_lib
from minference_jax.attention import make_attention
from minference_jax.pattern_config import PatternConfig
from minference_jax.patterns import (
    AShape,
    BlockSparse,
    Dense,
    PatternKind,
    VerticalSlash,
)
from pallas_kernels import a_shape, block_sparse, dispatch, flash
from pallas_kernels import vertical_slash
from pallas_kernels.layouts import (
    AShapeLayout,
    BlockSparseLayout,
    VerticalSlashChainLayout,
    VerticalSlashLayout,
)
from pallas_kernels.vertical_slash.pallas_mosaic_gpu import MAX_T

A, VS, BS = (PatternKind.A_SHAPE, PatternKind.VERTICAL_SLASH,
             PatternKind.BLOCK_SPARSE)
OPS = {A: a_shape.OP, VS: vertical_slash.OP, BS: block_sparse.OP}
LAYER = (VerticalSlash(30, 50), AShape(4, 40), BlockSparse(2), Dense())
KERNELS_TO_IMPLEMENTATION = {"auto": None, "triton": "pallas_triton",
                             "mosaic_gpu": "pallas_mosaic_gpu"}


def old_choice(backend, kernels, vs_layout, interpret, kind, device, q):
  """The kernel the seam ran before: backend "xla" -> XLA; "pallas" -> the
  chain VS layout always Triton; kernels="triton" / "mosaic_gpu" forced;
  "auto" Mosaic GPU on a Hopper GPU for inputs it takes (never in interpret
  mode, VS only for T <= MAX_T), else Triton."""
  if backend == "xla":
    return "xla"
  if kind is VS and vs_layout == "chain":
    return "pallas_triton"
  if kernels != "auto":
    return KERNELS_TO_IMPLEMENTATION[kernels]
  if kind is VS and q.shape[1] > MAX_T:
    return "pallas_triton"
  takes = (q.dtype in (jnp.bfloat16, jnp.float16)
           and q.shape[-1] in (64, 128, 256) and q.shape[1] % 64 == 0)
  hopper = device == "h100"
  return "pallas_mosaic_gpu" if (hopper and takes and not interpret) else (
      "pallas_triton")


def _sds(shape, dtype=jnp.int32):
  return jax.ShapeDtypeStruct(shape, dtype)


def _layout(kind, t, chain):
  tb = -(-t // 64)
  if kind is A:
    return AShapeLayout(_sds((4,)), _sds((4,)))
  if kind is BS:
    return BlockSparseLayout(_sds((1, 4, tb)), _sds((1, 4, tb, 8)))
  if chain:
    y = _sds((1, 4, t + 65))
    return VerticalSlashChainLayout(y, y, y, _sds((1, 4, 8)), y)
  return VerticalSlashLayout(_sds((1, 4, tb)), _sds((1, 4, tb, 8)),
                             _sds((1, 4, tb)), _sds((1, 4, tb, 8)))


INPUTS = [  # (T, D, dtype): taken by Mosaic GPU, then one limit each
    (4096, 128, jnp.bfloat16), (4096, 64, jnp.float16),
    (4096, 128, jnp.float32), (4096, 96, jnp.bfloat16),
    (4160 - 1, 128, jnp.bfloat16), (MAX_T + 64, 128, jnp.bfloat16),
]


@pytest.mark.parametrize("device", ["h100", "a100", "cpu"])
def test_every_combination_picks_the_kernel_it_picked_before(monkeypatch,
                                                             device):
  ktu.fake_device(monkeypatch, device)
  cfg = PatternConfig(layers=(LAYER,))
  combos = itertools.product(["xla", "pallas", "auto"],
                             KERNELS_TO_IMPLEMENTATION, ["expanded", "chain"],
                             [False, True])
  checked = 0
  for backend, kernels, vs_layout, interpret in combos:
    # "auto" is "pallas" on a GPU; `kernels=` only acted on "pallas".
    old_backend = ("pallas" if backend == "pallas" or (
        backend == "auto" and device != "cpu") else "xla")
    attn = make_attention(
        cfg, backend, platform="gpu" if device != "cpu" else "cpu",
        implementation=(KERNELS_TO_IMPLEMENTATION[kernels]
                        if old_backend == "pallas" else None),
        vs_layout=vs_layout, interpret=interpret)
    assert attn.backend == old_backend
    for (t, d, dtype), kind in itertools.product(INPUTS, (A, VS, BS)):
      q = _sds((1, t, 4, d), dtype)
      k = _sds((1, t, 2, d), dtype)
      chain = kind is VS and attn.uses_chain_layout()
      order = attn.implementation_order(kind)
      got = OPS[kind].chosen(q, k, k, _layout(kind, t, chain),
                             implementation=order, interpret=interpret)
      want = old_choice(old_backend, kernels, vs_layout, interpret, kind,
                        device, q)
      assert got == want, (backend, kernels, vs_layout, interpret, kind,
                           t, d, dtype, order)
      assert attn.uses_chain_layout() == (vs_layout == "chain"
                                          and old_backend == "pallas")
      checked += 1
  assert checked == 3 * 3 * 2 * 2 * len(INPUTS) * 3


@pytest.mark.parametrize("device", ["h100", "a100", "cpu"])
def test_dense_attention_picks_what_it_picked_before(monkeypatch, device):
  """cuDNN for "auto"/"cudnn" full prefills it takes, the Triton flash
  kernel for "pallas_triton" full prefills, XLA for the rest."""
  ktu.fake_device(monkeypatch, device)
  major = {"h100": 9, "a100": 8, "cpu": None}[device]
  for backend in ("dense", "xla", "pallas", "auto"):
    dense = make_attention(None, backend)
    for (t, s, off), (d, dtype) in itertools.product(
        [(512, 512, 0), (1, 512, 511), (64, 512, 0)],
        [(128, jnp.bfloat16), (256, jnp.float16), (128, jnp.float32),
         (100, jnp.bfloat16)]):
      q, k = _sds((1, t, 4, d), dtype), _sds((1, s, 2, d), dtype)
      prefill = t == s and off == 0
      cudnn = (major is not None and dtype != jnp.float32 and d % 8 == 0
               and d <= (256 if major >= 9 else 128))
      want = ("cudnn" if prefill and cudnn and backend != "pallas"
              and backend != "xla" else "pallas_triton"
              if prefill and backend == "pallas" else "xla")
      got = flash.OP.chosen(q, k, k, q_offset=off,
                            implementation=dense.implementation_order())
      assert got == want, (backend, t, s, off, d, dtype)


class _Spy:
  """Records which implementation of each op runs (returning zeros) and
  the index builders' options, without computing attention."""

  def __init__(self, monkeypatch):
    self.ran, self.estimates = {}, []
    for kind, op in OPS.items():
      for name in list(op.implementations):
        monkeypatch.setitem(op.implementations, name,
                            self._implementation(kind, op, name))
    for name in list(flash.OP.implementations):
      monkeypatch.setitem(flash.OP.implementations, name,
                          self._implementation(PatternKind.DENSE, flash.OP,
                                               name))
    for name in ("vertical_slash_indices", "vertical_slash_layout",
                 "vertical_slash_chain_layout", "block_sparse_indices"):
      monkeypatch.setattr(attention_lib, name, self._builder(name))
    # The builders' stand-in layouts are their names, not layout objects.
    monkeypatch.setattr(dispatch, "check_layout_type", lambda *args: None)

  def _implementation(self, kind, op, name):
    real = op.implementations[name]

    def run(q, *args, **kwargs):
      layout = args[2] if len(args) > 2 else None
      self.ran.setdefault(kind, []).append((name, layout))
      return jnp.zeros(q.shape, q.dtype)

    return dispatch.Implementation(run, real.unsupported)

  def _builder(self, name):
    def build(*args, **kwargs):
      self.estimates.append((name, kwargs))
      return name  # a stand-in layout
    return build


@pytest.mark.parametrize("backend, implementation, vs_layout, want", [
    ("xla", None, "expanded", dict(a="xla", vs="xla", bs="xla", dense="xla",
                                   scores="xla", fold=False)),
    ("pallas", None, "expanded",
     dict(a="pallas_triton", vs="pallas_triton", bs="pallas_triton",
          dense=None, scores="pallas", fold=True)),
    ("pallas", None, "chain",
     dict(a="pallas_triton", vs="pallas_triton", bs="pallas_triton",
          dense=None, scores="pallas", fold=True, chain=True)),
    ("pallas", {"vertical_slash": "xla", "dense": "xla"}, "chain",
     dict(a="pallas_triton", vs="xla", bs="pallas_triton", dense=None,
          scores="xla", fold=True)),
    ("xla", {"a_shape": "pallas_triton"}, "expanded",
     dict(a="pallas_triton", vs="xla", bs="xla", dense=None, scores="xla",
          fold=True)),
])
def test_layer_runs_each_kind_on_its_implementation(
    monkeypatch, backend, implementation, vs_layout, want):
  """Interpret mode on CPU: the layer's ops, estimate options, dense
  heads (folded into the A-shape launch where A-shape runs Pallas)."""
  spy = _Spy(monkeypatch)
  attn = make_attention(PatternConfig(layers=(LAYER,)), backend,
                        implementation=implementation, vs_layout=vs_layout,
                        interpret=True)
  q = jnp.zeros((1, 128, 4, 16))
  k = jnp.zeros((1, 128, 2, 16))
  attn(q, k, k, layer_idx=0)
  ran = {kind: [name for name, _ in calls] for kind, calls in spy.ran.items()}
  assert ran[A] == [want["a"]] and ran[VS] == [want["vs"]]
  assert ran[BS] == [want["bs"]]
  assert ran.get(PatternKind.DENSE) == (None if want["dense"] is None
                                        else [want["dense"]])
  (_, a_layout), = spy.ran[A]
  assert int(a_layout.n_local[3]) == (128 if want["fold"] else 0)  # Dense()
  estimates = dict(spy.estimates)
  assert estimates["vertical_slash_indices"]["scores"] == want["scores"]
  assert ("vertical_slash_chain_layout" in estimates) == want.get("chain",
                                                                  False)
  if want.get("chain"):
    assert estimates["vertical_slash_chain_layout"]["builder"] == "pallas"


def test_make_attention_implementation_keyword():
  cfg = PatternConfig(layers=(LAYER,))
  attn = make_attention(cfg, "pallas", implementation={
      "vertical_slash": ("pallas_mosaic_gpu", "xla"), PatternKind.A_SHAPE:
      "xla", "dense": "cudnn"})
  assert attn.implementation == ((A, ("xla",)),
                                 (VS, ("pallas_mosaic_gpu", "xla")))
  assert attn.implementation_order(BS) == ("pallas_mosaic_gpu",
                                           "pallas_triton")
  assert attn.dense.implementation == "cudnn"
  every = make_attention(cfg, "xla", implementation="pallas_triton")
  assert all(every.implementation_order(kind) == ("pallas_triton",)
             for kind in (A, VS, BS))
  assert make_attention(None, "dense", implementation={
      "dense": "xla"}).implementation == "xla"
  for bad, match in [("cuda", "implementation must be"),
                     ({"diagonal": "xla"}, "unknown pattern kind"),
                     ({"dense": "pallas_mosaic_gpu"}, "dense"),
                     ({"a_shape": ()}, "a_shape"), ((), "implementation")]:
    with pytest.raises(ValueError, match=match):
      make_attention(cfg, "xla", implementation=bad)
  with pytest.raises(ValueError, match="vs_layout must be"):
    make_attention(cfg, "pallas", vs_layout="runs")
