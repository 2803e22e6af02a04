"""Attention kernels for MInference's sparse patterns, one package per op.

This package knows only arrays and index layouts; it imports nothing from
`minference_jax` or `models`. Each attention op is a package with one module
per implementation and one entry point that tries them in order
(`dispatch`): `flash` (dense causal: cuDNN, Pallas-Triton, XLA), `a_shape`,
`vertical_slash` and `block_sparse` (Mosaic GPU for Hopper, Pallas-Triton
for CUDA GPUs from A100, plain-JAX XLA for any device). `vs_estimate` (the
fused scores of the Vertical-Slash estimate) and `vs_chain_layout` (its
O(T) layout builder) are Pallas-Triton kernels. `layouts` is the index
contract, `reference` the dense masked float32 reference every
implementation is tested against. Every entry point takes `interpret=True`
to run the Pallas kernels on CPU.
"""

from pallas_kernels.a_shape import a_shape_attention as a_shape_attention
from pallas_kernels.block_sparse import (
    block_sparse_attention as block_sparse_attention,
)
from pallas_kernels.dispatch import NotSupportedError as NotSupportedError
from pallas_kernels.flash import flash_attention as flash_attention
from pallas_kernels.layouts import BLOCK_SIZE as BLOCK_SIZE
from pallas_kernels.layouts import AShapeLayout as AShapeLayout
from pallas_kernels.layouts import BlockSparseLayout as BlockSparseLayout
from pallas_kernels.layouts import (
    VerticalSlashChainLayout as VerticalSlashChainLayout,
)
from pallas_kernels.layouts import VerticalSlashLayout as VerticalSlashLayout
from pallas_kernels.vertical_slash import (
    vertical_slash_attention as vertical_slash_attention,
)
