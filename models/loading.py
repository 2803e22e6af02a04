"""One entry point that loads a model for the commands: a GGUF file or a
Hugging Face safetensors checkpoint, with its tokenizer."""

import dataclasses
from pathlib import Path
from typing import Any

import jax.numpy as jnp

from models.assets import smollm2_gguf_path
from models.config import ModelConfig
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


def load_model(path: str | Path | None = None,
               dtype: str | Any = "float32",
               mesh_config: MeshConfig | None = None) -> LoadedModel:
  """Loads a GGUF file or an HF safetensors checkpoint (file or directory).

  Args:
    path: a `.gguf` file, a safetensors file or a checkpoint directory
      (with `config.json` and `tokenizer.json`); None for the bundled
      SmolLM2-135M-Instruct GGUF.
    dtype: "float32" or "bfloat16" (or the jnp dtype): the parameter dtype.
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
  path = Path(path) if path else smollm2_gguf_path()
  if not path.exists():
    raise FileNotFoundError(2, "model path does not exist", str(path))
  if path.suffix == ".gguf":
    from models.gguf_io import load_gguf  # local: gguf only for this path

    hf_config, state = load_gguf(path)
    config = ModelConfig.from_hf_config(hf_config)
    partitioning = _bind(mesh_config, config)
    params = params_from_state_dict(config, state, dtype=dtype,
                                    partitioning=partitioning)
    return LoadedModel(config, params, Tokenizer.from_gguf(path), path,
                       partitioning)
  directory = path if path.is_dir() else path.parent
  tokenizer_file = directory / "tokenizer.json"
  if not tokenizer_file.exists():
    raise FileNotFoundError(2, "no tokenizer.json next to the checkpoint",
                            str(tokenizer_file))
  config = ModelConfig.from_hf_config(read_hf_config(path))
  partitioning = _bind(mesh_config, config)
  config, params = load_safetensors(path, dtype=dtype, config=config,
                                    partitioning=partitioning)
  return LoadedModel(config, params, Tokenizer.from_file(tokenizer_file),
                     directory, partitioning)


def _bind(mesh_config: MeshConfig | None,
          config: ModelConfig) -> Partitioning | None:
  """The mesh of mesh_config, checked against the geometry (None: none)."""
  if mesh_config is None:
    return None
  return mesh_config.for_model(config).bind()
