"""Dense causal attention: cuDNN, Pallas-Triton, XLA."""

from pallas_kernels.flash.api import OP as OP
from pallas_kernels.flash.api import flash_attention as flash_attention
from pallas_kernels.flash.base import Config as Config
