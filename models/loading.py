"""One entry point that loads a model for the commands: a GGUF file or a
Hugging Face safetensors checkpoint, with its tokenizer."""

import dataclasses
import functools
from pathlib import Path
from typing import Any

import jax.numpy as jnp

from models.assets import smollm2_gguf_path
from models.config import ModelConfig
from models.gguf_io import config_from_gguf, gguf_metadata, load_gguf, read_gguf
from models.partitioning import MeshConfig, Partitioning
from models.safetensors_io import load_safetensors, read_hf_config
from models.tokenizer import Tokenizer
from models.weights import Params, params_from_state_dict

DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}


@dataclasses.dataclass(frozen=True, eq=False)
class LoadedModel:
  """A model's geometry, parameters and tokenizer, and where they came from.

  Attributes:
    config: the geometry.
    params: the params pytree (models/weights.py).
    tokenizer: the model's tokenizer (chat template included where the
      checkpoint has one).
    path: the GGUF file or checkpoint directory that was read.
    partitioning: the mesh the params were placed on (None: one device).
  """

  config: ModelConfig
  params: Params
  tokenizer: Tokenizer
  path: Path
  partitioning: Partitioning | None = None


def _resolve(path: str | Path | None) -> Path:
  path = Path(path) if path else smollm2_gguf_path()
  if not path.exists():
    raise FileNotFoundError(2, "model path does not exist", str(path))
  return path


@functools.lru_cache(maxsize=2)
def _gguf_reader(path: str, mtime_ns: int):
  """One parsed GGUF reader per file version (parsing a 49K-token
  vocabulary takes seconds; the config check, the tokenizer and the
  weights share it)."""
  del mtime_ns  # part of the cache key only
  return read_gguf(path)


def _reader(path: Path):
  return _gguf_reader(str(path.resolve()), path.stat().st_mtime_ns)


def read_model_config(path: str | Path | None = None) -> ModelConfig:
  """A model's geometry without reading its weights (GGUF metadata, or the
  config.json beside a safetensors checkpoint): for checks before a load.

  Args:
    path: as `load_model` (None: the bundled SmolLM2-135M-Instruct).

  Raises:
    FileNotFoundError: the path or its config.json is missing.
    ValueError: an unreadable config or an unsupported architecture.
  """
  path = _resolve(path)
  if path.suffix == ".gguf":
    reader = _reader(path)
    meta = gguf_metadata(reader, skip_large_arrays=True)
    names = {t.name for t in reader.tensors}
    arch = meta.get("general.architecture")
    if f"{arch}.vocab_size" not in meta and "token_embd.weight" in names:
      emb = next(t for t in reader.tensors if t.name == "token_embd.weight")
      meta[f"{arch}.vocab_size"] = int(emb.shape[-1])
    return ModelConfig.from_hf_config(config_from_gguf(meta, names))
  return ModelConfig.from_hf_config(read_hf_config(path))


def load_tokenizer(path: str | Path | None = None) -> Tokenizer:
  """A model's tokenizer without its weights (the GGUF's, or the
  tokenizer.json beside a checkpoint).

  Raises:
    FileNotFoundError: the path or its tokenizer.json is missing.
  """
  path = _resolve(path)
  if path.suffix == ".gguf":
    return Tokenizer.from_gguf(_reader(path))
  directory = path if path.is_dir() else path.parent
  tokenizer_file = directory / "tokenizer.json"
  if not tokenizer_file.exists():
    raise FileNotFoundError(2, "no tokenizer.json next to the checkpoint",
                            str(tokenizer_file))
  return Tokenizer.from_file(tokenizer_file)


def load_model(path: str | Path | None = None,
               dtype: str | Any = "float32",
               mesh_config: MeshConfig | None = None) -> LoadedModel:
  """Loads a GGUF file or an HF safetensors checkpoint (file or directory).

  Args:
    path: a `.gguf` file, a safetensors file or a checkpoint directory
      (with `config.json` and `tokenizer.json`); None for the bundled
      SmolLM2-135M-Instruct GGUF.
    dtype: "float32" or "bfloat16" (or the jnp dtype): the parameter dtype,
      for GGUF and safetensors checkpoints alike (a bfloat16 checkpoint
      loads as float32 when asked).
    mesh_config: place each tensor straight into its shards over this mesh
      as it is converted (`mesh_config.for_model(config).bind()`; a large
      model never lives whole on one device); None: the default device.
      The result's `partitioning` is the bound mesh.

  Raises:
    FileNotFoundError: if the path or the tokenizer next to it is missing.
    ValueError: on an unknown dtype, or a mesh the model does not split
      over.
  """
  if isinstance(dtype, str):
    if dtype not in DTYPES:
      raise ValueError(f"dtype must be one of {sorted(DTYPES)}, got {dtype!r}")
    dtype = DTYPES[dtype]
  path = _resolve(path)
  if path.suffix == ".gguf":
    hf_config, state = load_gguf(_reader(path))
    config = ModelConfig.from_hf_config(hf_config)
    partitioning = _bind(mesh_config, config)
    params = params_from_state_dict(config, state, dtype=dtype,
                                    partitioning=partitioning)
    return LoadedModel(config, params, load_tokenizer(path), path,
                       partitioning)
  tokenizer = load_tokenizer(path)  # before the weights: a missing file
  config = ModelConfig.from_hf_config(read_hf_config(path))
  partitioning = _bind(mesh_config, config)
  config, params = load_safetensors(path, dtype=dtype, config=config,
                                    partitioning=partitioning)
  directory = path if path.is_dir() else path.parent
  return LoadedModel(config, params, tokenizer, directory, partitioning)


def _bind(mesh_config: MeshConfig | None,
          config: ModelConfig) -> Partitioning | None:
  """The mesh of mesh_config, checked against the geometry (None: none)."""
  if mesh_config is None:
    return None
  return mesh_config.for_model(config).bind()
