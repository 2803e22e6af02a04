"""Online index building for the sparse patterns (MInference 1.0, exact).

The public facade of the index builders: the Vertical-Slash estimate lives
in `index_vs_estimate` and its layouts in `index_vs_layout`, Block-Sparse in
`index_bs`; A-shape needs no estimate, only per-head bounds, built here.
"""

from collections.abc import Sequence

import jax.numpy as jnp
from beartype import beartype
from jaxtyping import jaxtyped

from minference_jax.index_bs import block_sparse_indices as block_sparse_indices
from minference_jax.index_vs_estimate import (
    VerticalSlashIndices as VerticalSlashIndices,
)
from minference_jax.index_vs_estimate import (
    vertical_slash_indices as vertical_slash_indices,
)
from minference_jax.index_vs_layout import (
    vertical_slash_chain_layout as vertical_slash_chain_layout,
)
from minference_jax.index_vs_layout import (
    vertical_slash_layout as vertical_slash_layout,
)
from minference_jax.index_vs_layout import (
    LAYOUT_WORKSPACE_BYTES as LAYOUT_WORKSPACE_BYTES,
)
from minference_jax.index_vs_layout import (
    layout_builder_bytes as layout_builder_bytes,
)
from minference_jax.index_vs_layout import layout_bytes as layout_bytes
from minference_jax.index_vs_layout import (
    layout_workspace_bytes as layout_workspace_bytes,
)
from minference_jax.index_vs_layout import (
    layout_heads_per_step as layout_heads_per_step,
)
from pallas_kernels.layouts import AShapeLayout


def _check_per_head(name: str, values) -> tuple[int, ...]:
  if not isinstance(values, (list, tuple)):
    raise TypeError(
        f"{name} must be a per-head tuple of ints, got {type(values).__name__}"
    )
  for i, x in enumerate(values):
    if isinstance(x, bool) or not isinstance(x, int):
      raise TypeError(f"{name}[{i}] must be an int, got {type(x).__name__}")
    if x < 0:
      raise ValueError(f"{name}[{i}] must be >= 0, got {x}")
  return tuple(values)


@jaxtyped(typechecker=beartype)
def a_shape_layout(
    n_init: Sequence[int], n_local: Sequence[int]
) -> AShapeLayout:
  """Per-head A-shape bounds: sink keys j < n_init, local t - j < n_local.

  Args:
    n_init: static per-query-head sink sizes (MInference default 128).
    n_local: static per-query-head local window sizes (default 3968). A head
      with n_init == n_local == 0 is inactive (zero output).

  Returns:
    AShapeLayout with int32 arrays [N].

  Raises:
    TypeError: not sequences of ints.
    ValueError: negative values or different lengths.
  """
  init = _check_per_head("n_init", n_init)
  local = _check_per_head("n_local", n_local)
  if len(init) != len(local):
    raise ValueError(
        f"n_init has {len(init)} heads but n_local has {len(local)}"
    )
  if not init:
    raise ValueError("n_init and n_local need at least one head")
  return AShapeLayout(
      n_init=jnp.asarray(init, jnp.int32),
      n_local=jnp.asarray(local, jnp.int32),
  )
