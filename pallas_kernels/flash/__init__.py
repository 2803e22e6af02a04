"""Dense causal flash attention (Pallas-Triton)."""

from pallas_kernels.flash.base import Config as Config
from pallas_kernels.flash.pallas_triton import (
    flash_attention as flash_attention,
)
