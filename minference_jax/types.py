"""The attention protocol and the shape alphabet used across the project.

Shape alphabet (used in annotations like `Float[Array, "B T N D"]` and in
`# [B, T, N, D]` comments):
  B   batch
  T   query length;   S  key/value length (T == S in a full prefill)
  N   query heads;    K  key/value heads;  G = N // K (GQA group size)
  D   head dim
  Tb  query blocks = ceil(T / 64);  Sb key blocks = ceil(S / 64)
  NV  vertical (key column) budget; NS slash (diagonal) budget
  KB  block-sparse top-k budget

GQA: query head n reads key/value head n // G. K/V are never repeated in
memory.

Causality: query t sits at absolute position q_offset + t and may read keys
j <= q_offset + t.
"""

from typing import Protocol, runtime_checkable

from jaxtyping import Array, Float

# A finite mask value (not -inf) so that fully masked rows never produce NaN.
DEFAULT_MASK_VALUE = -0.7 * float(3.4028235e38)


@runtime_checkable
class AttentionFn(Protocol):
  """Causal multi-head attention with GQA, pluggable into every model.

  Args:
    q: [B, T, N, D] queries (RoPE already applied).
    k: [B, S, K, D] keys (RoPE already applied), N % K == 0.
    v: [B, S, K, D] values.
    layer_idx: static layer index, selects the layer's pattern config.
    q_offset: static absolute position of q[:, 0] (0 for a full prefill).

  Returns:
    [B, T, N, D] attention output in q's dtype.
  """

  def __call__(
      self,
      q: Float[Array, "B T N D"],
      k: Float[Array, "B S K D"],
      v: Float[Array, "B S K D"],
      *,
      layer_idx: int,
      q_offset: int = 0,
  ) -> Float[Array, "B T N D"]:
    ...


def check_attention_fits(attention, *, num_layers: int,
                         num_heads: int) -> None:
  """Checks an attention against a model's geometry before any work.

  An AttentionFn may define `check_model(num_layers=..., num_heads=...)`
  raising ValueError when it cannot serve that model (e.g. a per-layer,
  per-head pattern config of another shape); one without it serves any.
  Models call this when the attention is attached and at the first call.

  Raises:
    ValueError: whatever `attention.check_model` raises.
  """
  check = getattr(attention, "check_model", None)
  if check is not None:
    check(num_layers=num_layers, num_heads=num_heads)
