"""Pallas GPU kernels (Triton lowering) for MInference sparse attention.

This package knows only arrays and index layouts; it imports nothing from
`minference_jax` or `models`. One package per op (`flash`, `a_shape`,
`vertical_slash`, `block_sparse`, `vs_estimate` for the Vertical-Slash
estimate's scores and `vs_chain_layout` for its O(T) layout), each with a
frozen `Config` and a Pallas-Triton kernel (A100 and newer, any shape).
The three sparse ops also have a Mosaic GPU kernel for Hopper
(`<op>/pallas_mosaic_gpu.py`, wgmma + TMA, warp-specialised, on the shared
`mosaic_gpu_core.tile_list_attention`; bf16/fp16, D in {64, 128, 256},
T % 64 == 0). Every public function takes `interpret=True`
for CPU.
"""

from pallas_kernels.a_shape import a_shape_attention as a_shape_attention
from pallas_kernels.block_sparse import (
    block_sparse_attention as block_sparse_attention,
)
from pallas_kernels.flash import flash_attention as flash_attention
from pallas_kernels.layouts import AShapeLayout as AShapeLayout
from pallas_kernels.layouts import BLOCK_SIZE as BLOCK_SIZE
from pallas_kernels.layouts import BlockSparseLayout as BlockSparseLayout
from pallas_kernels.layouts import (
    VerticalSlashChainLayout as VerticalSlashChainLayout,
)
from pallas_kernels.layouts import VerticalSlashLayout as VerticalSlashLayout
from pallas_kernels.vertical_slash import (
    vertical_slash_attention as vertical_slash_attention,
)
