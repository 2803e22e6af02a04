"""A-shape (sink + local window) attention (Pallas-Triton)."""

from pallas_kernels.a_shape.base import Config as Config
from pallas_kernels.a_shape.pallas_triton import (
    a_shape_attention as a_shape_attention,
)
