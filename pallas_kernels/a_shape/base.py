"""Configuration of the A-shape (sink + local window) attention kernel."""

import dataclasses

from pallas_kernels.common import check_block, check_launch


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class Config:
  """Tile sizes and Triton launch knobs of `a_shape_attention`.

  Attributes:
    block_q: query rows per program (power of two >= 16).
    block_k: key rows per inner step (power of two >= 16).
    num_warps: Triton warps per program.
    num_stages: Triton software-pipelining depth of the key loops.
  """

  block_q: int = 64
  block_k: int = 64
  num_warps: int = 4
  num_stages: int = 3

  def __post_init__(self):
    check_block("block_q", self.block_q)
    check_block("block_k", self.block_k)
    check_launch(self.num_warps, self.num_stages)

  @classmethod
  def get_default(cls, head_dim: int = 128) -> "Config":
    """Defaults per head dim (H200-tuned for D = 128; see docs/kernels.md)."""
    if head_dim <= 128:
      return cls(block_q=64, block_k=64, num_warps=4, num_stages=3)
    return cls(block_q=64, block_k=64, num_warps=8, num_stages=2)
