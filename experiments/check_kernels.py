"""`minference-jax check-kernels`: the kernels' GPU correctness tests.

Runs the repository's pytest tests under the `gpu` marker (every kernel
implementation against a float32 reference on the GPU) in a child
`python -m pytest -m gpu` process, and exits with its status. Without a
GPU it stops with a one-line error before starting pytest, and a run in
which no test ran (all skipped or none selected) is an error too. Writes
`check_kernels.xml` (pytest's JUnit report) and `check_kernels.config.yaml`
(the resolved config) under `out_dir`.

  minference-jax check-kernels [--config configs/experiments/check_kernels.yaml]
      [tests=[tests/pallas_kernels]] [pytest_args=[-x]] [key=value ...]
"""

import dataclasses
import os
import subprocess
import sys
import xml.etree.ElementTree as ElementTree
from collections.abc import Mapping, Sequence
from pathlib import Path

from experiments.config import (
    CONFIGS_DIR,
    REPO_DIR,
    ConfigError,
    command,
    parse_cli,
    save_resolved,
)

DEFAULT_CONFIG = CONFIGS_DIR / "experiments" / "check_kernels.yaml"


@dataclasses.dataclass(frozen=True)
class CheckKernelsConfig:
  """The command's settings (YAML keys; `key=value` on the command line).

  Attributes:
    tests: test files or folders, relative to the checkout.
    marker: the pytest marker expression that selects the GPU tests.
    pytest_args: further pytest arguments (e.g. ["-x", "-k", "block"]).
    out_dir: folder for check_kernels.xml and check_kernels.config.yaml.
  """

  tests: tuple[str, ...] = ("tests",)
  marker: str = "gpu"
  pytest_args: tuple[str, ...] = ()
  out_dir: str = "outputs"

  def __post_init__(self):
    if not self.tests:
      raise ValueError("tests must name at least one test file or folder")
    if not self.marker.strip():
      raise ValueError("marker must not be empty")


class NoGpuError(RuntimeError):
  """JAX sees no GPU on this machine."""


def require_gpu() -> str:
  """The first GPU's device kind.

  The check does not reserve the GPU's memory for this process
  (XLA_PYTHON_CLIENT_PREALLOCATE=false unless set), so the pytest child
  can have it.

  Raises:
    NoGpuError: JAX has no GPU backend here (or JAX_PLATFORMS excludes
      it).
  """
  os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")
  import jax  # noqa: PLC0415 - after the allocator setting above

  try:
    gpus = jax.devices("gpu")
  except RuntimeError as e:
    raise NoGpuError(f"{type(e).__name__}: {str(e).splitlines()[0]}") from None
  if not gpus:
    raise NoGpuError("no GPU devices")
  return gpus[0].device_kind


def pytest_command(cfg: CheckKernelsConfig, junit_xml: Path) -> list[str]:
  """The child process's argv."""
  return [sys.executable, "-m", "pytest", "-m", cfg.marker, "-q",
          f"--junitxml={junit_xml}", *cfg.tests, *cfg.pytest_args]


def child_environment(environ: Mapping[str, str]) -> dict[str, str]:
  """The pytest child's environment: ours, with JAX free to use the GPU
  (JAX_PLATFORMS empty unless the caller set it; tests/conftest.py only
  picks the CPU when it is unset)."""
  env = dict(environ)
  env.setdefault("JAX_PLATFORMS", "")
  return env


def junit_counts(path: Path) -> dict[str, int]:
  """{"tests", "skipped", "failures", "errors"} summed over a JUnit XML
  report's test suites."""
  root = ElementTree.parse(path).getroot()
  suites = [root] if root.tag == "testsuite" else list(root.iter("testsuite"))
  keys = ("tests", "skipped", "failures", "errors")
  return {k: sum(int(s.get(k, 0)) for s in suites) for k in keys}


def run(cfg: CheckKernelsConfig) -> int:
  """Runs the GPU tests (module docstring); returns the exit status
  (pytest's, or 5 when no test ran).

  Raises:
    ConfigError: a test path that does not exist, or no GPU.
  """
  for path in cfg.tests:
    if not (REPO_DIR / path).exists():
      raise ConfigError(f"tests: {path} does not exist in the checkout")
  environ = dict(os.environ)
  try:
    kind = require_gpu()
  except NoGpuError as e:
    raise ConfigError(f"check-kernels needs a CUDA GPU and JAX sees none"
                      f" ({e})") from None
  out = Path(cfg.out_dir).resolve()
  save_resolved(cfg, out / "check_kernels.config.yaml")
  junit = out / "check_kernels.xml"
  argv = pytest_command(cfg, junit)
  print(f"{kind}: {' '.join(argv[1:])}", flush=True)
  status = subprocess.run(argv, cwd=REPO_DIR, check=False,
                          env=child_environment(environ)).returncode
  if junit.is_file():
    counts = junit_counts(junit)
    if counts["tests"] == counts["skipped"]:
      print(f"error: no GPU test ran ({counts['tests']} selected,"
            f" {counts['skipped']} skipped); see {junit}", file=sys.stderr)
      return status or 5
  return status


@command
def main(argv: Sequence[str] | None = None) -> None:
  cfg, _ = parse_cli(CheckKernelsConfig,
                     sys.argv[1:] if argv is None else argv, DEFAULT_CONFIG)
  raise SystemExit(run(cfg))


if __name__ == "__main__":
  main()
