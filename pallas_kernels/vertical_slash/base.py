"""Configuration of the Vertical-Slash sparse attention kernel."""

import dataclasses

from pallas_kernels.common import check_block, check_launch


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class Config:
  """Launch knobs of `vertical_slash_attention_triton`.

  The query block is the layout's block size (64 rows, MInference's BLOCK_M);
  key windows are block-size wide by construction of the layout.

  Attributes:
    block_c: key columns gathered per inner step of the column phase.
    num_warps: Triton warps per program.
    num_stages: Triton software-pipelining depth of the key loops.
  """

  block_c: int = 64
  num_warps: int = 4
  num_stages: int = 2

  def __post_init__(self):
    check_block("block_c", self.block_c)
    check_launch(self.num_warps, self.num_stages)

  @classmethod
  def get_default(cls, head_dim: int = 128) -> "Config":
    """Defaults per head dim (tuned for D = 128; see docs/kernels.md)."""
    if head_dim <= 128:
      return cls(block_c=64, num_warps=4, num_stages=2)
    return cls(block_c=64, num_warps=8, num_stages=2)
