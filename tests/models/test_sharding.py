"""Logical axes, rules and mesh configs; the 8-device cases in a subprocess.

The multi-device tests (tests/models/sharded_cases.py) need 8 host CPU
devices, which XLA fixes when JAX starts; they run in a subprocess so that
the rest of the suite keeps its single device.
"""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import linen as nn

from models import (
    LOGICAL_AXES,
    Decoder,
    MeshConfig,
    ModelConfig,
    param_axes,
    param_shapes,
)
from models.decoder import from_linen_params
from models.layers import seq_chunked
from models.partitioning import constrain
from models.weights import mapped_shapes
from multi_device import run_on_8_host_devices
from paths import TESTS_DIR

ARCHS = ("llama", "qwen2", "phi3", "glm", "chatglm")


@pytest.mark.slow  # about 70 s of CPU (18 cases, ~35 small XLA compiles)
def test_sharded_cases_pass_on_8_host_devices():
  run_on_8_host_devices(TESTS_DIR / "models" / "sharded_cases.py")


def test_rules_name_known_logical_and_mesh_axes():
  with pytest.raises(ValueError, match="unknown logical axis 'head'"):
    MeshConfig(sequence=2, rules=(("head", "tensor"),))
  with pytest.raises(ValueError, match="unknown mesh axis 'model'"):
    MeshConfig(rules=(("heads", "model"),))
  with pytest.raises(ValueError, match="'mlp' appears twice"):
    MeshConfig(rules=(("mlp", "tensor"), ("mlp", None)))
  with pytest.raises(ValueError, match="mesh size sequence must be"):
    MeshConfig(sequence=0)
  with pytest.raises(ValueError, match="unknown logical axis 'sequence'"):
    constrain(jnp.zeros((2, 3)), ("batch", "sequence"), None)


def test_mesh_config_round_trips_through_a_plain_mapping():
  config = MeshConfig(sequence=4, tensor=2).with_rule("embed", ["sequence"])
  assert MeshConfig.from_dict(config.to_dict()) == config
  assert MeshConfig.from_dict({"sequence": 8}) == MeshConfig(sequence=8)
  with pytest.raises(ValueError, match=r"unknown mesh config keys \['seq'\]"):
    MeshConfig.from_dict({"seq": 8})
  with pytest.raises(ValueError, match="unknown logical axis 'tokens'"):
    MeshConfig.from_dict({"rules": [["tokens", "sequence"]]})


def test_mesh_config_checks_heads_and_resolves_the_kv_rule():
  tiny = ModelConfig.tiny("llama")  # N=4, K=2
  with pytest.raises(ValueError, match="num_heads=4 is not divisible by the "
                     "head-parallel degree 8"):
    MeshConfig(sequence=8).for_model(tiny)
  odd_kv = dataclasses.replace(tiny, num_heads=24, num_kv_heads=3)
  with pytest.raises(ValueError, match="num_kv_heads=3 and the head-parallel "
                     "degree 8"):
    MeshConfig(sequence=2, tensor=4).for_model(odd_kv)
  with pytest.raises(ValueError, match="'seq' and 'heads' map to the same"):
    MeshConfig(sequence=2).with_rule("heads", "sequence").for_model(tiny)
  # 2 KV heads do not split over 4 tensor devices: replicated projections.
  wide = dataclasses.replace(tiny, num_heads=8)
  resolved = MeshConfig(sequence=2, tensor=4).for_model(wide)
  assert resolved.mesh_axes("kv_heads") is None
  assert resolved.mesh_axes("heads") == "tensor"
  kept = MeshConfig(tensor=2).for_model(wide)
  assert kept.mesh_axes("kv_heads") == "tensor"
  with pytest.raises(ValueError, match="needs 8 devices, got 1"):
    MeshConfig(sequence=8).make_mesh(jax.devices()[:1])


@pytest.mark.parametrize("arch", ARCHS)
def test_flax_params_match_the_mapping_table_and_carry_logical_axes(arch):
  config = ModelConfig.tiny(arch)
  shapes = param_shapes(config, jnp.float32)
  assert jax.tree.map(lambda s: s.shape, shapes) == mapped_shapes(config)
  axes = param_axes(config)
  for path, shape in jax.tree_util.tree_flatten_with_path(shapes)[0]:
    node = axes
    for key in path:
      node = node[getattr(key, "key", getattr(key, "idx", None))]
    assert len(node) == len(shape.shape), (path, node)
    assert set(node) <= set(LOGICAL_AXES), (path, node)
  layer = axes["layers"][0]
  assert layer["wq"] == ("embed", "heads")
  assert layer["wk"] == ("embed", "kv_heads")
  assert layer["w_down"] == ("mlp", "embed")
  assert axes["embed"] == ("vocab", "embed")


def test_flax_init_gives_the_same_tree_with_standard_initialisers():
  config = ModelConfig.tiny("qwen2")  # biases and tied embeddings
  module = Decoder(config, None)
  boxed = jax.jit(lambda key: module.init(key, method=Decoder.declare))(
      jax.random.key(0))["params"]
  params = from_linen_params(nn.unbox(boxed))
  want = jax.tree.map(lambda s: s.shape, param_shapes(config, jnp.float32))
  assert jax.tree.map(lambda x: x.shape, params) == want
  layer = params["layers"][1]
  np.testing.assert_array_equal(layer["attn_norm"], 1.0)
  np.testing.assert_array_equal(layer["bq"], 0.0)
  assert 0.01 < float(jnp.std(layer["wq"])) < 0.03


@pytest.mark.parametrize("shards,chunk,t", [(4, 3, 8), (2, 5, 14), (1, 4, 9),
                                            (4, None, 8)])
def test_seq_chunked_over_shards_equals_unchunked(shards, chunk, t):
  rng = np.random.default_rng(t)
  x = jnp.asarray(rng.standard_normal((2, t, 3)), jnp.float32)
  y = jnp.asarray(rng.standard_normal((2, t, 1)), jnp.float32)
  fn = lambda a, b: (jnp.tanh(a) * b + a**2, b * 2)  # noqa: E731
  got = seq_chunked(fn, chunk, x, y, shards=shards)
  want = fn(x, y)
  for g, w in zip(got, want):
    np.testing.assert_allclose(g, w, rtol=1e-6, err_msg=f"seed {t}")
  with pytest.raises(ValueError, match="not a multiple of the 5 sequence"):
    seq_chunked(fn, 2, x, y, shards=5)
