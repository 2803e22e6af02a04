"""Block-Sparse attention (Pallas-Triton)."""

from pallas_kernels.block_sparse.base import Config as Config
from pallas_kernels.block_sparse.pallas_triton import (
    block_sparse_attention as block_sparse_attention,
)
