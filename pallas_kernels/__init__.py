"""Pallas GPU kernels (Triton lowering) for MInference sparse attention.

This package knows only arrays and index layouts; it imports nothing from
`minference_jax` or `models`.
"""

from pallas_kernels.layouts import AShapeLayout as AShapeLayout
from pallas_kernels.layouts import BLOCK_SIZE as BLOCK_SIZE
from pallas_kernels.layouts import BlockSparseLayout as BlockSparseLayout
from pallas_kernels.layouts import VerticalSlashLayout as VerticalSlashLayout
