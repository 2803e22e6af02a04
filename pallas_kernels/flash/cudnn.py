"""Causal dense attention through cuDNN's fused flash attention."""

import jax
import jax.numpy as jnp

CUDNN_DTYPES = (jnp.dtype(jnp.bfloat16), jnp.dtype(jnp.float16))


def _gpu_major() -> int | None:
  """Compute-capability major of the default GPU (None off GPU)."""
  if jax.default_backend() != "gpu":
    return None
  try:
    return int(str(jax.devices()[0].compute_capability).split(".")[0])
  except (AttributeError, ValueError):
    return 8


def unsupported_reason(q, k, *, q_offset: int = 0,
                       interpret: bool = False) -> str | None:
  """Why `flash_attention_cudnn` cannot run on q, k here (None if it can).

  cuDNN's flash attention needs a GPU, bfloat16/float16, D % 8 == 0 and
  D <= 128 (256 from Hopper, sm_90), and a full prefill (T == S,
  q_offset == 0); it has no interpret mode (`interpret` is ignored).
  """
  del interpret
  major = _gpu_major()
  if major is None:
    return "needs a GPU"
  if q.shape[1] != k.shape[1] or q_offset != 0:
    return (f"computes a full prefill (T == S, q_offset == 0); got T="
            f"{q.shape[1]}, S={k.shape[1]}, q_offset={q_offset}")
  d = q.shape[-1]
  if q.dtype not in CUDNN_DTYPES or d % 8 or d > (256 if major >= 9 else 128):
    return (f"takes bfloat16/float16 and D % 8 == 0, D <= "
            f"{256 if major >= 9 else 128}; got {q.dtype}, D={d}")
  return None


def flash_attention_cudnn(q, k, v):
  """`jax.nn.dot_product_attention(..., is_causal=True,
  implementation="cudnn")`: [B, T, N, D] q, [B, S, K, D] k/v (GQA), output
  in q's dtype."""
  return jax.nn.dot_product_attention(
      q, k, v, is_causal=True, implementation="cudnn"
  )
