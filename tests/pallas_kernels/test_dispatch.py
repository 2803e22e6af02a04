"""The op entry points: order resolution, fall-through, and which
implementation each op runs by default per device (the device faked)."""

import jax
import jax.numpy as jnp
import pytest

import kernel_test_utils as ktu
from pallas_kernels import a_shape, block_sparse, dispatch, flash
from pallas_kernels import vertical_slash
from pallas_kernels.layouts import (
    AShapeLayout,
    BlockSparseLayout,
    VerticalSlashChainLayout,
    VerticalSlashLayout,
)
from pallas_kernels.vertical_slash.pallas_mosaic_gpu import MAX_T


# ------------------------------------------------------------- mechanics
def _toy_op(calls):
  """An op whose implementations record their calls: "a" supports only
  positive inputs, "b" raises NotImplementedError when run, "c" always
  runs."""

  def run(name, result=None):
    def fn(x, *, config, interpret):
      calls.append((name, config, interpret))
      if result is None:
        raise NotImplementedError(f"{name} cannot")
      return result
    return fn

  return dispatch.Op(
      name="toy",
      implementations={
          "a": dispatch.Implementation(
              run("a", "A"),
              lambda x, *, interpret: None if x > 0 else "x <= 0"),
          "b": dispatch.Implementation(run("b")),
          "c": dispatch.Implementation(run("c", "C")),
      },
      default_order=lambda *, interpret: ("a", "c") if interpret else ("c",),
  )


def test_tries_in_order_and_falls_through_on_not_supported():
  calls = []
  op = _toy_op(calls)
  assert op(1, implementation=("a", "b", "c")) == "A"
  assert op(-1, implementation=("a", "b", "c")) == "C"  # a: test, b: raises
  assert [c[0] for c in calls] == ["a", "b", "c"]
  assert op.chosen(-1, implementation=("a", "c")) == "c"
  assert op(-1) == "C" and op(2, interpret=True) == "A"  # default orders
  with pytest.raises(dispatch.NotSupportedError,
                     match=r"a: x <= 0; b: b cannot"):
    op(-1, implementation=("a", "b"))
  with pytest.raises(dispatch.NotSupportedError, match="a: x <= 0"):
    op.chosen(-1, implementation=("a",) * 2)


def test_a_single_implementation_runs_untested_and_its_errors_propagate():
  calls = []
  op = _toy_op(calls)
  assert op(-1, implementation="a", config="cfg") == "A"  # no support test
  assert calls == [("a", "cfg", False)]
  with pytest.raises(NotImplementedError, match="b cannot"):
    op(1, implementation=["b"])
  assert op.chosen(-1, implementation="a") == "a"


def test_bad_requests_raise():
  op = _toy_op([])
  for bad in ("d", (), ("a", "d")):
    with pytest.raises(ValueError, match="implementation must be one of"):
      op(1, implementation=bad)
  with pytest.raises(ValueError, match="a config belongs to one"):
    op(1, implementation=("a", "c"), config="cfg")
  assert issubclass(dispatch.NotSupportedError, NotImplementedError)


# ------------------------------------------------- defaults per device
SPARSE_OPS = {
    "vertical_slash": vertical_slash.OP,
    "block_sparse": block_sparse.OP,
    "a_shape": a_shape.OP,
}


def _sds(shape, dtype):
  return jax.ShapeDtypeStruct(shape, dtype)


def _args(op: str, t: int, d: int = 128, dtype=jnp.bfloat16, chain=False):
  """Abstract (q, k, v, layout) of an op: what the support tests read."""
  q = _sds((1, t, 4, d), dtype)
  k = _sds((1, t, 2, d), dtype)
  tb = -(-t // 64)
  if op == "a_shape":
    layout = AShapeLayout(_sds((4,), jnp.int32), _sds((4,), jnp.int32))
  elif op == "block_sparse":
    layout = BlockSparseLayout(_sds((1, 4, tb), jnp.int32),
                               _sds((1, 4, tb, 8), jnp.int32))
  elif chain:
    y = _sds((1, 4, t + 65), jnp.int32)
    layout = VerticalSlashChainLayout(y, y, y, _sds((1, 4, 8), jnp.int32), y)
  else:
    layout = VerticalSlashLayout(*[_sds((1, 4, tb) + e, jnp.int32)
                                   for e in ((), (8,), (), (8,))])
  return q, k, k, layout


@pytest.mark.parametrize("op", SPARSE_OPS)
@pytest.mark.parametrize("device, t, d, dtype, want", [
    ("h100", 4096, 128, jnp.bfloat16, "pallas_mosaic_gpu"),
    ("h100", 4096, 64, jnp.float16, "pallas_mosaic_gpu"),
    ("h100", 4096, 128, jnp.float32, "pallas_triton"),  # dtype
    ("h100", 4096, 96, jnp.bfloat16, "pallas_triton"),  # head dim
    ("h100", 4100, 128, jnp.bfloat16, "pallas_triton"),  # T % 64
    ("a100", 4096, 128, jnp.bfloat16, "pallas_triton"),  # no wgmma / TMA
    ("cpu", 4096, 128, jnp.bfloat16, "xla"),
])
def test_sparse_default_order_per_device(monkeypatch, op, device, t, d,
                                         dtype, want):
  ktu.fake_device(monkeypatch, device)
  args = _args(op, t, d, dtype)
  assert SPARSE_OPS[op].chosen(*args) == want
  # Interpret mode (CPU tests) runs Pallas-Triton unless one is named.
  assert SPARSE_OPS[op].chosen(*args, interpret=True) == "pallas_triton"
  assert SPARSE_OPS[op].chosen(
      *args, implementation="pallas_mosaic_gpu",
      interpret=True) == "pallas_mosaic_gpu"


def test_vertical_slash_limits_of_mosaic_gpu(monkeypatch):
  """Mosaic GPU's Vertical-Slash takes T <= MAX_T and the expanded layout
  only; the others take any T, and XLA no chain layout either."""
  ktu.fake_device(monkeypatch, "h100")
  too_long = MAX_T + 64
  assert vertical_slash.OP.chosen(
      *_args("vertical_slash", too_long)) == "pallas_triton"
  assert vertical_slash.OP.chosen(
      *_args("vertical_slash", MAX_T)) == "pallas_mosaic_gpu"
  for op in ("a_shape", "block_sparse"):
    assert SPARSE_OPS[op].chosen(*_args(op, too_long)) == "pallas_mosaic_gpu"
  chain = _args("vertical_slash", 4096, chain=True)
  assert vertical_slash.OP.chosen(*chain) == "pallas_triton"
  with pytest.raises(dispatch.NotSupportedError, match="chain layout"):
    vertical_slash.OP.chosen(
        *chain, implementation=("pallas_mosaic_gpu", "xla"))


@pytest.mark.parametrize("device, t, s, q_offset, d, dtype, want", [
    ("h100", 4096, 4096, 0, 128, jnp.bfloat16, "cudnn"),
    ("h100", 4096, 4096, 0, 256, jnp.float16, "cudnn"),  # D 256 on sm_90
    ("a100", 4096, 4096, 0, 256, jnp.bfloat16, "pallas_triton"),
    ("h100", 4096, 4096, 0, 100, jnp.bfloat16, "pallas_triton"),  # D % 8
    ("h100", 4096, 4096, 0, 128, jnp.float32, "pallas_triton"),
    ("h100", 1, 4096, 4095, 128, jnp.bfloat16, "xla"),  # decode step
    ("h100", 1024, 4096, 0, 128, jnp.bfloat16, "xla"),  # T < S
    ("cpu", 4096, 4096, 0, 128, jnp.bfloat16, "xla"),
])
def test_flash_default_order_per_device(monkeypatch, device, t, s, q_offset,
                                        d, dtype, want):
  ktu.fake_device(monkeypatch, device)
  q, k = _sds((1, t, 4, d), dtype), _sds((1, s, 2, d), dtype)
  assert flash.OP.chosen(q, k, k, q_offset=q_offset) == want


def test_default_orders_name_the_implementations(monkeypatch):
  for device, want in (("h100", ("pallas_mosaic_gpu", "pallas_triton",
                                 "xla")), ("cpu", ("xla",))):
    ktu.fake_device(monkeypatch, device)
    assert dispatch.sparse_default_order(interpret=False) == want
    assert dispatch.sparse_default_order(interpret=True) == (
        "pallas_triton", "xla")
  ktu.fake_device(monkeypatch, "a100")
  assert flash.api.default_order(interpret=False) == (
      "cudnn", "pallas_triton", "xla")
  for op in (*SPARSE_OPS.values(), flash.OP):
    assert set(op.implementations) >= {"pallas_triton", "xla"}
