"""Sharded prefill on 8 host CPU devices: logits equal one device's, the
compiled program's collectives, errors of meshes that do not fit.

Needs 8 devices, i.e. XLA_FLAGS=--xla_force_host_platform_device_count=8
set before JAX starts: tests/models/test_sharding.py runs this file in a
subprocess (the rest of the suite keeps one device). To run it directly:
  XLA_FLAGS=--xla_force_host_platform_device_count=8 \
      python -m pytest tests/models/sharded_cases.py
"""

import dataclasses
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from minference_jax import AShape, BlockSparse, Dense, PatternConfig
from minference_jax.attention import DenseAttention, make_attention
from minference_jax.parallel import UlyssesAttention
from models import CausalLM, MeshConfig, ModelConfig, layers, random_params
from models.checkpoint import restore_params, save_params
from models.generate import generate_greedy
from models.sharded import make_sharded_prefill, shard_model
from models.weights import (
    param_shardings,
    params_from_state_dict,
    params_to_state_dict,
)

if jax.device_count() < 8:
  pytest.skip("needs 8 devices: run through tests/models/test_sharding.py "
              "(XLA_FLAGS=--xla_force_host_platform_device_count=8)",
              allow_module_level=True)

T = 256  # prompt length; no weight or reduced activation has a dim of T
CHUNK = 16  # tokens per sequence shard per chunk of norms/projections/MLP
SEED = 0


def _config(kv_heads: int, **overrides) -> ModelConfig:
  """GLM geometry (q/k/v biases, interleaved half rotary), N=16, D=8."""
  base = ModelConfig.tiny("glm")
  rope = dataclasses.replace(base.rope, rotary_dim=4)
  return dataclasses.replace(base, num_heads=16, num_kv_heads=kv_heads,
                             head_dim=8, rope=rope, **overrides)


# name: (mesh config, KV heads). The last: 2 KV heads on 8 head-parallel
# devices (each KV head replicated to 4), the KV projections replicated over
# the tensor axis (2 KV heads do not split over 4).
CASES = {
    "seq8": (MeshConfig(sequence=8), 8),
    "seq2_tensor4": (MeshConfig(sequence=2, tensor=4), 8),
    "kv2_seq2_tensor4": (MeshConfig(sequence=2, tensor=4), 2),
}


def _sparse_layer(order: int) -> tuple:
  """16 heads, 2 per device on 8 devices: devices 0-3 mix A-shape and
  Block-Sparse heads, 4-5 are dense, 6-7 a narrower A-shape; reversed in
  the second layer, so each device's heads differ by layer."""
  heads = ((AShape(16, 48), BlockSparse(1)) * 4 + (Dense(),) * 4
           + (AShape(4, 24),) * 4)
  return heads if order == 0 else heads[::-1]


SPARSE = PatternConfig(layers=(_sparse_layer(0), _sparse_layer(1)))
ATTENTIONS = {
    "dense": make_attention(None, backend="xla"),
    "sparse": make_attention(SPARSE, backend="xla"),
}


def _tokens(batch: int = 1, length: int = T, seed: int = SEED) -> np.ndarray:
  return np.random.default_rng(seed).integers(0, 96, (batch, length))


_MODELS: dict = {}


def _model(kv_heads: int, kind: str) -> tuple[CausalLM, np.ndarray]:
  """(single-device model, its float32 logits for every position)."""
  key = (kv_heads, kind)
  if key not in _MODELS:
    config = _config(kv_heads)
    params = random_params(config, jax.random.key(SEED), jnp.float32,
                           std=0.2)
    model = CausalLM(config, params, attention=ATTENTIONS[kind],
                     chunk_size=CHUNK)
    logits, _ = model(jnp.asarray(_tokens()), logits_for="all")
    _MODELS[key] = (model, np.asarray(logits))
  return _MODELS[key]


@pytest.mark.parametrize("kind", ["dense", "sparse"])
@pytest.mark.parametrize("case", list(CASES))
def test_sharded_prefill_logits_equal_single_device(case, kind):
  mesh_config, kv_heads = CASES[case]
  model, want = _model(kv_heads, kind)
  prefill = make_sharded_prefill(model, mesh_config, logits_for="all")
  got = prefill(_tokens())
  assert got.sharding.spec[1] == "sequence", got.sharding
  np.testing.assert_allclose(
      np.asarray(got), want, rtol=2e-4, atol=2e-4,
      err_msg=f"{case}/{kind}, seed {SEED}")


def test_sparse_patterns_really_change_the_logits():
  _, dense = _model(8, "dense")
  _, sparse = _model(8, "sparse")
  assert np.abs(dense - sparse).max() > 1e-2


def _collectives(hlo: str) -> list[tuple[str, list[tuple[int, ...]]]]:
  """(op, result shapes) of every collective in compiled HLO text."""
  found = []
  pattern = re.compile(r"=\s*(.*?)\s(all-to-all|all-gather|all-reduce|"
                       r"collective-permute|reduce-scatter)(?:-start)?\(")
  for line in hlo.splitlines():
    m = pattern.search(line)
    if m:
      shapes = [tuple(int(d) for d in dims.split(",") if d)
                for dims in re.findall(r"\w+\[([\d,]*)\]", m.group(1))]
      found.append((m.group(2), shapes))
  return found


@pytest.mark.parametrize("case", ["seq8", "seq2_tensor4"])
def test_compiled_prefill_holds_all_to_alls_and_no_full_sequence_gather(
    case):
  mesh_config, kv_heads = CASES[case]
  model, _ = _model(kv_heads, "dense")
  prefill = make_sharded_prefill(model, mesh_config, logits_for="all")
  lowered = prefill.lower(_tokens())
  # Before XLA's optimisations: one all-to-all each for q, k, v and the
  # output of every layer (XLA may fuse them later).
  stablehlo = lowered.as_text()
  layers = model.config.num_layers
  assert stablehlo.count("stablehlo.all_to_all") == 4 * layers
  ops = _collectives(lowered.compile().as_text())
  kinds = {op for op, _ in ops}
  assert "all-to-all" in kinds
  assert "all-gather" not in kinds, ops
  # No collective carries a full-sequence activation (T rows): the
  # all-to-alls move [*, T/seq, ...] blocks, the tensor-parallel
  # all-reduces [B, T/seq, H].
  seq = mesh_config.sequence
  for op, shapes in ops:
    for shape in shapes:
      assert T not in shape, (op, shape)
      if op == "all-to-all":
        assert T // seq in shape, (op, shape)
  if mesh_config.tensor > 1:
    reduces = [s for op, ss in ops if op == "all-reduce" for s in ss]
    assert (1, T // seq, model.config.hidden_size) in reduces


def test_generation_on_a_mesh_equals_one_device():
  model, _ = _model(8, "dense")
  prompt = _tokens(length=64, seed=3)
  want = generate_greedy(model, prompt, max_new_tokens=3)
  sharded = shard_model(model, MeshConfig(sequence=8))
  got = generate_greedy(sharded, prompt, max_new_tokens=3)
  np.testing.assert_array_equal(got.tokens, want.tokens)


def _qkv(b, t, n, k, seed):
  keys = jax.random.split(jax.random.key(seed), 3)
  q = jax.random.normal(keys[0], (b, t, n, 8))
  kk = jax.random.normal(keys[1], (b, t, k, 8))
  v = jax.random.normal(keys[2], (b, t, k, 8))
  return q, kk, v


@pytest.mark.parametrize("shape,kv_heads,t", [
    ((1, 8, 1), 2, 64),   # 4 devices per KV head, sequence-only mesh
    ((2, 4, 1), 4, 64),   # batch over data, one KV head per device
    ((1, 8, 1), 4, 60),   # T does not split: head-parallel, no all-to-all
])
def test_ulysses_attention_equals_dense_attention(shape, kv_heads, t):
  mesh = MeshConfig(data=shape[0], sequence=shape[1],
                    tensor=shape[2]).make_mesh()
  dense = layers.DenseAttention()
  q, k, v = _qkv(shape[0], t, 16, kv_heads, seed=SEED + t)
  uly = UlyssesAttention(dense, mesh)
  got = jax.jit(lambda q, k, v: uly(q, k, v, layer_idx=0))(q, k, v)
  want = jax.jit(lambda q, k, v: dense(q, k, v, layer_idx=0))(q, k, v)
  np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=1e-5,
                             atol=1e-5, err_msg=f"mesh {shape}, seed {SEED}")


def test_pallas_kernels_run_per_device_inside_shard_map():
  # Interpret mode on CPU; devices 0-3 run the A-shape kernel for their
  # heads, 4-7 the Block-Sparse one (index building included).
  config = PatternConfig(layers=((AShape(16, 48),) * 8
                                 + (BlockSparse(1),) * 8,))
  attn = make_attention(config, backend="pallas", interpret=True)
  q, k, v = _qkv(1, 128, 16, 8, seed=SEED)
  uly = UlyssesAttention(attn, MeshConfig(sequence=8).make_mesh())
  got = jax.jit(lambda q, k, v: uly(q, k, v, layer_idx=0))(q, k, v)
  want = jax.jit(lambda q, k, v: attn(q, k, v, layer_idx=0))(q, k, v)
  np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=1e-5,
                             atol=1e-5, err_msg=f"seed {SEED}")


def test_loaders_place_each_tensor_straight_into_its_shards(tmp_path):
  model, _ = _model(2, "dense")
  config = model.config
  mesh_config = MeshConfig(sequence=2, tensor=4).for_model(config)
  partitioning = mesh_config.bind()
  want = param_shardings(config, partitioning)
  state = params_to_state_dict(config, model.params)
  loaded = params_from_state_dict(config, state, jnp.float32,
                                  partitioning=partitioning)
  save_params(tmp_path / "ckpt", config, model.params)
  _, restored = restore_params(tmp_path / "ckpt", partitioning=partitioning)
  for params in (loaded, restored):
    for got, sharding, ref in zip(jax.tree.leaves(params),
                                  jax.tree.leaves(want),
                                  jax.tree.leaves(model.params), strict=True):
      assert got.sharding.is_equivalent_to(sharding, got.ndim)
      np.testing.assert_array_equal(np.asarray(got), np.asarray(ref))
  wq = loaded["layers"][0]["wq"]  # [H, N*D]: columns over the tensor axis
  assert wq.addressable_shards[0].data.shape == (config.hidden_size,
                                                 config.q_dim // 4)
  wk = loaded["layers"][0]["wk"]  # 2 KV heads on 4 devices: replicated
  assert wk.addressable_shards[0].data.shape == wk.shape


def test_meshes_that_do_not_fit_the_model_are_refused():
  model, _ = _model(8, "dense")
  vocab_90 = dataclasses.replace(
      model, config=dataclasses.replace(model.config, vocab_size=90),
      params={**model.params, "embed": model.params["embed"][:90],
              "lm_head": model.params["lm_head"][:, :90]})
  with pytest.raises(ValueError, match=r"'vocab', size 90\) does not split"):
    make_sharded_prefill(vocab_90, MeshConfig(sequence=2, tensor=4))
  uly = UlyssesAttention(DenseAttention(), MeshConfig(sequence=8).make_mesh())
  q, kv = jnp.zeros((1, 64, 12, 8)), jnp.zeros((1, 64, 4, 8))
  with pytest.raises(ValueError, match="N=12 query heads do not split"):
    uly(q, kv, kv, layer_idx=0)
  prefill = make_sharded_prefill(model, MeshConfig(sequence=8))
  with pytest.raises(ValueError, match="tokens"):
    prefill(_tokens(length=T - 4))


def test_layer_by_layer_prefill_on_a_mesh_equals_one_device():
  # Per-device patterns that differ by layer, KV heads replicated 4x: the
  # library's layerwise executor (2 distinct layer steps) on the mesh.
  model, want = _model(2, "sparse")
  prefill = make_sharded_prefill(dataclasses.replace(model, layerwise_from=0),
                                 CASES["kv2_seq2_tensor4"][0],
                                 logits_for="all")
  assert prefill.model.layerwise.num_steps(T) == 2
  got = prefill(_tokens())
  assert got.sharding.spec[1] == "sequence", got.sharding
  np.testing.assert_allclose(np.asarray(got), want, rtol=2e-4, atol=2e-4,
                             err_msg=f"seed {SEED}")


def test_bench_prefill_takes_its_mesh_from_the_config(tmp_path):
  import json

  from experiments import bench_prefill

  raw = dict(
      name="mesh", out_dir=str(tmp_path), seq_lens=[T], plot=False,
      mesh={"sequence": 8},
      model=dict(preset="llama3_8b_1048k", dtype="float32", weight_std=0.3,
                 overrides=dict(hidden_size=64, intermediate_size=128,
                                num_layers=2, num_heads=8, num_kv_heads=2,
                                head_dim=8, vocab_size=96)),
      cases=[dict(label="dense", attention="dense", implementation="xla")],
      timing=dict(warmup=1, min_repeats=1, max_repeats=1, budget_s=0.0))
  path = tmp_path / "c.yaml"
  path.write_text(json.dumps(raw))
  assert bench_prefill.main(["--config", str(path)]) == 0
  (row,) = json.loads((tmp_path / "mesh.json").read_text())["rows"]
  assert row["executor"] == "sharded" and row["logits_finite"], row
  assert row["model_s"] > 0
