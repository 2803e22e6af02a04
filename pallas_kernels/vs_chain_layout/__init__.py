"""Vertical-Slash chain layout builder (Pallas-Triton): two passes, O(T)."""

from pallas_kernels.vs_chain_layout.pallas_triton import Config as Config
from pallas_kernels.vs_chain_layout.pallas_triton import (
    vs_chain_layout as vs_chain_layout,
)
