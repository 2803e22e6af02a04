"""Shared pytest set-up: CPU-only JAX, a small hypothesis profile, shared/ data."""

import os
from pathlib import Path

import pytest

os.environ.setdefault("JAX_PLATFORMS", "cpu")

from hypothesis import settings  # noqa: E402

settings.register_profile("ci", max_examples=5, deadline=None)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))

# The project's shared folder sits beside the checkout (it is not part of the
# repository); tests that read published data from it skip when it is absent.
SHARED_DIR = Path(__file__).resolve().parents[2] / "shared"


@pytest.fixture(scope="session")
def shared_dir() -> Path:
  if not SHARED_DIR.is_dir():
    pytest.skip(f"the shared/ folder beside the checkout is absent ({SHARED_DIR.name})")
  return SHARED_DIR
