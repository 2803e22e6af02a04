"""Block-Sparse attention: one entry point over its implementations."""

from jaxtyping import Array, Float

from pallas_kernels import dispatch, finite
from pallas_kernels.block_sparse import pallas_mosaic_gpu, xla
from pallas_kernels.block_sparse.pallas_triton import (
    block_sparse_attention_triton,
)
from pallas_kernels.layouts import BlockSparseLayout


def _mosaic_gpu(q, k, v, layout, *, config, interpret):
  return pallas_mosaic_gpu.block_sparse_attention_mgpu(
      q, k, v, layout, config=config, interpret=interpret)


def _mosaic_gpu_unsupported(q, k, v, layout, *, interpret):
  del k, v, layout
  return pallas_mosaic_gpu.unsupported_reason(q, interpret=interpret)


def _triton(q, k, v, layout, *, config, interpret):
  return block_sparse_attention_triton(q, k, v, layout, config=config,
                                       interpret=interpret)


def _xla(q, k, v, layout, *, config, interpret):
  del interpret
  dispatch.no_config("block_sparse_attention", dispatch.XLA, config)
  return xla.block_sparse_attention_xla(q, k, v, layout)


OP = dispatch.Op(
    name="block_sparse_attention",
    implementations={
        dispatch.PALLAS_MOSAIC_GPU: dispatch.Implementation(
            _mosaic_gpu, _mosaic_gpu_unsupported),
        dispatch.PALLAS_TRITON: dispatch.Implementation(_triton),
        dispatch.XLA: dispatch.Implementation(_xla),
    },
    default_order=dispatch.sparse_default_order,
)


def block_sparse_attention(
    q: Float[Array, "B T N D"],
    k: Float[Array, "B S K D"],
    v: Float[Array, "B S K D"],
    layout: BlockSparseLayout,
    *,
    implementation: dispatch.Implementations = None,
    config=None,
    interpret: bool = False,
) -> Float[Array, "B T N D"]:
  """Block-Sparse attention over the layout's selected 64 x 64 key blocks.

  MInference's Block-Sparse pattern (Jiang et al., 2024), the block-sparse
  FlashAttention of PIT (Zheng et al., 2023): query block m of head n reads
  the key blocks `block_index[b, n, m, :block_count[b, n, m]]`, causal on
  the diagonal block; heads with zero counts give zeros. Query head n reads
  KV head n // G; softmax in float32, output in q's dtype.

  Implementations ("pallas_mosaic_gpu", "pallas_triton", "xla"; see
  `dispatch.sparse_default_order` for the default order): the first that
  supports the inputs here runs. Non-finite inputs give NaN rows as in
  dense attention (`pallas_kernels.finite`: a row is NaN when its query,
  or a key or value at or before its position, is NaN or inf).

  Args:
    q: [B, T, N, D] queries.
    k: [B, S, K, D] keys, S == T (full prefill), N % K == 0.
    v: [B, S, K, D] values.
    layout: int32 arrays [B, N, Tb, ...].
    implementation: a name, a sequence of names tried in order, or None
      for the default order on this device.
    config: the config of a single named Pallas implementation
      (`block_sparse.Config` for Pallas-Triton, or the Mosaic GPU kernel's).
    interpret: run Pallas kernels in interpret mode (CPU tests).

  Returns:
    [B, T, N, D] in q's dtype.

  Raises:
    ValueError: on an unknown implementation, a config with several, or
      inputs the implementation rejects.
    TypeError: non-array or non-float inputs, or a layout of another op.
    NotSupportedError: when none of several implementations runs here.
  """
  q, k, v = dispatch.entry_arrays(OP.name, q, k, v)
  dispatch.check_layout_type(OP.name, layout, (BlockSparseLayout,))
  rows, v = finite.guard_inputs(q, k, v)
  out = OP(q, k, v, layout, implementation=implementation, config=config,
           interpret=interpret)
  return finite.mark_rows(out, rows)
