"""The index facade: A-shape bounds and input validation of every builder."""

import jax.numpy as jnp
import pytest

from minference_jax.index import (
    VerticalSlashIndices,
    a_shape_layout,
    block_sparse_indices,
    vertical_slash_indices,
    vertical_slash_layout,
)


def test_a_shape_layout():
  layout = a_shape_layout((128, 0, 7), (3968, 0, 1))
  assert layout.n_init.dtype == layout.n_local.dtype == jnp.int32
  assert layout.n_init.tolist() == [128, 0, 7]
  assert layout.n_local.tolist() == [3968, 0, 1]


@pytest.mark.parametrize(
    "args, error",
    [
        (((1, 2), (3,)), ValueError),
        (((1, -2), (3, 4)), ValueError),
        (((1, 2.5), (3, 4)), TypeError),
        (((True,), (3,)), TypeError),
        (((), ()), ValueError),
    ],
)
def test_a_shape_layout_errors(args, error):
  with pytest.raises(error):
    a_shape_layout(*args)


# ------------------------------------------------------------ bad input
def _qk(b=1, t=32, n=4, kv=2, d=8, s=None, dk=None, bk=None):
  q = jnp.zeros((b, t, n, d))
  k = jnp.zeros((bk or b, s or t, kv, dk or d))
  return q, k


BAD_VS = [
    (lambda: vertical_slash_indices(jnp.zeros((32, 4, 8)), _qk()[1], 1, 1),
     "q"),
    (lambda: vertical_slash_indices(_qk()[0], jnp.zeros((32, 2, 8)), 1, 1),
     "k"),
    (lambda: vertical_slash_indices(*_qk(kv=3, n=4), 1, 1), "multiple"),
    (lambda: vertical_slash_indices(*_qk(dk=16), 1, 1), "dim"),
    (lambda: vertical_slash_indices(*_qk(bk=2), 1, 1), "batch"),
    (lambda: vertical_slash_indices(*_qk(s=64), 1, 1), "T == S"),
    (lambda: vertical_slash_indices(*_qk(), -1, 1), "n_vertical"),
    (lambda: vertical_slash_indices(*_qk(), 1, (1, 2, -3, 4)), "n_slash"),
    (lambda: vertical_slash_indices(*_qk(), (1, 2), 1), "per-head"),
    (lambda: vertical_slash_indices(*_qk(), 1, 1, 0), "last_q"),
    (lambda: vertical_slash_indices(*_qk(), 1, 1, active=(True,)), "active"),
    (lambda: block_sparse_indices(*_qk(kv=3, n=4), 2), "multiple"),
    (lambda: block_sparse_indices(*_qk(), -2), "top_k"),
    (lambda: block_sparse_indices(*_qk(), (1, 2)), "per-head"),
    (lambda: block_sparse_indices(*_qk(), 2, 0), "block"),
    (lambda: block_sparse_indices(*_qk(s=16), 2), "T == S"),
    (lambda: vertical_slash_layout(
        VerticalSlashIndices(
            jnp.zeros((1, 2, 3), jnp.int32), jnp.zeros((1, 3), jnp.int32),
            jnp.zeros((1, 2, 3), jnp.int32), jnp.zeros((1, 2), jnp.int32),
        ), 16), "vertical_count"),
    (lambda: vertical_slash_layout(
        VerticalSlashIndices(
            jnp.zeros((1, 2, 3), jnp.int32), jnp.zeros((1, 2), jnp.int32),
            jnp.zeros((1, 2, 3), jnp.int32), jnp.zeros((1, 2), jnp.int32),
        ), 0), "seq_len"),
    (lambda: vertical_slash_layout(
        VerticalSlashIndices(
            jnp.zeros((1, 2, 3), jnp.int32), jnp.zeros((1, 2), jnp.int32),
            jnp.zeros((1, 2, 0), jnp.int32), jnp.zeros((1, 2), jnp.int32),
        ), 16), "NS >= 1"),
]


@pytest.mark.parametrize("make, words", BAD_VS)
def test_bad_input_errors(make, words):
  # Wrong ranks and batch/head-dim mismatches may be caught first by the
  # jaxtyping annotations (a TypeError); the rest raise our ValueError.
  with pytest.raises((ValueError, TypeError)) as info:
    make()
  message = str(info.value)
  assert words in message or (
      info.type is not ValueError and "Type-check error" in message
  ), message


@pytest.mark.parametrize(
    "make",
    [
        lambda: vertical_slash_indices(*_qk(), 1.5, 1),
        lambda: vertical_slash_indices(*_qk(), True, 1),
        lambda: vertical_slash_indices(*_qk(), 1, 1, active=(1, 1, 1, 1)),
        lambda: block_sparse_indices(*_qk(), (1, 2, 3, 4.0)),
        lambda: vertical_slash_indices(
            jnp.zeros((1, 32, 4, 8), jnp.int32), _qk()[1], 1, 1
        ),
    ],
)
def test_bad_types(make):
  with pytest.raises(TypeError):
    make()
