"""The stream plans' producer schedule (`stream_advance`) against a plain
walk: primary tiles in order, their chunks gathered GATHER at a time."""

import jax.numpy as jnp
import pytest

import kernel_test_utils as ktu
from pallas_kernels._mosaic_gpu.stream import (
    GATHER,
    StreamState,
    StreamStep,
    stream_advance,
)


def _plain_walk(has_chunk: list[bool]) -> list:
  """("P", p) per primary tile, "G" per gathered tile: a tile is gathered
  as soon as GATHER chunks are pending, and after the last primary while
  any are."""
  steps, pending, p = [], 0, 0
  while p < len(has_chunk) or pending:
    if pending == GATHER or (p >= len(has_chunk) and pending):
      steps.append("G")
      pending = 0
    else:
      steps.append(("P", p))
      pending += has_chunk[p]
      p += 1
  return steps


@pytest.mark.parametrize("n_primary,chunk_rate", [
    (0, 0.0), (5, 0.0), (3, 1.0), (20, 1.0), (30, 0.5), (17, 0.9)])
def test_stream_advance_follows_the_plain_walk(n_primary, chunk_rate):
  """Each step of the producer's schedule is the plain walk's (the plan's
  state advancing on primary steps only), it has n_primary +
  ceil(chunks / GATHER) live steps, and steps past them change nothing."""
  rng, seed = ktu.fresh_rng()
  has_chunk = list(rng.random(n_primary) < chunk_rate)
  want = _plain_walk(has_chunk)
  assert len(want) == n_primary + -(-sum(has_chunk) // GATHER)
  state = StreamState(jnp.int32(0), jnp.int32(0), (jnp.int32(0),))
  got = []
  for i in range(len(want) + 2):
    p = int(state.p)
    step = StreamStep(start=jnp.int32(8 * p), header=jnp.int32(p),
                      has_chunk=jnp.asarray(p < n_primary and has_chunk[p]),
                      chunk=jnp.int32(8 * p + 1))
    next_plan = (state.plan[0] + 1,)  # the plan's own state: primaries seen
    gathered, primary, state = stream_advance(
        state, step, next_plan, jnp.int32(n_primary),
        jnp.asarray(i < len(want)))
    assert not (bool(gathered) and bool(primary)), seed
    if bool(gathered):
      got.append("G")
    elif bool(primary):
      got.append(("P", p))
    else:
      assert i >= len(want), f"step {i} neither primary nor gathered ({seed=})"
  assert got == want, f"seed={seed}"
  assert int(state.p) == n_primary and int(state.pending) == 0, seed
  assert int(state.plan[0]) == n_primary, seed
