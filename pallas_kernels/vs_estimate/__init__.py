"""Vertical-Slash estimate scores (Pallas-Triton): two passes over K."""

from pallas_kernels.vs_estimate.pallas_triton import Config as Config
from pallas_kernels.vs_estimate.pallas_triton import (
    vs_line_scores as vs_line_scores,
)
