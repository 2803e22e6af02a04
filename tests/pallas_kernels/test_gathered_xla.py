"""The gathered-attention driver of the XLA implementations: chunking."""

import jax
import jax.numpy as jnp

import random_layouts as rl
from pallas_kernels import gathered_xla
from pallas_kernels.reference import vertical_slash_mask
from pallas_kernels.vertical_slash.xla import vertical_slash_attention_xla


def test_chunking_and_jit_give_the_same_result(monkeypatch):
  """One row block per chunk (a shape used nowhere else, so it compiles
  afresh with the patched budget) with the layout traced under an outer
  jit."""
  rng, seed = rl.fresh_rng()
  t = 200
  q, k, v = rl.random_qkv(rng, 1, t, 2, 1, 24)
  layout = rl.random_vs_layout(rng, 1, 2, t, ns=3, nv=7)
  monkeypatch.setattr(gathered_xla, "CHUNK_ELEMENTS", 1)
  assert gathered_xla.rows_per_chunk(4, 2, 1000, 24, 64) == 1
  out = jax.jit(vertical_slash_attention_xla)(q, k, v, layout)
  want = rl.reference(q, k, v, vertical_slash_mask(layout, t, t))
  rl.assert_close(out, want, jnp.float32, seed, "one row block per chunk")
