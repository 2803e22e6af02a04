"""Configuration of the dense causal flash-attention kernel."""

import dataclasses

from pallas_kernels.common import TileConfig


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class Config(TileConfig):
  """Tile sizes and Triton launch knobs of `flash_attention_triton`
  (TileConfig)."""

  block_q: int = 128
  num_warps: int = 8

  @classmethod
  def get_default(cls, head_dim: int = 128) -> "Config":
    """Defaults per head dim (tuned for D = 128; see docs/kernels.md)."""
    if head_dim <= 64:
      return cls(block_q=128, block_k=64, num_warps=4, num_stages=3)
    if head_dim <= 128:
      return cls(block_q=128, block_k=64, num_warps=8, num_stages=3)
    return cls(block_q=64, block_k=64, num_warps=8, num_stages=2)
