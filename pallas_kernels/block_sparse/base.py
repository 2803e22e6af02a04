"""Configuration of the Block-Sparse attention kernel."""

import dataclasses

from pallas_kernels.common import check_launch


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class Config:
  """Launch knobs of `block_sparse_attention_triton`.

  Query and key tiles are the layout's block size (64, MInference's BLOCK_M
  and BLOCK_N).

  Attributes:
    num_warps: Triton warps per program.
    num_stages: Triton software-pipelining depth of the key-block loop.
  """

  num_warps: int = 4
  num_stages: int = 2

  def __post_init__(self):
    check_launch(self.num_warps, self.num_stages)

  @classmethod
  def get_default(cls, head_dim: int = 128) -> "Config":
    """Defaults per head dim (tuned for D = 128; see docs/kernels.md)."""
    if head_dim <= 128:
      return cls(num_warps=4, num_stages=2)
    return cls(num_warps=8, num_stages=2)
