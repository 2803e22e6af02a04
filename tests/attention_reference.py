"""The model attention seam over the float32 dense reference (tests only)."""

from pallas_kernels.reference import causal_mask, masked_attention_reference


def reference_attention(q, k, v, *, layer_idx: int, q_offset: int = 0):
  """Causal GQA attention in f32 (HIGHEST precision), for any layer.

  q: [B, T, N, D]; k, v: [B, S, K, D]; query head n reads KV head n // G;
  query t sits at position q_offset + t. Output in q's dtype.
  """
  del layer_idx  # the same for every layer
  mask = causal_mask(q.shape[1], k.shape[1], q_offset)[None, None]  # [1,1,T,S]
  return masked_attention_reference(q, k, v, mask).astype(q.dtype)
