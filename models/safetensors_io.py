"""Hugging Face safetensors checkpoints: lazy state dicts and model loading."""

import json
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import jax.numpy as jnp
import numpy as np
from safetensors import SafetensorError, safe_open

from models.config import ModelConfig
from models.partitioning import Partitioning
from models.weights import Params, params_from_state_dict

INDEX_NAME = "model.safetensors.index.json"
SINGLE_NAME = "model.safetensors"


class SafetensorsStateDict(Mapping[str, np.ndarray]):
  """A read-on-access {tensor name: numpy array} over safetensors files.

  bfloat16 tensors come back as ml_dtypes.bfloat16 numpy arrays. Files are
  opened (and their headers validated) at construction.
  """

  def __init__(self, files: list[Path]):
    """Opens the files and indexes their tensor names.

    Args:
      files: safetensors files (the shards of one checkpoint).

    Raises:
      FileNotFoundError: for a missing file.
      ValueError: for a corrupt or truncated file, or a tensor name that
        appears in two files.
    """
    self._handles: dict[Path, Any] = {}
    self._where: dict[str, Path] = {}
    for f in files:
      f = Path(f)
      if not f.is_file():
        raise FileNotFoundError(f"safetensors file not found: {f}")
      try:
        handle = safe_open(str(f), framework="numpy")
        handle.__enter__()
      except SafetensorError as e:
        raise ValueError(f"{f}: corrupt or truncated safetensors file "
                         f"({e})") from e
      self._handles[f] = handle
      for name in handle.keys():
        if name in self._where:
          raise ValueError(f"tensor {name!r} appears in both "
                           f"{self._where[name].name} and {f.name}")
        self._where[name] = f

  def __getitem__(self, name: str) -> np.ndarray:
    if name not in self._where:
      raise KeyError(name)
    path = self._where[name]
    try:
      return self._handles[path].get_tensor(name)
    except SafetensorError as e:
      raise ValueError(f"cannot read tensor {name!r} from {path}: {e}") from e

  def __iter__(self) -> Iterator[str]:
    return iter(self._where)

  def __len__(self) -> int:
    return len(self._where)

  def file_of(self, name: str) -> Path:
    """The file that holds a tensor."""
    return self._where[name]

  def close(self) -> None:
    """Releases the file handles."""
    for handle in self._handles.values():
      handle.__exit__(None, None, None)
    self._handles = {}

  def __enter__(self) -> "SafetensorsStateDict":
    return self

  def __exit__(self, *exc: Any) -> None:
    self.close()


def _checkpoint_files(path: Path) -> list[Path]:
  """The safetensors files of a file, a directory or an index.json path."""
  if path.is_file() and path.name.endswith(".json"):
    return _files_from_index(path)
  if path.is_file():
    return [path]
  if not path.is_dir():
    raise FileNotFoundError(f"checkpoint not found: {path}")
  index = path / INDEX_NAME
  if index.is_file():
    return _files_from_index(index)
  if (path / SINGLE_NAME).is_file():
    return [path / SINGLE_NAME]
  files = sorted(path.glob("*.safetensors"))
  if not files:
    raise FileNotFoundError(f"no *.safetensors file in {path}")
  return files


def _files_from_index(index: Path) -> list[Path]:
  try:
    weight_map = json.loads(index.read_text())["weight_map"]
  except (json.JSONDecodeError, KeyError, TypeError) as e:
    raise ValueError(f"{index}: not a safetensors index (needs a "
                     f"'weight_map'): {e}") from e
  files = []
  for shard in dict.fromkeys(weight_map.values()):
    f = index.parent / shard
    if not f.is_file():
      raise FileNotFoundError(f"shard {shard!r} listed in {index.name} is "
                              f"missing from {index.parent}")
    files.append(f)
  return files


def open_state_dict(path: str | Path) -> SafetensorsStateDict:
  """Opens a checkpoint (file, directory or index.json) as a lazy state dict.

  Raises:
    FileNotFoundError: for a missing file or shard.
    ValueError: for a corrupt file or index.
  """
  path = Path(path)
  sd = SafetensorsStateDict(_checkpoint_files(path))
  index = path / INDEX_NAME if path.is_dir() else path
  if index.name.endswith(".json") and index.is_file():
    weight_map = json.loads(index.read_text())["weight_map"]
    for name, shard in weight_map.items():
      if name not in sd or sd.file_of(name).name != Path(shard).name:
        sd.close()
        raise ValueError(f"{index.name} maps tensor {name!r} to {shard}, "
                         "which does not contain it")
  return sd


def read_hf_config(path: str | Path) -> dict[str, Any]:
  """The config.json beside a checkpoint file, or in a checkpoint directory.

  Raises:
    FileNotFoundError: when there is no config.json.
    ValueError: a config.json that is not a JSON object (naming it).
  """
  path = Path(path)
  folder = path if path.is_dir() else path.parent
  cfg = folder / "config.json"
  if not cfg.is_file():
    raise FileNotFoundError(f"no config.json in {folder}")
  try:
    data = json.loads(cfg.read_text())
  except json.JSONDecodeError as e:
    raise ValueError(f"{cfg} is not valid JSON ({e})") from None
  if not isinstance(data, dict):
    raise ValueError(f"{cfg} must hold a JSON object, got"
                     f" {type(data).__name__}")
  return data


def load_safetensors(
    path: str | Path,
    dtype: Any = jnp.bfloat16,
    *,
    config: ModelConfig | None = None,
    strict: bool = True,
    partitioning: Partitioning | None = None,
) -> tuple[ModelConfig, Params]:
  """Loads an HF safetensors checkpoint (single file or sharded).

  Args:
    path: a .safetensors file, a checkpoint directory (model.safetensors or
      model.safetensors.index.json plus shards) or an index.json.
    dtype: parameter dtype (bfloat16 by default).
    config: the geometry; default parsed from the config.json beside it.
    strict: reject tensors the mapping table does not use.
    partitioning: place each tensor straight into its shards over this
      mesh (see params_from_state_dict); default one device.

  Returns:
    (config, params).

  Raises:
    FileNotFoundError: for a missing file, shard or config.json.
    ValueError: for a corrupt/truncated file, an unknown architecture, or
      a missing/mis-shaped tensor (named).
  """
  if config is None:
    config = ModelConfig.from_hf_config(read_hf_config(path))
  with open_state_dict(path) as sd:
    params = params_from_state_dict(config, sd, dtype, strict=strict,
                                    partitioning=partitioning)
  return config, params
