"""Replayed Vertical-Slash lines on 8 host CPU devices: sharded logits equal
one device's, one layer step without a per-device branch, clear errors.

Needs 8 devices, i.e. XLA_FLAGS=--xla_force_host_platform_device_count=8
set before JAX starts: tests/experiments/test_bench_prefill_mesh.py runs
this file in a subprocess (the rest of the suite keeps one device). To run
it directly:
  XLA_FLAGS=--xla_force_host_platform_device_count=8 \
      python -m pytest tests/experiments/sharded_replay_cases.py
"""

import dataclasses
import json
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from experiments import bench_prefill
from experiments.index_sets import HeadIndices, vs_indices_path
from experiments.prefill.replay import (
    ReplayedLayerAttention,
    ReplayedLines,
    ReplayVerticalSlash,
    check_lines,
)
from minference_jax.parallel import UlyssesAttention
from models import CausalLM, LayerAttentions, MeshConfig, ModelConfig
from models import layers as model_layers
from models import random_params
from models.sharded import make_sharded_prefill

if jax.device_count() < 8:
  pytest.skip("needs 8 devices: run through "
              "tests/experiments/test_bench_prefill_mesh.py "
              "(XLA_FLAGS=--xla_force_host_platform_device_count=8)",
              allow_module_level=True)

T = 256  # 4 query blocks of 64
N = 16  # query heads: 2 per device on 8 devices
CHUNK = 16
SEED = 0
REPLAY = ReplayVerticalSlash("xla")  # one object: every layer's step static

# name: (mesh, KV heads, batch). KV heads fewer than the 8 head-parallel
# devices in all three (replicated 4x, 2x, 4x); the last splits a batch of
# 2 over the data axis (each device reads the first row of the lines).
CASES = {
    "seq8_kv2": (MeshConfig(sequence=8), 2, 1),
    "seq2_tensor4_kv4": (MeshConfig(sequence=2, tensor=4), 4, 1),
    "data2_seq4_kv2": (MeshConfig(data=2, sequence=4), 2, 2),
}


def _config(kv_heads: int) -> ModelConfig:
  """LLaMA geometry, 2 layers, N=16, D=8."""
  base = ModelConfig.tiny("llama")
  rope = dataclasses.replace(base.rope, rotary_dim=8)
  return dataclasses.replace(base, num_heads=N, num_kv_heads=kv_heads,
                             head_dim=8, rope=rope)


def _random_lines(rng, num_layers: int, num_heads: int) -> ReplayedLines:
  """Lines that differ per (layer, head): key column 0 and diagonal 0 plus
  3-11 random others of each kind, padded by the recording's convention."""
  nv = ns = 12
  vertical = np.full((num_layers, num_heads, nv), T - 1, np.int32)
  slash = np.zeros((num_layers, num_heads, ns), np.int32)
  v_count = rng.integers(4, nv + 1, (num_layers, num_heads)).astype(np.int32)
  s_count = rng.integers(4, ns + 1, (num_layers, num_heads)).astype(np.int32)
  for layer in range(num_layers):
    for head in range(num_heads):
      cv, cs = v_count[layer, head], s_count[layer, head]
      cols = rng.choice(np.arange(1, T), cv - 1, replace=False)
      vertical[layer, head, :cv] = np.sort(np.r_[0, cols])
      offs = rng.choice(np.arange(1, T), cs - 1, replace=False)
      slash[layer, head, :cs] = np.sort(np.r_[0, offs])[::-1]
  lines = ReplayedLines(vertical, v_count, slash, s_count, T, 0, {})
  check_lines(lines)
  return lines


def _attention(lines: ReplayedLines, batch: int) -> LayerAttentions:
  return LayerAttentions(tuple(
      ReplayedLayerAttention(lines.layer(i, batch), REPLAY)
      for i in range(lines.vertical.shape[0])))


def _tokens(batch: int) -> np.ndarray:
  return np.random.default_rng(SEED).integers(0, 96, (batch, T))


_MODELS: dict = {}


def _model(kv_heads: int, batch: int):
  """(single-device replayed model, its logits [B, T, V], the lines)."""
  key = (kv_heads, batch)
  if key not in _MODELS:
    config = _config(kv_heads)
    lines = _random_lines(np.random.default_rng(SEED), config.num_layers, N)
    params = random_params(config, jax.random.key(SEED), jnp.float32,
                           std=0.2)
    model = CausalLM(config, params, attention=_attention(lines, batch),
                     chunk_size=CHUNK, layerwise_from=0)
    logits, _ = model(jnp.asarray(_tokens(batch)), logits_for="all")
    _MODELS[key] = (model, np.asarray(logits), lines)
  return _MODELS[key]


@pytest.mark.parametrize("case", list(CASES))
def test_sharded_replayed_prefill_equals_single_device(case):
  mesh_config, kv_heads, batch = CASES[case]
  model, want, _ = _model(kv_heads, batch)
  prefill = make_sharded_prefill(model, mesh_config, logits_for="all")
  assert prefill.model.layerwise.num_steps(T) == 1  # both layers, one step
  got = prefill(_tokens(batch))
  assert got.sharding.spec[1] == "sequence", got.sharding
  np.testing.assert_allclose(np.asarray(got), want, rtol=2e-4, atol=2e-4,
                             err_msg=f"{case}, seed {SEED}")


def test_which_head_gets_which_lines_changes_the_logits():
  # Without this the equality above could hold for any line-to-head map.
  model, want, lines = _model(2, 1)
  swapped = dataclasses.replace(
      lines, vertical=lines.vertical[:, ::-1].copy(),
      vertical_count=lines.vertical_count[:, ::-1].copy(),
      slash=lines.slash[:, ::-1].copy(),
      slash_count=lines.slash_count[:, ::-1].copy())
  other = dataclasses.replace(model, attention=_attention(swapped, 1))
  got, _ = other(jnp.asarray(_tokens(1)), logits_for="all")
  dense = dataclasses.replace(model, attention=model_layers.DenseAttention())
  full, _ = dense(jnp.asarray(_tokens(1)), logits_for="all")
  assert np.abs(np.asarray(got) - want).max() > 1e-2
  assert np.abs(np.asarray(full) - want).max() > 1e-2


def _conditionals(hlo: str) -> int:
  return len(re.findall(r"\bconditional\(", hlo))


@dataclasses.dataclass(frozen=True)
class _ScaledPerBlock:
  """Dense attention times a per-head-range factor (two devices' ranges
  differ), restricted with `for_heads`: the lax.switch path."""

  scale: float = 1.0

  def for_heads(self, start, stop):
    del stop
    return _ScaledPerBlock(1.0 + start)

  def __call__(self, q, k, v, *, layer_idx, q_offset=0):
    dense = model_layers.DenseAttention()
    return dense(q, k, v, layer_idx=layer_idx, q_offset=q_offset) * self.scale


def test_the_replayed_layer_step_has_no_per_device_branch():
  mesh_config, kv_heads, batch = CASES["seq8_kv2"]
  model, _, _ = _model(kv_heads, batch)
  prefill = make_sharded_prefill(model, mesh_config, logits_for="all")
  compiled = prefill.model.layerwise.compile(
      prefill.model.params, prefill.place_tokens(_tokens(batch)),
      logits_for="all")
  assert compiled.executables == 3  # embed, one layer step, logits
  hlo = compiled.steps[0].as_text()
  assert "all-to-all" in hlo
  assert _conditionals(hlo) == 0
  # The detector finds the branch of attentions restricted by static ranges.
  uly = UlyssesAttention(_ScaledPerBlock(), MeshConfig(sequence=8).make_mesh())
  q = jnp.zeros((1, 64, N, 8))
  kv = jnp.zeros((1, 64, 2, 8))
  switched = jax.jit(lambda q, k, v: uly(q, k, v, layer_idx=0)).lower(
      q, kv, kv).compile().as_text()
  assert _conditionals(switched) >= 1


def test_replayed_lines_that_do_not_fit_are_refused():
  model, _, lines = _model(2, 1)
  eight_heads = dataclasses.replace(
      lines, vertical=lines.vertical[:, :8], slash=lines.slash[:, :8],
      vertical_count=lines.vertical_count[:, :8],
      slash_count=lines.slash_count[:, :8])
  with pytest.raises(ValueError, match="replayed lines hold 8 heads, the "
                     "model has 16 query heads"):
    make_sharded_prefill(
        dataclasses.replace(model, attention=_attention(eight_heads, 1)),
        MeshConfig(sequence=8))
  one_layer = LayerAttentions(_attention(lines, 1).layers[:1])
  with pytest.raises(ValueError, match="holds 1 attentions for a model of 2"):
    make_sharded_prefill(dataclasses.replace(model, attention=one_layer),
                         MeshConfig(sequence=8))
  # Lines for one batch row cannot serve a batch of 2 (no data axis).
  prefill = make_sharded_prefill(model, MeshConfig(sequence=8))
  with pytest.raises(ValueError, match="lines for 1 rows x 2 heads cannot "
                     "serve q of 2 rows"):
    prefill(_tokens(2))


def test_bench_prefill_runs_a_replay_case_on_a_mesh(tmp_path):
  config = dict(hidden_size=64, intermediate_size=128, num_layers=2,
                num_heads=8, num_kv_heads=2, head_dim=8, vocab_size=96)
  lines = _random_lines(np.random.default_rng(SEED + 1), 2, 8)
  HeadIndices(lines.vertical, lines.vertical_count, lines.slash,
              lines.slash_count,
              dict(seq_len=T, num_kv_heads=2, source_model="random",
                   n_vertical=12, n_slash=12)).save(
                  vs_indices_path(tmp_path / "rec", T))
  raw = dict(
      name="mesh_replay", out_dir=str(tmp_path), seq_lens=[T], plot=False,
      mesh={"sequence": 8}, vs_budget=[30, 50],
      model=dict(preset="llama3_8b_1048k", dtype="float32", weight_std=0.3,
                 overrides=config),
      replay=dict(index_dirs=[str(tmp_path / "rec")], keep_estimate=True),
      cases=[dict(label="vs_replay", attention="vertical_slash",
                  indices="replay", implementation="xla")],
      timing=dict(warmup=1, min_repeats=1, max_repeats=1, budget_s=0.0))
  path = tmp_path / "c.yaml"
  path.write_text(json.dumps(raw))
  assert bench_prefill.main(["--config", str(path)]) == 0
  (row,) = json.loads((tmp_path / "mesh_replay.json").read_text())["rows"]
  assert not row.get("error"), row
  assert row["executor"] == "sharded" and row["logits_finite"], row
  assert row["replay"]["model"] == "random"
