"""Kernel-aware cost: the 64x64 tiles our kernels compute for a pattern.

MInference (Jiang et al., 2024), Alg. 1 measures a candidate by its kernel
FLOPs: a slash line costs whole 64x64 blocks, a vertical line 64x1 columns
(App. C.4.2). We count what our kernels run, from the layouts the index
builders produce, in units of one 64x64 tile per 64-row query block:
- A-shape: the key tiles the A-shape kernel visits (its sink tiles left of
  the window, then the window's tiles; `pallas_kernels/a_shape`);
- Vertical-Slash: the layout's 64-wide windows plus its gathered columns in
  chunks of 64 (`block_count + ceil(column_count / 64)`);
- Block-Sparse: the layout's key blocks, min(m + 1, top_k) in row block m.
Dense causal attention computes Tb (Tb + 1) / 2 tiles; "kernel density" is
a cost over that.
"""

import jax
import jax.numpy as jnp
from jaxtyping import Array, Int

from minference_jax.search.space import TILE


def num_blocks(seq_len: int) -> int:
  """Tb = ceil(T / 64)."""
  return -(-seq_len // TILE)


def dense_tiles(seq_len: int) -> int:
  """Tiles of causal dense attention: row block m reads key tiles 0..m."""
  tb = num_blocks(seq_len)
  return tb * (tb + 1) // 2


def _cdiv(a, b):
  return -(-a // b)


def a_shape_tiles(n_init, n_local, seq_len: int) -> jax.Array:
  """Tiles the A-shape kernel visits, summed over row blocks.

  Row block m (rows [r0, r_end)) visits ceil(sink_end / 64) sink tiles,
  sink_end = max(0, min(n_init, r_end - n_local)), and the window tiles
  [floor((r0 + 1 - n_local)^+ / 64), ceil(r_end / 64)). 0 / 0 is 0 tiles.

  Args:
    n_init, n_local: int arrays of any (equal or broadcastable) shape [...].
    seq_len: static T.

  Returns:
    int32 [...].
  """
  n_init = jnp.asarray(n_init, jnp.int32)[..., None]
  n_local = jnp.asarray(n_local, jnp.int32)[..., None]
  r0 = jnp.arange(num_blocks(seq_len), dtype=jnp.int32) * TILE  # [Tb]
  r_end = jnp.minimum(r0 + TILE, seq_len)
  sink_end = jnp.maximum(jnp.minimum(n_init, r_end - n_local), 0)
  lo = jnp.maximum(r0 + 1 - n_local, 0) // TILE
  hi = jnp.where(n_local > 0, _cdiv(r_end, TILE), lo)
  return jnp.sum(_cdiv(sink_end, TILE) + hi - lo, axis=-1, dtype=jnp.int32)


def block_sparse_tiles(top_k, seq_len: int) -> jax.Array:
  """Key blocks of a Block-Sparse layout: sum_m min(m + 1, top_k).

  Args:
    top_k: int array [...] (0 for an inactive head).
    seq_len: static T.

  Returns:
    int32 [...].
  """
  top_k = jnp.asarray(top_k, jnp.int32)[..., None]
  rows = jnp.arange(1, num_blocks(seq_len) + 1, dtype=jnp.int32)  # m + 1
  return jnp.sum(jnp.minimum(rows, top_k), axis=-1, dtype=jnp.int32)


def vertical_slash_tiles(
    block_count: Int[Array, "*B Tb"], column_count: Int[Array, "*B Tb"]
) -> Int[Array, "*B"]:
  """Windows plus 64-column chunks of a Vertical-Slash layout, summed over
  row blocks (the Triton and Mosaic GPU kernels gather columns 64 at a
  time)."""
  return jnp.sum(block_count + _cdiv(column_count, TILE), axis=-1,
                 dtype=jnp.int32)
