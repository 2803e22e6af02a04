"""Per-device memory of a sharded prefill: one device equals models.memory;
weights and the KV cache split as the rules say."""

import pytest

from models import MeshConfig, ModelConfig, estimate_prefill_memory
from models.sharded_memory import (
    estimate_sharded_prefill_memory,
    sharded_memory_table,
    sharded_weight_bytes,
)


@pytest.mark.parametrize("seq_len", [131072, 1048576])
@pytest.mark.parametrize("keep", [False, True])
@pytest.mark.parametrize("chunk", [4096, None])
def test_one_device_mesh_equals_the_single_device_estimate(seq_len, keep,
                                                           chunk):
  config = ModelConfig.llama3_8b()
  one = estimate_prefill_memory(config, seq_len, keep_kv_cache=keep,
                                chunk_size=chunk)
  mesh = estimate_sharded_prefill_memory(config, seq_len, MeshConfig(),
                                         keep_kv_cache=keep, chunk_size=chunk)
  for field in ("weights", "kv_cache", "activations", "attention_workspace",
                "logits"):
    assert getattr(mesh, field) == getattr(one, field), field


def test_weights_and_cache_split_over_the_mesh():
  config = ModelConfig.llama3_70b()
  total = config.num_params() * 2
  norms = (2 * config.num_layers + 1) * config.hidden_size * 2
  # tensor=4: every matrix split four ways, the RMSNorm gains replicated.
  assert sharded_weight_bytes(config, MeshConfig(sequence=2, tensor=4)) == (
      (total - norms) // 4 + norms)
  assert sharded_weight_bytes(config, MeshConfig(sequence=8)) == total
  e = estimate_sharded_prefill_memory(config, 1 << 20,
                                      MeshConfig(sequence=2, tensor=4),
                                      keep_kv_cache=True)
  assert e.kv_cache == (1 << 20) * config.kv_bytes_per_token() // 8
  # More sequence devices: fewer activation bytes per device.
  wide = estimate_sharded_prefill_memory(config, 1 << 20,
                                         MeshConfig(sequence=8))
  narrow = estimate_sharded_prefill_memory(config, 1 << 20,
                                           MeshConfig(sequence=2))
  assert wide.activations < narrow.activations
  table = sharded_memory_table(config, 1 << 20, [MeshConfig(tensor=8)])
  assert table.count("\n") == 3
  with pytest.raises(ValueError, match="does not split over 8 sequence"):
    estimate_sharded_prefill_memory(config, 1001, MeshConfig(sequence=8))
