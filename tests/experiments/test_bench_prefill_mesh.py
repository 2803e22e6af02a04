"""Replayed index lines on a device mesh: the 8-device cases
(tests/experiments/sharded_replay_cases.py) in a subprocess, and the mesh
checks bench-prefill makes before any work (one device)."""

import pytest
from multi_device import run_on_8_host_devices

from experiments import bench_prefill
from experiments.config import ConfigError
from experiments.prefill.settings import CaseSpec, PrefillConfig
from models import MeshConfig, ModelConfig
from paths import TESTS_DIR


@pytest.mark.slow  # about 30 s of CPU (7 cases, ~10 small XLA compiles)
def test_sharded_replay_cases_pass_on_8_host_devices():
  run_on_8_host_devices(TESTS_DIR / "experiments" /
                        "sharded_replay_cases.py")


def test_replay_cases_pass_the_mesh_check_and_cache_modes_do_not():
  config = ModelConfig.preset("llama3_8b_1048k")  # N/K = 32/8
  replayed = PrefillConfig(seq_lens=(131072, 1048576), cases=(
      CaseSpec("vs"), CaseSpec("vs_replay", indices="replay")))
  for sequence in (2, 4, 8):
    bench_prefill._check_mesh(replayed, MeshConfig(sequence=sequence),
                              config)
  cached = PrefillConfig(seq_lens=(131072,), cases=(
      CaseSpec("vs_replay", indices="replay", modes=("prefill", "cache")),))
  with pytest.raises(ConfigError, match=r"case 'vs_replay': on a "
                     r"multi-device mesh .* drop modes \['cache'\]"):
    bench_prefill._check_mesh(cached, MeshConfig(sequence=8), config)
