"""Runs a pytest file of multi-device cases on 8 host CPU devices.

XLA fixes the device count when JAX starts, so files that need 8 devices
(tests/models/sharded_cases.py, tests/experiments/sharded_replay_cases.py)
run in a subprocess with XLA_FLAGS set, and the rest of the suite keeps
its single device.
"""

import os
import subprocess
import sys
from pathlib import Path

from paths import REPO_DIR

# 8 host devices; the backend flags only shorten XLA:CPU compiles (the
# partitioned HLO the cases inspect is produced before them).
MULTI_DEVICE_FLAGS = ("--xla_force_host_platform_device_count=8 "
                      "--xla_backend_optimization_level=0 "
                      "--xla_llvm_disable_expensive_passes=true")


def run_on_8_host_devices(cases: Path, timeout_s: int = 900) -> None:
  """Runs the pytest file `cases` in a subprocess with 8 CPU devices;
  fails with the output's tail unless every case passed (none skipped)."""
  env = dict(os.environ, XLA_FLAGS=MULTI_DEVICE_FLAGS, JAX_PLATFORMS="cpu")
  proc = subprocess.run(
      [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
       "-rs", str(cases)],
      cwd=REPO_DIR, env=env, capture_output=True, text=True,
      timeout=timeout_s)
  output = proc.stdout + proc.stderr
  assert proc.returncode == 0, output[-6000:]
  assert "skipped" not in output, output[-2000:]
