"""minference_jax: MInference-style dynamic sparse attention in JAX."""

from minference_jax.patterns import AShape as AShape
from minference_jax.patterns import BlockSparse as BlockSparse
from minference_jax.patterns import Dense as Dense
from minference_jax.patterns import Pattern as Pattern
from minference_jax.patterns import PatternKind as PatternKind
from minference_jax.patterns import VerticalSlash as VerticalSlash
from minference_jax.types import AttentionFn as AttentionFn
