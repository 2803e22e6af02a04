"""Pattern dataclasses: validation, hashability, static-arg use under jit."""

import functools

import jax
import jax.numpy as jnp
import pytest

from minference_jax import (
    AShape,
    BlockSparse,
    Dense,
    PatternKind,
    VerticalSlash,
)


def test_defaults_follow_minference():
  assert (VerticalSlash().n_vertical, VerticalSlash().n_slash) == (1000, 6096)
  assert VerticalSlash().last_q == 64
  assert (AShape().n_init, AShape().n_local) == (128, 3968)
  assert BlockSparse().top_k == 100 and BlockSparse().block == 64


def test_kinds():
  assert Dense().kind is PatternKind.DENSE
  assert AShape().kind is PatternKind.A_SHAPE
  assert VerticalSlash().kind is PatternKind.VERTICAL_SLASH
  assert BlockSparse().kind is PatternKind.BLOCK_SPARSE


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda: VerticalSlash(-1, 10), "n_vertical"),
        (lambda: VerticalSlash(10, -5), "n_slash"),
        (lambda: VerticalSlash(10, 10, last_q=0), "last_q"),
        (lambda: AShape(-1, 10), "n_init"),
        (lambda: AShape(4, 0), "n_local"),
        (lambda: BlockSparse(top_k=0), "top_k"),
        (lambda: BlockSparse(block=32), "block"),
    ],
)
def test_invalid_values_raise_naming_the_field(make, message):
  with pytest.raises(ValueError, match=message):
    make()


def test_non_integer_budget_is_a_type_error():
  with pytest.raises(TypeError, match="n_vertical"):
    VerticalSlash(10.5, 100)
  with pytest.raises(TypeError, match="top_k"):
    BlockSparse(top_k=True)


def test_frozen_and_hashable_as_static_args():
  patterns = (VerticalSlash(30, 50), AShape(4, 8), BlockSparse(3), Dense())
  assert len({*patterns, VerticalSlash(30, 50)}) == 4
  with pytest.raises(Exception):
    patterns[0].n_vertical = 3  # frozen

  @functools.partial(jax.jit, static_argnums=1)
  def scaled(x, pattern):
    return x * getattr(pattern, "n_local", 1)

  assert int(scaled(jnp.ones(()), AShape(1, 7))) == 7
