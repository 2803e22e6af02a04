"""Head slicing of attention callables and UlyssesAttention's checks (one
device; the multi-device runs are tests/models/sharded_cases.py and
tests/experiments/sharded_replay_cases.py)."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import AxisType, Mesh

from minference_jax import AShape, BlockSparse, Dense, PatternConfig
from minference_jax import VerticalSlash
from minference_jax.attention import (
    DenseAttention,
    MInferenceAttention,
    make_attention,
)
from minference_jax.parallel import (
    HeadBlockSliceable,
    UlyssesAttention,
    attention_for_heads,
)

LAYER0 = (AShape(4, 16), AShape(4, 16), VerticalSlash(8, 8), Dense())
LAYER1 = (Dense(), BlockSparse(2), BlockSparse(2), BlockSparse(2))
CONFIG = PatternConfig(layers=(LAYER0, LAYER1))


def test_minference_attention_is_sliced_to_a_layers_heads():
  attn = make_attention(CONFIG, backend="xla")
  assert isinstance(attn, MInferenceAttention)
  mixed = attention_for_heads(attn, 1, 3, layer_idx=0)
  assert mixed.pattern_config.layers == ((AShape(4, 16),
                                          VerticalSlash(8, 8)),) * 2
  assert mixed.backend == attn.backend and mixed.dense == attn.dense
  # One pattern over the range: the config becomes that pattern.
  uniform = attention_for_heads(attn, 1, 4, layer_idx=1)
  assert uniform.pattern_config == BlockSparse(2)
  assert uniform == attention_for_heads(attn, 2, 4, layer_idx=1)
  with pytest.raises(ValueError, match="layer_idx=2 out of range"):
    attention_for_heads(attn, 0, 2, layer_idx=2)


def test_head_independent_and_unknown_attentions():
  dense = DenseAttention(implementation="xla")
  assert attention_for_heads(dense, 0, 2, layer_idx=5) is dense
  one = make_attention(VerticalSlash(8, 8), backend="xla")
  assert attention_for_heads(one, 2, 4, layer_idx=0) is one

  @dataclasses.dataclass(frozen=True)
  class Opaque:
    def __call__(self, q, k, v, *, layer_idx, q_offset=0):
      return q

  with pytest.raises(TypeError, match="for_heads"):
    attention_for_heads(Opaque(), 0, 1, layer_idx=0)

  @dataclasses.dataclass(frozen=True)
  class Sliceable(Opaque):
    start: int = 0

    def for_heads(self, start, stop):
      return Sliceable(start)

  assert attention_for_heads(Sliceable(), 3, 4, layer_idx=0) == Sliceable(3)


def _mesh() -> Mesh:
  devices = np.asarray(jax.devices()[:1], dtype=object).reshape(1, 1, 1)
  return Mesh(devices, ("data", "sequence", "tensor"),
              axis_types=(AxisType.Auto,) * 3)


def test_ulysses_attention_checks_its_axes_and_heads():
  mesh = _mesh()
  with pytest.raises(ValueError, match="seq_axis='context' is not an axis"):
    UlyssesAttention(DenseAttention(), mesh, seq_axis="context")
  with pytest.raises(ValueError, match="kv_head_axis must be head_axis"):
    UlyssesAttention(DenseAttention(), mesh, kv_head_axis="sequence")
  with pytest.raises(ValueError, match="must differ"):
    UlyssesAttention(DenseAttention(), mesh, head_axis="sequence",
                     kv_head_axis="sequence")
  uly = UlyssesAttention(DenseAttention(), mesh)
  assert uly.head_parallel == 1
  uly.check_heads(32, 8)
  with pytest.raises(ValueError, match=r"q must be \[B, T, N, D\]"):
    uly(np.zeros((2, 3)), np.zeros((2, 3)), np.zeros((2, 3)), layer_idx=0)


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class _PerHeadScale:
  """Dense attention times a per-query-head factor held in an array [N]."""

  scale: jax.Array

  def for_head_block(self, start, size):
    return _PerHeadScale(jax.lax.dynamic_slice_in_dim(self.scale, start,
                                                      size))

  def __call__(self, q, k, v, *, layer_idx, q_offset=0):
    o = DenseAttention(implementation="xla")(q, k, v, layer_idx=layer_idx,
                                             q_offset=q_offset)
    return o * self.scale[None, None, :, None]


def test_ulysses_attention_is_a_pytree_of_the_wrapped_attentions_arrays():
  # The arrays are the wrapper's leaves (traced step arguments in a
  # layerwise prefill); unflattened with others, the wrapper keeps its
  # mesh and calls the head-block restriction with a traced start.
  mesh = _mesh()
  scale = jnp.arange(1.0, 5.0)
  uly = UlyssesAttention(_PerHeadScale(scale), mesh)
  assert isinstance(uly.attention, HeadBlockSliceable)
  leaves, treedef = jax.tree.flatten(uly)
  assert len(leaves) == 1 and leaves[0] is scale
  keys = jax.random.split(jax.random.key(0), 3)
  q = jax.random.normal(keys[0], (1, 32, 4, 8))
  k = jax.random.normal(keys[1], (1, 32, 2, 8))
  v = jax.random.normal(keys[2], (1, 32, 2, 8))

  def run(scale, q, k, v):
    rebuilt = jax.tree.unflatten(treedef, [scale])
    assert rebuilt.mesh is mesh
    return rebuilt(q, k, v, layer_idx=0)

  other = jnp.asarray([2.0, 0.5, -1.0, 3.0])
  got = jax.jit(run)(other, q, k, v)
  want = _PerHeadScale(other)(q, k, v, layer_idx=0)
  np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=1e-6,
                             atol=1e-6)
