"""A-shape attention: one entry point over its implementations."""

from jaxtyping import Array, Float

from pallas_kernels import dispatch, finite
from pallas_kernels.a_shape import pallas_mosaic_gpu, xla
from pallas_kernels.a_shape.pallas_triton import a_shape_attention_triton
from pallas_kernels.layouts import AShapeLayout


def _mosaic_gpu(q, k, v, layout, *, config, interpret):
  return pallas_mosaic_gpu.a_shape_attention_mgpu(
      q, k, v, layout, config=config, interpret=interpret)


def _mosaic_gpu_unsupported(q, k, v, layout, *, interpret):
  del k, v, layout
  return pallas_mosaic_gpu.unsupported_reason(q, interpret=interpret)


def _triton(q, k, v, layout, *, config, interpret):
  return a_shape_attention_triton(q, k, v, layout, config=config,
                                  interpret=interpret)


def _xla(q, k, v, layout, *, config, interpret):
  del interpret
  config = config or xla.Config()
  return xla.a_shape_attention_xla(q, k, v, layout,
                                   max_init=config.max_init,
                                   max_local=config.max_local)


OP = dispatch.Op(
    name="a_shape_attention",
    implementations={
        dispatch.PALLAS_MOSAIC_GPU: dispatch.Implementation(
            _mosaic_gpu, _mosaic_gpu_unsupported),
        dispatch.PALLAS_TRITON: dispatch.Implementation(_triton),
        dispatch.XLA: dispatch.Implementation(_xla),
    },
    default_order=dispatch.sparse_default_order,
)


def a_shape_attention(
    q: Float[Array, "B T N D"],
    k: Float[Array, "B S K D"],
    v: Float[Array, "B S K D"],
    layout: AShapeLayout,
    *,
    implementation: dispatch.Implementations = None,
    config=None,
    interpret: bool = False,
) -> Float[Array, "B T N D"]:
  """A-shape attention: sink keys plus a causal local window, per head.

  The A-shape pattern of MInference (Jiang et al., 2024), i.e. StreamingLLM's
  attention sinks plus a sliding window (Xiao et al., 2024): query row t of
  head n reads the keys j <= t with j < n_init[n] or t - j < n_local[n],
  each once; a head with n_init = n_local = 0 gives zeros. Query head n
  reads KV head n // G; softmax in float32, output in q's dtype.

  Implementations ("pallas_mosaic_gpu", "pallas_triton", "xla"; see
  `dispatch.sparse_default_order` for the default order): the first that
  supports the inputs here runs. Non-finite inputs give NaN rows as in
  dense attention (`pallas_kernels.finite`: a row is NaN when its query,
  or a key or value at or before its position, is NaN or inf).

  Args:
    q: [B, T, N, D] queries.
    k: [B, S, K, D] keys, S == T (full prefill), N % K == 0.
    v: [B, S, K, D] values.
    layout: per-head int32 `n_init` [N] and `n_local` [N].
    implementation: a name, a sequence of names tried in order, or None
      for the default order on this device.
    config: the config of a single named implementation: `a_shape.Config`
      (Pallas-Triton tiles), the Mosaic GPU kernel's config, or
      `a_shape.xla.Config` (static bounds of n_init / n_local, needed when
      the layout is traced).
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
  dispatch.check_layout_type(OP.name, layout, (AShapeLayout,))
  rows, v = finite.guard_inputs(q, k, v)
  out = OP(q, k, v, layout, implementation=implementation, config=config,
           interpret=interpret)
  return finite.mark_rows(out, rows)
