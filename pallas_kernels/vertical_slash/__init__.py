"""Vertical-Slash sparse attention: Mosaic GPU, Pallas-Triton, XLA."""

from pallas_kernels.vertical_slash.api import OP as OP
from pallas_kernels.vertical_slash.api import (
    vertical_slash_attention as vertical_slash_attention,
)
from pallas_kernels.vertical_slash.base import Config as Config
