"""A-shape XLA implementation: the op battery plus its static bounds."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import kernel_test_utils as ktu
from attention_op_test_base import (
    AttentionOpTestBase,
    JitMatchesEager,
    reference,
)
from pallas_kernels.a_shape import a_shape_attention, xla
from pallas_kernels.layouts import AShapeLayout


class TestXla(AttentionOpTestBase, JitMatchesEager):
  OP = "a_shape"
  IMPLEMENTATION = "xla"
  F32_ATOL = 1e-5

  def jit_config(self, case, layout):
    """Under jit the layout is traced: its bounds come as static ints."""
    return xla.Config(max_init=int(np.max(layout.n_init)),
                      max_local=int(np.max(layout.n_local)))


def test_small_windows_and_sinks_inside_the_window():
  """Sinks that also lie in the local window are counted once; windows of
  1 key (the diagonal) and wider than a row block."""
  rng, seed = ktu.fresh_rng()
  t = 140
  q, k, v = ktu.random_qkv(rng, 1, t, 4, 2, 8, jnp.float32)
  layout = AShapeLayout(jnp.array([3, 10, 70, 1], jnp.int32),
                        jnp.array([1, 5, 64, 65], jnp.int32))
  out = xla.a_shape_attention_xla(q, k, v, layout)
  want = reference("a_shape", q, k, v, layout)
  np.testing.assert_allclose(np.asarray(out), want, atol=1e-5,
                             err_msg=f"seed={seed}")


def test_traced_layout_needs_static_bounds():
  rng, seed = ktu.fresh_rng()
  q, k, v = ktu.random_qkv(rng, 1, 70, 4, 2, 8, jnp.float32)
  layout = AShapeLayout(jnp.array([1, 2, 3, 4], jnp.int32),
                        jnp.array([5, 6, 7, 8], jnp.int32))
  with pytest.raises(ValueError, match="max_init"):
    jax.jit(xla.a_shape_attention_xla)(q, k, v, layout)
  # With static bounds (the XLA config of the entry point) it traces.
  fn = jax.jit(lambda q, k, v, lay: a_shape_attention(
      q, k, v, lay, implementation="xla",
      config=xla.Config(max_init=4, max_local=8)))
  np.testing.assert_allclose(np.asarray(fn(q, k, v, layout)),
                             reference("a_shape", q, k, v, layout),
                             atol=1e-5, err_msg=f"seed={seed}")


def test_bad_layout_raises():
  rng, _ = ktu.fresh_rng()
  q, k, v = ktu.random_qkv(rng, 1, 64, 2, 1, 16, jnp.float32)
  with pytest.raises(ValueError, match="must have shape"):
    xla.a_shape_attention_xla(q, k, v, AShapeLayout(
        jnp.zeros((3,), jnp.int32), jnp.zeros((3,), jnp.int32)))
