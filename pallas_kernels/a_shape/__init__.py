"""A-shape (sink + local window) attention: Mosaic GPU, Pallas-Triton, XLA."""

from pallas_kernels.a_shape.api import OP as OP
from pallas_kernels.a_shape.api import a_shape_attention as a_shape_attention
from pallas_kernels.a_shape.base import Config as Config
