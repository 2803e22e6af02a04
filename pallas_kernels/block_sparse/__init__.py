"""Block-Sparse attention: Mosaic GPU, Pallas-Triton, XLA."""

from pallas_kernels.block_sparse.api import OP as OP
from pallas_kernels.block_sparse.api import (
    block_sparse_attention as block_sparse_attention,
)
from pallas_kernels.block_sparse.base import Config as Config
