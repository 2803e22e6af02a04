"""Shared pytest set-up: CPU JAX unless a GPU run is asked for, a small
hypothesis profile, shared/ data, the `gpu` marker and the op test base's
cases.

`make test` runs on CPU (JAX_PLATFORMS=cpu; tests marked `gpu` are skipped).
`make gpu-test` (`pytest -m gpu`) runs only the `gpu` tests, on the machine's
GPU: then JAX's platform is left alone, only files that mark tests `gpu` are
imported, and the tests skip if no GPU is found.
"""

import os
import re
from pathlib import Path

import pytest
from hypothesis import settings
from paths import SHARED_DIR

settings.register_profile("ci", max_examples=5, deadline=None)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))

_GPU_REASON = ("needs a CUDA GPU: run `make gpu-test` (pytest -m gpu) on a"
               " GPU machine")


def _gpu_run(config) -> bool:
  """Whether the marker expression selects the `gpu` tests (-m gpu)."""
  expr = config.getoption("markexpr", "") or ""
  return bool(re.search(r"(?<!not )\bgpu\b", expr))


def pytest_configure(config):
  config.addinivalue_line(
      "markers", "gpu: runs on a CUDA GPU, not interpret mode (make gpu-test)")
  if not _gpu_run(config):
    # Before any test module imports jax.
    os.environ.setdefault("JAX_PLATFORMS", "cpu")
  # Mosaic GPU interpret mode runs each warpgroup of a CTA as a host thread
  # whose barrier waits block inside XLA:CPU callbacks, on XLA's CPU thread
  # pool, which has one thread per core by default. A CTA of two compute
  # warpgroups and a producer is three such threads: on a 2-core host two
  # of them can hold both pool threads while they wait for the third, which
  # then never runs (a hang, seen in CI-sized runs; with one core even two
  # threads hang). XLA sizes that pool from PJRT_NPROC when it is set.
  os.environ.setdefault("PJRT_NPROC", "8")


def pytest_ignore_collect(collection_path, config):
  """In a GPU run, skips test files without `gpu` tests unimported: the GPU
  machine need not have every CPU test's dependencies (tokenizers,
  safetensors, ...)."""
  if (_gpu_run(config) and collection_path.suffix == ".py"
      and collection_path.name.startswith("test_")
      and "mark.gpu" not in collection_path.read_text()):
    return True
  return None


def pytest_collection_modifyitems(config, items):
  """Skips `gpu` tests off GPU, with the reason."""
  gpu_tests = [item for item in items if "gpu" in item.keywords]
  if not gpu_tests:
    return
  reason = _GPU_REASON
  if _gpu_run(config):
    import jax  # noqa: PLC0415 (only for a GPU run)

    if jax.default_backend() == "gpu":
      return
    reason = f"no GPU found (jax backend {jax.default_backend()!r})"
  for item in gpu_tests:
    item.add_marker(pytest.mark.skip(reason=reason))


def pytest_generate_tests(metafunc):
  """A test class with `cases()` (the op test base) gets one test per case."""
  cls = metafunc.cls
  if cls is not None and "case" in metafunc.fixturenames and hasattr(
      cls, "cases"):
    cases = cls.cases()
    metafunc.parametrize("case", cases, ids=[c.id for c in cases])


@pytest.fixture(scope="session")
def shared_dir() -> Path:
  if not SHARED_DIR.is_dir():
    pytest.skip("the shared/ folder beside the checkout is absent"
                f" ({SHARED_DIR.name})")
  return SHARED_DIR
