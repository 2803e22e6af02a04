"""Vertical-Slash attention: one entry point over its implementations."""

from jaxtyping import Array, Float

from pallas_kernels import dispatch, finite
from pallas_kernels.layouts import VerticalSlashChainLayout, VerticalSlashLayout
from pallas_kernels.vertical_slash import pallas_mosaic_gpu, xla
from pallas_kernels.vertical_slash.pallas_triton import (
    vertical_slash_attention_triton,
)

_EXPANDED_ONLY = "takes the expanded VerticalSlashLayout, not the chain layout"


def _mosaic_gpu(q, k, v, layout, *, config, interpret):
  return pallas_mosaic_gpu.vertical_slash_attention_mgpu(
      q, k, v, layout, config=config, interpret=interpret)


def _mosaic_gpu_unsupported(q, k, v, layout, *, interpret):
  del k, v
  if isinstance(layout, VerticalSlashChainLayout):
    return _EXPANDED_ONLY
  return pallas_mosaic_gpu.unsupported_reason(q, interpret=interpret)


def _triton(q, k, v, layout, *, config, interpret):
  return vertical_slash_attention_triton(q, k, v, layout, config=config,
                                         interpret=interpret)


def _xla(q, k, v, layout, *, config, interpret):
  del interpret
  dispatch.no_config("vertical_slash_attention", dispatch.XLA, config)
  return xla.vertical_slash_attention_xla(q, k, v, layout)


def _xla_unsupported(q, k, v, layout, *, interpret):
  del q, k, v, interpret
  if isinstance(layout, VerticalSlashChainLayout):
    return _EXPANDED_ONLY
  return None


OP = dispatch.Op(
    name="vertical_slash_attention",
    implementations={
        dispatch.PALLAS_MOSAIC_GPU: dispatch.Implementation(
            _mosaic_gpu, _mosaic_gpu_unsupported),
        dispatch.PALLAS_TRITON: dispatch.Implementation(_triton),
        dispatch.XLA: dispatch.Implementation(_xla, _xla_unsupported),
    },
    default_order=dispatch.sparse_default_order,
)


def vertical_slash_attention(
    q: Float[Array, "B T N D"],
    k: Float[Array, "B S K D"],
    v: Float[Array, "B S K D"],
    layout: VerticalSlashLayout | VerticalSlashChainLayout,
    *,
    implementation: dispatch.Implementations = None,
    config=None,
    interpret: bool = False,
) -> Float[Array, "B T N D"]:
  """Vertical-Slash attention: per query block, key windows plus columns.

  MInference's Vertical-Slash pattern (Jiang et al., 2024, section 3.2):
  for each 64-row query block, the key windows [o, o + 64) at
  `block_offset[:block_count]` (merged slash lines; causal and sequence-end
  masked) and the key columns `column_index[:column_count]` (vertical
  lines); the chain layout stores the same key set in O(T) per head (only
  Pallas-Triton walks it). Heads with zero counts give zeros. Query head n
  reads KV head n // G; softmax in float32, output in q's dtype.

  Implementations ("pallas_mosaic_gpu", "pallas_triton", "xla"; see
  `dispatch.sparse_default_order` for the default order): the first that
  supports the inputs here runs. Mosaic GPU takes T <= its `MAX_T` and
  the expanded layout only; XLA the expanded layout only. Non-finite
  inputs give NaN rows as in dense attention (`pallas_kernels.finite`: a
  row is NaN when its query, or a key or value at or before its position,
  is NaN or inf).

  Args:
    q: [B, T, N, D] queries.
    k: [B, S, K, D] keys, S == T (full prefill), N % K == 0.
    v: [B, S, K, D] values.
    layout: a VerticalSlashLayout (int32 arrays [B, N, Tb, ...]) or a
      VerticalSlashChainLayout.
    implementation: a name, a sequence of names tried in order, or None
      for the default order on this device.
    config: the config of a single named Pallas implementation
      (`vertical_slash.Config` for Pallas-Triton, or the Mosaic GPU
      kernel's).
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
  dispatch.check_layout_type(OP.name, layout, (VerticalSlashLayout,
                                               VerticalSlashChainLayout))
  rows, v = finite.guard_inputs(q, k, v)
  out = OP(q, k, v, layout, implementation=implementation, config=config,
           interpret=interpret)
  return finite.mark_rows(out, rows)
