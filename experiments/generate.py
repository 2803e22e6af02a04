"""`minference-jax generate`: greedy generation for any prompt, model and
pattern config.

Loads a GGUF file or a Hugging Face safetensors checkpoint (default: the
bundled SmolLM2-135M-Instruct), builds the attention from a pattern config
(`make_attention(patterns, backend=...)`; none: every head dense), prefills
the prompt and decodes greedily. Prints the answer; writes `generate.json`
(prompt length, answer, seconds) and `generate.config.yaml` (the resolved
config) under `out_dir`.

  minference-jax generate prompt="What is the capital of France?" chat=true
  minference-jax generate prompt_file=long.txt \\
      patterns=configs/patterns/x.json backend=auto
"""

import dataclasses
import json
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np
from rich.console import Console
from tqdm import tqdm

from experiments.config import (
    CONFIGS_DIR,
    ConfigError,
    command,
    mesh_config,
    parse_cli,
    repo_relative,
    save_resolved,
    warn,
)
from experiments.model_context import (
    check_context,
    model_geometry,
    with_rope_scaling,
)
from experiments.searched_configs import default_pattern_config
from minference_jax.attention import make_attention
from minference_jax.pattern_config import PatternConfig, load_pattern_config
from minference_jax.pattern_entries import read_json_file
from models import CausalLM, MeshConfig, ModelConfig, generate_greedy
from models import load_model
from models.loading import load_tokenizer
from models.sharded import shard_model

DEFAULT_CONFIG = CONFIGS_DIR / "experiments" / "generate.yaml"


@dataclasses.dataclass(frozen=True)
class GenerateConfig:
  """Generation settings (YAML keys; `key=value` on the command line).

  Attributes:
    prompt: the prompt text (exactly one of prompt / prompt_file).
    prompt_file: a text file holding the prompt.
    chat: wrap the prompt in the model's chat template.
    model: a .gguf file or an HF safetensors checkpoint (file or folder);
      None for the bundled SmolLM2-135M-Instruct.
    patterns: "searched" (the config `minference-jax search` committed for
      the model under configs/patterns/; every head dense for a model
      without one), "dense" (every head dense) or a pattern
      config JSON (ours, or MInference's with `minference_format`).
    minference_format: the file is MInference's format (checked: the
      format is recognised either way; only with a pattern file).
    backend: make_attention's backend.
    max_new_tokens: generation budget.
    prefill_chunk: prompt tokens per prefill call (None: one call).
    dtype: parameter dtype (GGUF and safetensors alike).
    rope_scaling: an HF `rope_scaling` mapping (e.g. {rope_type: dynamic,
      factor: 2}) to run past the model's context; None keeps its own.
    out_dir: folder for generate.json and generate.config.yaml.
    mesh: a device mesh, `{data, sequence, tensor}` sizes and optional
      `rules` (models.MeshConfig.from_dict); with more than one device the
      weights load straight into their shards and the model runs sharded
      (models.shard_model). None: one device.
  """

  prompt: str | None = None
  prompt_file: str | None = None
  chat: bool = False
  model: str | None = None
  patterns: str = "searched"
  minference_format: bool = False
  backend: Literal["auto", "xla", "pallas", "dense"] = "auto"
  max_new_tokens: int = 32
  prefill_chunk: int | None = None
  dtype: Literal["float32", "bfloat16"] = "float32"
  rope_scaling: dict[str, Any] | None = None
  out_dir: str = "outputs"
  mesh: dict[str, Any] | None = None

  def __post_init__(self):
    if self.mesh is not None:
      MeshConfig.from_dict(self.mesh)  # ValueError names the bad key
    if (self.prompt is None) == (self.prompt_file is None):
      raise ValueError("give exactly one of prompt=TEXT or prompt_file=PATH")
    if self.max_new_tokens < 1:
      raise ValueError(
          f"max_new_tokens must be >= 1, got {self.max_new_tokens}")
    if self.prefill_chunk is not None and self.prefill_chunk < 1:
      raise ValueError(f"prefill_chunk must be >= 1, got {self.prefill_chunk}")
    if self.minference_format and not self.pattern_file:
      raise ValueError("minference_format=true needs patterns=PATH (there"
                       " is no pattern file to read)")

  @property
  def pattern_file(self) -> str | None:
    """The pattern JSON that `patterns` names (None: searched or dense)."""
    return None if self.patterns in ("searched", "dense") else self.patterns


def ignored_options(cfg: GenerateConfig) -> list[str]:
  """Options that have no effect with the others (printed as warnings)."""
  out = []
  if cfg.prefill_chunk is not None and cfg.patterns != "dense" and (
      cfg.backend != "dense"):
    out.append(f"prefill_chunk={cfg.prefill_chunk}: only the first chunk"
               " runs the sparse patterns; later chunks (q_offset > 0) run"
               " dense, as in MInference (drop prefill_chunk to prefill"
               " the whole prompt sparsely)")
  if cfg.pattern_file and cfg.backend == "dense":
    out.append(f"patterns={cfg.patterns} is ignored: backend 'dense' runs"
               " every head dense")
  return out


def check_files(cfg: GenerateConfig) -> None:
  """Every file the config names exists (before the slow model load).

  Raises:
    ConfigError: naming the key and the missing path.
  """
  for key in ("prompt_file", "model", "pattern_file"):
    path = getattr(cfg, key)
    key = "patterns" if key == "pattern_file" else key
    if path is not None and not Path(path).exists():
      raise ConfigError(f"{key}: {path} does not exist")


def read_patterns(cfg: GenerateConfig, config: ModelConfig
                  ) -> PatternConfig | None:
  """The pattern config, checked against the model's layers and heads
  (None: every head dense).

  Raises:
    ConfigError: naming the file: unreadable, malformed, the other format
      than `minference_format` says, or another geometry.
  """
  if cfg.patterns == "dense" or (cfg.patterns == "searched"
                                 and cfg.backend == "dense"):
    return None
  if cfg.patterns == "searched":
    try:
      found = default_pattern_config(cfg.model, config)
    except ValueError as e:
      raise ConfigError(f"patterns=searched: {e}") from None
    return found  # None: none committed for this model (dense)
  try:
    is_minference = isinstance(read_json_file(cfg.patterns, lambda d: d),
                               list)
  except ValueError as e:
    raise ConfigError(f"patterns: {e}") from None
  if is_minference != cfg.minference_format:
    raise ConfigError(
        f"patterns: {cfg.patterns} is in "
        f"{'MInference' if is_minference else 'our'} format; set"
        f" minference_format={str(is_minference).lower()}")
  try:
    return load_pattern_config(cfg.patterns, num_layers=config.num_layers,
                               num_heads=config.num_heads)
  except ValueError as e:
    raise ConfigError(f"patterns: {e}") from None


def prompt_ids(cfg: GenerateConfig, tok) -> list[int]:
  """The prompt's token ids (chat template applied with `chat`).

  Raises:
    ConfigError: chat=true for a tokenizer without a chat template.
  """
  prompt = (cfg.prompt if cfg.prompt is not None
            else Path(cfg.prompt_file).read_text())
  if cfg.chat and getattr(tok, "chat_template", "") is None:
    raise ConfigError(f"chat=true but the tokenizer of"
                      f" {cfg.model or 'the bundled model'} has no chat"
                      " template")
  if cfg.chat:
    return tok.apply_chat_template([{"role": "user", "content": prompt}],
                                   add_generation_prompt=True, tokenize=True)
  return tok.encode(prompt)


def run(cfg: GenerateConfig, config_file: str | None = None) -> dict:
  """Generates (module docstring) and returns what generate.json holds.

  Everything a user can get wrong (files, the pattern config against the
  model, the prompt against the model's context) is checked before the
  weights load.
  """
  check_files(cfg)
  for message in ignored_options(cfg):
    warn(message)
  console = Console()
  config = with_rope_scaling(model_geometry(cfg.model), cfg.rope_scaling)
  patterns = read_patterns(cfg, config)
  attn = make_attention(patterns, backend=cfg.backend)
  tok = load_tokenizer(cfg.model)
  ids = prompt_ids(cfg, tok)
  check_context(config, len(ids) + cfg.max_new_tokens,
                what=f"the prompt ({len(ids)} tokens) plus max_new_tokens="
                     f"{cfg.max_new_tokens}")
  out = Path(cfg.out_dir)
  save_resolved(cfg, out / "generate.config.yaml")
  mesh = mesh_config(cfg.mesh)
  if mesh is not None:
    try:  # e.g. heads that do not split over the mesh
      mesh.for_model(config)
    except ValueError as e:
      raise ConfigError(f"model {cfg.model or 'SmolLM2'} on mesh"
                        f" {mesh.shape}: {e}") from None
  loaded = load_model(cfg.model, cfg.dtype, mesh)
  model = CausalLM(with_rope_scaling(loaded.config, cfg.rope_scaling),
                   loaded.params, attention=attn)
  if mesh is not None:
    model = shard_model(model, mesh)
  none_found = cfg.patterns == "searched" and patterns is None
  console.print(f"prompt: {len(ids)} tokens; attention: {cfg.backend} with"
                f" patterns={cfg.patterns}"
                + (" (none committed for this model: every head dense)"
                   if none_found else ""))
  bar = tqdm(total=cfg.max_new_tokens, desc="decode", disable=None)

  def progress(phase, done, total):
    del total
    if phase == "decode":
      bar.n = done
      bar.refresh()

  start = time.perf_counter()
  result = generate_greedy(model, np.asarray([ids], np.int32),
                           max_new_tokens=cfg.max_new_tokens,
                           prefill_chunk=cfg.prefill_chunk,
                           progress=progress)
  seconds = time.perf_counter() - start
  bar.close()
  text = tok.decode(result.tokens[0, : result.lengths[0]].tolist(),
                    skip_special_tokens=True).strip()
  console.print(f"[bold]{text}[/]")
  console.print(f"({seconds:.1f} s, compile included)")
  record = dict(config_file=repo_relative(config_file),
                model=str(loaded.path.name), prompt_tokens=len(ids),
                answer=text, new_tokens=int(result.lengths[0]),
                seconds_incl_compile=seconds)
  (out / "generate.json").write_text(json.dumps(record, indent=1))
  return record


@command
def main(argv: Sequence[str] | None = None) -> None:
  cfg, path = parse_cli(GenerateConfig,
                        sys.argv[1:] if argv is None else argv,
                        DEFAULT_CONFIG)
  run(cfg, path)


if __name__ == "__main__":
  main()
