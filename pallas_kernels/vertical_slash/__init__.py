"""Vertical-Slash sparse attention (Pallas-Triton)."""

from pallas_kernels.vertical_slash.base import Config as Config
from pallas_kernels.vertical_slash.pallas_triton import (
    vertical_slash_attention as vertical_slash_attention,
)
