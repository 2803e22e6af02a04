"""Helpers of the GPU tests (`pytest -m gpu`, `make gpu-test`).

`hopper_test` marks a test `gpu` and skips it (with the reason) unless the
default device is a Hopper GPU; `assert_matches_reference` checks a kernel's
whole output against the dense f32 reference, computed in row chunks so that
[B, N, rows, S] logits fit at 16K tokens.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
import pytest

from pallas_kernels import reference as ref_lib
from pallas_kernels._mosaic_gpu.config import hopper_gpu

HOPPER_SKIP_REASON = ("needs a Hopper GPU (sm_90) as the default JAX device;"
                      " run `make gpu-test` (JAX_PLATFORMS=cuda) on an"
                      " H100/H200")


def hopper_test(fn):
  """Marks `fn` a `gpu` test that runs only on a Hopper GPU."""
  fn = pytest.mark.skipif(not hopper_gpu(), reason=HOPPER_SKIP_REASON)(fn)
  return pytest.mark.gpu(fn)


@functools.partial(jax.jit, static_argnames=("rows",))
def _reference_rows(q, k, v, mask, r0, *, rows: int):
  """The f32 reference of query rows [r0, r0 + rows) ([B, rows, N, D])."""
  q_rows = lax.dynamic_slice_in_dim(q, r0, rows, axis=1)
  mask_rows = lax.dynamic_slice_in_dim(mask, r0, rows, axis=2)
  return ref_lib.masked_attention_reference(
      q_rows.astype(jnp.float32), k.astype(jnp.float32),
      v.astype(jnp.float32), mask_rows)


def assert_matches_reference(out, q, k, v, mask, *, seed, what: str,
                             inactive_heads=(), row_chunk: int = 2048):
  """out [B, T, N, D] (bf16/fp16) against the f32 reference over `mask`
  [B or 1, N, T, S]: finite, relative L2 error <= 1e-2 over the whole
  output, and exactly zero on `inactive_heads`."""
  t = q.shape[1]
  num = den = 0.0
  for r0 in range(0, t, row_chunk):
    rows = min(row_chunk, t - r0)
    want = _reference_rows(q, k, v, mask, r0, rows=rows)
    got = out[:, r0:r0 + rows].astype(jnp.float32)
    assert bool(jnp.all(jnp.isfinite(got))), (
        f"non-finite output in rows {r0}.. ({what}, seed={seed})")
    num += float(jnp.sum((got - want) ** 2))
    den += float(jnp.sum(want**2))
  rel = np.sqrt(num / max(den, 1e-30))
  assert rel <= 1e-2, f"rel err {rel:.2e} ({what}, seed={seed})"
  for h in inactive_heads:
    assert not bool(jnp.any(out[:, :, h] != 0)), (
        f"inactive head {h} not zero ({what}, seed={seed})")
