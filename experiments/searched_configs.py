"""Searched pattern configs committed under configs/patterns/, by model.

`default_pattern_config(path, model_config)` is what the demo and
`generate` use when no --patterns is given: the config `minference-jax
search` made for that model, or None when there is none.
"""

from pathlib import Path

from minference_jax.pattern_config import PatternConfig
from models import ModelConfig
from models.assets import SMOLLM2_GGUF

PATTERNS_DIR = Path(__file__).resolve().parents[1] / "configs" / "patterns"
# Model name (lower case, as in file names) -> committed config file.
SEARCHED = {"smollm2-135m-instruct": "smollm2-135m-instruct.json"}


def model_key(path: str | Path | None) -> str | None:
  """The SEARCHED key of a model path (None: the bundled SmolLM2), or None
  when no searched config is known for it."""
  if path is None:
    return "smollm2-135m-instruct"
  name = Path(path).name.lower()
  if name == SMOLLM2_GGUF.lower():
    return "smollm2-135m-instruct"
  for key in SEARCHED:
    if name.startswith(key):
      return key
  return None


def check_geometry(config: PatternConfig, model: ModelConfig,
                   source: str) -> PatternConfig:
  """The config, after checking it has the model's layer and head counts.

  Raises:
    ValueError: naming the source, its counts and the model's.
  """
  if (config.num_layers, config.num_heads) != (model.num_layers,
                                               model.num_heads):
    raise ValueError(
        f"{source} has {config.num_layers} layers x {config.num_heads}"
        f" heads, but the model has {model.num_layers} layers x"
        f" {model.num_heads} query heads")
  return config


def searched_config_path(path: str | Path | None) -> Path | None:
  """The committed searched config of a model, if there is one."""
  key = model_key(path)
  if key is None:
    return None
  file = PATTERNS_DIR / SEARCHED[key]
  return file if file.is_file() else None


def default_pattern_config(path: str | Path | None,
                           model: ModelConfig) -> PatternConfig | None:
  """The searched config for the model at `path` (None: bundled SmolLM2),
  checked against its geometry; None when no config was searched for it.

  Raises:
    ValueError: the committed config does not fit the model.
  """
  file = searched_config_path(path)
  if file is None:
    return None
  return check_geometry(PatternConfig.load_json(file), model, str(file.name))
