"""models/memory.py against XLA's own buffer assignment (CPU, abstract
shapes: nothing of the studied size is allocated).

The estimate is an accounting of what the model code keeps alive; these
tests hold it to within a stated tolerance of what XLA actually assigns.
"""

import dataclasses

import jax
import jax.numpy as jnp
import pytest

from minference_jax.attention import DenseAttention
from minference_jax.index import VerticalSlashIndices, vertical_slash_layout
from models import ModelConfig, forward_jit, memory, param_shapes

GIB = 1024**3


def _xla(compiled, param_bytes=0):
  m = compiled.memory_analysis()
  return (m.argument_size_in_bytes - param_bytes + m.temp_size_in_bytes
          + m.output_size_in_bytes - m.alias_size_in_bytes)


@pytest.mark.parametrize("nv", [1000, 3500])
def test_vs_layout_workspace_tracks_xla(nv):
  config = ModelConfig.llama3_8b()
  t, ns, n = 262144, 6096, config.num_heads
  spec = lambda *s: jax.ShapeDtypeStruct(s, jnp.int32)
  ind = VerticalSlashIndices(spec(1, n, nv), spec(1, n), spec(1, n, ns),
                             spec(1, n))
  compiled = jax.jit(lambda i: vertical_slash_layout(i, t)).lower(
      ind).compile()
  m = compiled.memory_analysis()
  xla = m.output_size_in_bytes + m.temp_size_in_bytes
  est = memory.vs_layout_workspace(config, t, nv, ns)
  assert abs(est - xla) / xla < 0.15, (est / GIB, xla / GIB)


def test_prefill_estimate_tracks_xla_for_a_chunked_model():
  config = ModelConfig.tiny("llama", hidden_size=512, intermediate_size=2048,
                            num_layers=1, num_heads=8, num_kv_heads=2,
                            head_dim=64, vocab_size=1000)
  config = dataclasses.replace(
      config, rope=dataclasses.replace(config.rope, rotary_dim=64))
  t, chunk = 32768, 4096
  params = param_shapes(config, jnp.bfloat16)
  tokens = jax.ShapeDtypeStruct((1, t), jnp.int32)
  compiled = forward_jit.lower(
      params, tokens, None, None, None, config=config,
      attention=DenseAttention(implementation="xla"), q_offset=0, logits_for="last",
      chunk_size=chunk, rope_seq_len=None).compile()
  weights = config.num_params() * 2
  xla = _xla(compiled, weights)
  est = memory.estimate_prefill_memory(
      config, t, chunk_size=chunk,
      attention_workspace=memory.attention_workspace(config, t, "dense_xla"))
  got = est.total - est.weights
  assert abs(got - xla) / xla < 0.3, (got / GIB, xla / GIB)


def test_attention_workspace_kinds():
  config = ModelConfig.llama3_8b()
  t = 1 << 20
  dense = memory.attention_workspace(config, t, "dense_cudnn")
  assert dense == 2 * 32 * t * 4  # float32 softmax statistics
  assert memory.attention_workspace(config, t, "dense_xla") > dense
  pallas = memory.attention_workspace(config, t, "vertical_slash")
  xla = memory.attention_workspace(config, t, "vertical_slash", scores="xla")
  layout = memory.vs_layout_workspace(config, t, 1000, 6096)
  assert pallas == 2 * 32 * t * 4 + layout
  assert xla == memory.vs_estimate_workspace(config, t) + layout
  # Row-block budgets are capped at T.
  assert (memory.vs_layout_workspace(config, 4096, 10**6, 10**6)
          == memory.vs_layout_workspace(config, 4096, 4096, 4096))
  with pytest.raises(ValueError, match="unknown attention kind"):
    memory.attention_workspace(config, t, "flash")


def test_host_cache_and_phases():
  config = ModelConfig.llama3_8b()
  t = 1 << 20
  host = memory.estimate_prefill_memory(config, t, keep_kv_cache=True,
                                        kv_cache_on_host=True)
  bare = memory.estimate_prefill_memory(config, t)
  dev = memory.estimate_prefill_memory(config, t, keep_kv_cache=True)
  assert host.kv_cache == 0 and host.host_kv_cache == 128 * GIB
  assert host.total == bare.total and dev.total - bare.total == 128 * GIB
  # Whichever phase sets the peak, total = weights + peak + logits.
  for ws in (0, 60 * GIB):
    e = memory.estimate_prefill_memory(config, t, chunk_size=65536,
                                       attention_workspace=ws)
    assert e.attention_workspace == ws
    x = t * 4096 * 2
    peak = e.activations + ws
    # The MLP phase: x (updated in place chunk by chunk), o, one chunk.
    assert peak >= 2 * x + 65536 * 14336 * 2 * 3
    assert peak >= 3.5 * x + ws  # x, q, o, k and v, and the workspace
  short = memory.estimate_prefill_memory(config, 4096, chunk_size=65536,
                                         attention_workspace=0)
  unchunked = memory.estimate_prefill_memory(config, 4096, chunk_size=None,
                                             attention_workspace=0)
  assert short.activations == unchunked.activations  # chunk >= T
