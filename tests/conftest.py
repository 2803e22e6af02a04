"""Shared pytest set-up: CPU-only JAX, a small hypothesis profile, shared/ data."""

import os
from pathlib import Path

import pytest

os.environ.setdefault("JAX_PLATFORMS", "cpu")
# Mosaic GPU interpret mode runs each warpgroup of a CTA as a host thread
# whose barrier waits block inside XLA:CPU callbacks, on XLA's CPU thread
# pool, which has one thread per core by default. A CTA of two compute
# warpgroups and a producer is three such threads: on a 2-core host two
# of them can hold both pool threads while they wait for the third, which
# then never runs (a hang, seen in CI-sized runs; with one core even two
# threads hang). XLA sizes that pool from PJRT_NPROC when it is set.
os.environ.setdefault("PJRT_NPROC", "8")

from hypothesis import settings  # noqa: E402

settings.register_profile("ci", max_examples=5, deadline=None)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))

from paths import SHARED_DIR  # noqa: E402


@pytest.fixture(scope="session")
def shared_dir() -> Path:
  if not SHARED_DIR.is_dir():
    pytest.skip(f"the shared/ folder beside the checkout is absent ({SHARED_DIR.name})")
  return SHARED_DIR
