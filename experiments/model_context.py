"""The model a command runs, checked before its weights load: its geometry,
RoPE scaling and the context every prompt must fit.

Every command that feeds a model tokens (demo, generate, eval,
bench-prefill, model-indices, and the pattern search) checks its longest
input here: a prompt longer than the model's context is refused with both
numbers and the RoPE-scaling option that extends it, or, for the timing and
index-set studies that run past the context on purpose, allowed by an
explicit option and said so.
"""

import dataclasses
import math
from pathlib import Path
from typing import Any

from experiments.config import ConfigError, warn
from models import ModelConfig
from models.loading import read_model_config


def model_geometry(path: str | Path | None, key: str = "model"
                   ) -> ModelConfig:
  """The model's config without its weights (`models.read_model_config`).

  Raises:
    ConfigError: naming `key`: a missing path or an unreadable config.
  """
  try:
    return read_model_config(path)
  except FileNotFoundError as e:
    raise ConfigError(f"{key}: {e.filename or e}: no such file") from None
  except ValueError as e:
    raise ConfigError(f"{key}: {path}: {e}") from None


def with_rope_scaling(config: ModelConfig, scaling: dict[str, Any] | None,
                      key: str = "rope_scaling") -> ModelConfig:
  """The config with an HF `rope_scaling` dict applied (None: unchanged).

  The result's `max_position_embeddings` is the extended context:
  the larger of the model's and (original_max_position_embeddings or the
  model's) x factor.

  Raises:
    ConfigError: naming `key`, for a scaling the RoPE code rejects.
  """
  if not scaling:
    return config
  if not isinstance(scaling, dict):
    raise ConfigError(f"{key} must be a mapping such as {{rope_type: dynamic,"
                      f" factor: 2}}, got {scaling!r}")
  scaling = dict(scaling)
  if scaling.get("rope_type", scaling.get("type")) in ("yarn", "llama3",
                                                        "longrope"):
    scaling.setdefault("original_max_position_embeddings",
                       config.max_position_embeddings)
  hf = config.to_hf_config()
  hf["rope_scaling"] = scaling
  try:
    scaled = ModelConfig.from_hf_config(hf)
    factor = float(scaling.get("factor") or 1.0)
    base = int(scaling.get("original_max_position_embeddings")
               or config.max_position_embeddings)
  except (ValueError, TypeError) as e:
    raise ConfigError(f"{key} {scaling}: {e}") from None
  limit = max(config.max_position_embeddings, int(base * factor))
  return dataclasses.replace(scaled, name=config.name,
                             max_position_embeddings=limit)


def check_context(config: ModelConfig, n_tokens: int, *, what: str,
                  scaling_key: str = "rope_scaling",
                  allow_key: str | None = None,
                  allowed: bool = False) -> None:
  """Refuses an input longer than the model's context.

  Args:
    config: the model's config (RoPE scaling applied).
    n_tokens: the positions the input needs (prompt plus generated tokens).
    what: the input, for the message (e.g. "the prompt (9500 tokens) plus
      32 new tokens").
    scaling_key: the command's RoPE-scaling option.
    allow_key: the command's option that allows running past the context
      (timing and index studies), or None where there is none.
    allowed: that option's value; then a warning instead of an error.

  Raises:
    ConfigError: naming both numbers and the option that extends the
      context.
  """
  limit = config.max_position_embeddings
  if n_tokens <= limit:
    return
  name = config.name or "the model"
  base = (f"{what}: {n_tokens} positions, but {name} has a context of"
          f" {limit} tokens (max_position_embeddings, RoPE"
          f" {config.rope.kind})")
  if allowed:
    warn(f"{base}; running past it ({allow_key}=true): positions beyond"
         " the trained context")
    return
  factor = math.ceil(n_tokens / limit)
  hint = (f"; extend it with RoPE scaling, e.g. {scaling_key}='{{rope_type:"
          f" dynamic, factor: {factor}}}'")
  if allow_key:
    hint += (f", or set {allow_key}=true to run past it on purpose (timing"
             " and index studies)")
  raise ConfigError(base + hint)
