"""Causal dense attention: one entry point over its implementations."""

import jax
import numpy as np
from jaxtyping import Array, Float

from pallas_kernels import dispatch, finite
from pallas_kernels.flash import cudnn, xla
from pallas_kernels.flash.pallas_triton import flash_attention_triton


def default_order(*, interpret: bool) -> tuple[str, ...]:
  """The order when no implementation is named: interpret mode (CPU
  tests) Pallas-Triton, then XLA; on a GPU cuDNN where it takes the inputs,
  then Pallas-Triton, then XLA; elsewhere XLA."""
  if interpret:
    return (dispatch.PALLAS_TRITON, dispatch.XLA)
  if jax.default_backend() == "gpu":
    return (dispatch.CUDNN, dispatch.PALLAS_TRITON, dispatch.XLA)
  return (dispatch.XLA,)


def _not_prefill(q, k, q_offset) -> str | None:
  if q.shape[1] != k.shape[1] or q_offset != 0:
    return (f"computes a full prefill (T == S, q_offset == 0); got T="
            f"{q.shape[1]}, S={k.shape[1]}, q_offset={q_offset}")
  return None


def _cudnn(q, k, v, *, q_offset, config, interpret):
  del q_offset, interpret
  dispatch.no_config("flash_attention", dispatch.CUDNN, config)
  return cudnn.flash_attention_cudnn(q, k, v)


def _cudnn_unsupported(q, k, v, *, q_offset, interpret):
  del v
  return cudnn.unsupported_reason(q, k, q_offset=q_offset,
                                  interpret=interpret)


def _triton(q, k, v, *, q_offset, config, interpret):
  del q_offset  # a full prefill: checked by the kernel (T == S)
  return flash_attention_triton(q, k, v, config=config, interpret=interpret)


def _triton_unsupported(q, k, v, *, q_offset, interpret):
  del v, interpret
  return _not_prefill(q, k, q_offset)


def _xla(q, k, v, *, q_offset, config, interpret):
  del interpret
  dispatch.no_config("flash_attention", dispatch.XLA, config)
  return xla.flash_attention_xla(q, k, v, q_offset=q_offset)


OP = dispatch.Op(
    name="flash_attention",
    implementations={
        dispatch.CUDNN: dispatch.Implementation(_cudnn, _cudnn_unsupported),
        dispatch.PALLAS_TRITON: dispatch.Implementation(
            _triton, _triton_unsupported),
        dispatch.XLA: dispatch.Implementation(_xla),
    },
    default_order=default_order,
)


def flash_attention(
    q: Float[Array, "B T N D"],
    k: Float[Array, "B S K D"],
    v: Float[Array, "B S K D"],
    *,
    q_offset: int = 0,
    implementation: dispatch.Implementations = None,
    config=None,
    interpret: bool = False,
) -> Float[Array, "B T N D"]:
  """Causal dense attention (GQA without repeating K/V).

  FlashAttention-2's tiling and online softmax (Dao, 2023): query t sits at
  position q_offset + t and reads keys j <= q_offset + t; query head n reads
  KV head n // G; float32 accumulation, output in q's dtype.

  Implementations: "cudnn" (`jax.nn.dot_product_attention` on cuDNN: a GPU,
  bfloat16/float16, D % 8 == 0, D <= 128 or 256 on Hopper, full prefill),
  "pallas_triton" (full prefill), "xla" (chunked; also decode and chunked
  prefill steps). See `default_order`; the first that supports the inputs
  here runs. Non-finite inputs give NaN rows as in
  `jax.nn.dot_product_attention` (`pallas_kernels.finite`: a row is NaN
  when its query, or a key or value at or before its position, is NaN or
  inf).

  Args:
    q: [B, T, N, D] queries.
    k: [B, S, K, D] keys, N % K == 0.
    v: [B, S, K, D] values.
    q_offset: static position of q[:, 0] (T < S for decode and chunked
      prefill steps).
    implementation: a name, a sequence of names tried in order, or None
      for the default order on this device.
    config: the config of the Pallas-Triton kernel (`flash.Config`) when it
      is the single named implementation.
    interpret: run Pallas kernels in interpret mode (CPU tests).

  Returns:
    [B, T, N, D] in q's dtype.

  Raises:
    ValueError: on an unknown implementation, a config with several,
      q_offset + T > S, or inputs the implementation rejects.
    TypeError: non-array or non-float inputs, a non-int q_offset.
    NotSupportedError: when none of several implementations runs here.
  """
  q, k, v = dispatch.entry_arrays(OP.name, q, k, v)
  if isinstance(q_offset, bool) or not isinstance(q_offset,
                                                  (int, np.integer)):
    raise TypeError(f"flash_attention: q_offset must be a static int, got"
                    f" {q_offset!r}")
  q_offset = int(q_offset)
  if q_offset < 0 or q_offset + q.shape[1] > k.shape[1]:
    raise ValueError(
        f"flash_attention: q_offset={q_offset} must be >= 0 with q_offset +"
        f" T <= S; got T={q.shape[1]}, S={k.shape[1]}")
  rows, v = finite.guard_inputs(q, k, v, q_offset=q_offset)
  out = OP(q, k, v, q_offset=q_offset, implementation=implementation,
           config=config, interpret=interpret)
  return finite.mark_rows(out, rows)
