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
)
from minference_jax.attention import make_attention
from minference_jax.pattern_config import PatternConfig
from models import CausalLM, MeshConfig, generate_greedy, load_model
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
    patterns: a pattern config JSON (ours, or MInference's with
      `minference_format`); None runs every head dense.
    minference_format: read `patterns` as MInference's JSON format.
    backend: make_attention's backend.
    max_new_tokens: generation budget.
    prefill_chunk: prompt tokens per prefill call (None: one call).
    dtype: parameter dtype.
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
  patterns: str | None = None
  minference_format: bool = False
  backend: Literal["auto", "xla", "pallas", "dense"] = "auto"
  max_new_tokens: int = 32
  prefill_chunk: int | None = None
  dtype: Literal["float32", "bfloat16"] = "float32"
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


def check_files(cfg: GenerateConfig) -> None:
  """Every file the config names exists (before the slow model load).

  Raises:
    ConfigError: naming the key and the missing path.
  """
  for key in ("prompt_file", "model", "patterns"):
    path = getattr(cfg, key)
    if path is not None and not Path(path).exists():
      raise ConfigError(f"{key}: {path} does not exist")


def run(cfg: GenerateConfig, config_file: str | None = None) -> dict:
  """Generates (module docstring) and returns what generate.json holds."""
  check_files(cfg)
  console = Console()
  out = Path(cfg.out_dir)
  save_resolved(cfg, out / "generate.config.yaml")
  mesh = mesh_config(cfg.mesh)
  if mesh is None:
    loaded = load_model(cfg.model, cfg.dtype)
  else:
    try:  # e.g. heads that do not split over the mesh
      loaded = load_model(cfg.model, cfg.dtype, mesh)
    except ValueError as e:
      raise ConfigError(f"model {cfg.model or 'SmolLM2'} on mesh"
                        f" {mesh.shape}: {e}") from None
  tok = loaded.tokenizer
  prompt = (cfg.prompt if cfg.prompt is not None
            else Path(cfg.prompt_file).read_text())
  if cfg.chat:
    ids = tok.apply_chat_template([{"role": "user", "content": prompt}],
                                  add_generation_prompt=True, tokenize=True)
  else:
    ids = tok.encode(prompt)
  patterns = None
  if cfg.patterns:
    try:
      patterns = (PatternConfig.load_minference_json(cfg.patterns)
                  if cfg.minference_format else
                  PatternConfig.load_json(cfg.patterns))
    except (ValueError, KeyError, TypeError) as e:
      raise ConfigError(f"patterns: {cfg.patterns} is not a valid pattern "
                        f"config: {e}") from None
  attn = make_attention(patterns, backend=cfg.backend)
  model = CausalLM(loaded.config, loaded.params, attention=attn)
  if mesh is not None:
    model = shard_model(model, mesh)
  console.print(f"prompt: {len(ids)} tokens; attention: {cfg.backend}"
                f"{' with ' + cfg.patterns if cfg.patterns else ''}")
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
