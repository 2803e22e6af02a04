"""minference_jax: MInference-style dynamic sparse attention in JAX."""

from minference_jax.attention import (
    DEFAULT_DENSE_THRESHOLD as DEFAULT_DENSE_THRESHOLD,
)
from minference_jax.attention import DenseAttention as DenseAttention
from minference_jax.attention import MInferenceAttention as MInferenceAttention
from minference_jax.attention import available_backends as available_backends
from minference_jax.attention import make_attention as make_attention
from minference_jax.attention import register_backend as register_backend
from minference_jax.pattern_config import PatternConfig as PatternConfig
from minference_jax.pattern_table import (
    PatternTableAttention as PatternTableAttention,
)
from minference_jax.pattern_table import pattern_tables as pattern_tables
from minference_jax.patterns import AShape as AShape
from minference_jax.patterns import BlockSparse as BlockSparse
from minference_jax.patterns import Dense as Dense
from minference_jax.patterns import Pattern as Pattern
from minference_jax.patterns import PatternKind as PatternKind
from minference_jax.patterns import VerticalSlash as VerticalSlash
from minference_jax.types import AttentionFn as AttentionFn
from pallas_kernels.layouts import AShapeLayout as AShapeLayout
from pallas_kernels.layouts import BlockSparseLayout as BlockSparseLayout
from pallas_kernels.layouts import (
    VerticalSlashChainLayout as VerticalSlashChainLayout,
)
from pallas_kernels.layouts import VerticalSlashLayout as VerticalSlashLayout
