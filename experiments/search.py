"""`minference-jax search`: the offline kernel-aware pattern search.

    minference-jax search [--model PATH] [--config configs/search/NAME.yaml]
        [key=value ...] --out FILE [--minference-format] [--results DIR]

MInference's Algorithm 1 (Jiang et al., 2024, section 3.2) for every layer
of a model: calibration prompts run through the model with dense attention;
at each layer every head is scored against every candidate of the search
space at the target kernel cost, and the best candidate is kept. Writes our
pattern-config JSON to FILE, the search record (space, target, samples,
seed, git revision, every score; the resume state) beside it as
`FILE stem + .search.json`, MInference's JSON with `--minference-format`
(`FILE stem + .minference.json`), and with `--results DIR` a summary (JSON,
markdown, the layer x head map as PNG) including a held-out validation
against uniform baselines at the same cost. The default model is the
bundled SmolLM2-135M-Instruct.
"""

import dataclasses
import hashlib
import subprocess
import sys
import time
from pathlib import Path
from typing import Literal

import numpy as np

from experiments.config import ConfigError, command, parse_cli, to_plain
from minference_jax.patterns import AShape, BlockSparse, VerticalSlash
from minference_jax.search import (
    CostTarget,
    SearchSettings,
    SearchSpace,
    check_target,
)

REPO_DIR = Path(__file__).resolve().parents[1]
DEFAULT_CONFIG = REPO_DIR / "configs" / "search" / "paper.yaml"
# The uniform baselines of the held-out comparison, in this order.
BASELINE_NAMES = ("vertical_slash", "a_shape", "block_sparse")


@dataclasses.dataclass(frozen=True)
class SpaceConfig:
  """Candidates per kind (sizes at `reference_length`) and ChangeSpace."""

  a_shape: tuple[tuple[int, int], ...] = ((1024, 4096),)
  vertical_slash: tuple[tuple[int, int], ...] = (
      (30, 2048), (100, 1800), (500, 1500), (3000, 200))
  block_sparse: tuple[int, ...] = (100,)
  reference_length: int | None = 30_000
  adjust: bool = True
  step: int = 50
  tolerance: float = 0.05

  def build(self) -> SearchSpace:
    return SearchSpace.from_dict(
        {"a_shape": [list(x) for x in self.a_shape],
         "vertical_slash": [list(x) for x in self.vertical_slash],
         "block_sparse": list(self.block_sparse)},
        reference_length=self.reference_length, adjust=self.adjust,
        step=self.step, tolerance=self.tolerance)


@dataclasses.dataclass(frozen=True)
class TargetConfig:
  """The cost target: an A-shape's cost, or a kernel density."""

  a_shape: tuple[int, int] = (1024, 4096)
  reference_length: int | None = 30_000
  density: float | None = None

  def build(self) -> CostTarget:
    return CostTarget(a_shape=tuple(self.a_shape),
                      reference_length=self.reference_length,
                      density=self.density)


@dataclasses.dataclass(frozen=True)
class SamplesConfig:
  """Prompts per kind (see experiments/search_data.py)."""

  kv_retrieval: int = 3
  haystack: int = 1

  def counts(self) -> dict[str, int]:
    return {"kv_retrieval": self.kv_retrieval, "haystack": self.haystack}

  @property
  def total(self) -> int:
    return self.kv_retrieval + self.haystack


@dataclasses.dataclass(frozen=True)
class ScoringConfig:
  """How candidates are compared (see minference_jax.search.SearchSettings)."""

  objective: Literal["output", "recall"] = "output"
  aggregate: Literal["mean", "worst"] = "mean"
  row_blocks: int = 1
  key_chunk: int = 512
  precision: Literal["highest", "default"] = "highest"
  first_row: int = 0

  def build(self) -> SearchSettings:
    return SearchSettings(**dataclasses.asdict(self))


@dataclasses.dataclass(frozen=True)
class RopeScalingConfig:
  """RoPE scaling for searching past the trained length ("none" keeps the
  model's own)."""

  kind: Literal["none", "linear", "dynamic", "yarn"] = "none"
  factor: float = 1.0


@dataclasses.dataclass(frozen=True)
class ValidationConfig:
  """Held-out comparison of the searched config with uniform baselines
  (sizes at the space's reference length, brought to the same cost)."""

  enabled: bool = True
  samples: SamplesConfig = SamplesConfig(kv_retrieval=2, haystack=1)
  vertical_slash: tuple[int, int] = (1000, 6096)
  a_shape: tuple[int, int] = (1024, 4096)
  block_sparse: int = 100

  def baselines(self):
    return (VerticalSlash(*self.vertical_slash), AShape(*self.a_shape),
            BlockSparse(self.block_sparse))


@dataclasses.dataclass(frozen=True)
class SearchConfig:
  """Options of `minference-jax search` (YAML keys; dotted overrides).

  Attributes:
    model: a .gguf file or HF safetensors checkpoint (`--model`); None: the
      bundled SmolLM2-135M-Instruct.
    model_name: the name written into the config (default: the file's).
    out: the searched config's JSON (`--out`); the per-layer record beside
      it (FILE stem + .search.json) makes a rerun resume.
    minference_format: also write MInference's JSON (FILE stem +
      .minference.json; `--minference-format`).
    results: a folder for the summary, layer x head map PNG and held-out
      validation (`--results`); None: none.
    seq_len: calibration length in tokens (within the model's context
      unless `rope` extends it).
    seed: calibration prompts and their order.
    dtype: the model's parameter dtype.
    block_sparse_rewrite: write Block-Sparse winners as Vertical-Slash, as
      MInference's public search does (for comparison).
    space: the candidates per kind and ChangeSpace (`space.*`).
    target: the cost every candidate is adjusted to (`target.*`).
    samples: calibration prompts per kind (`samples.*`).
    scoring: objective (output error or recall), aggregate and tiling.
    rope: RoPE scaling for lengths past the trained context.
    validation: the held-out comparison with uniform configs.
  """

  model: str | None = None
  model_name: str | None = None
  out: str | None = None
  minference_format: bool = False
  results: str | None = None
  seq_len: int = 8192
  seed: int = 0
  dtype: Literal["float32", "bfloat16"] = "float32"
  block_sparse_rewrite: bool = False
  space: SpaceConfig = SpaceConfig()
  target: TargetConfig = TargetConfig()
  samples: SamplesConfig = SamplesConfig()
  scoring: ScoringConfig = ScoringConfig()
  rope: RopeScalingConfig = RopeScalingConfig()
  validation: ValidationConfig = ValidationConfig()


_FLAGS = {"--model": "model", "--out": "out", "--results": "results"}


def parse_args(argv) -> tuple[SearchConfig, str | None]:
  """`--model/--out/--results PATH` and `--minference-format` become the
  keys of the same names; the rest is the usual `--config` + key=value."""
  rest, it = [], iter(argv)
  for arg in it:
    name, _, value = arg.partition("=")
    if name in _FLAGS:
      if not value:
        value = next(it, None)
        if value is None:
          raise ConfigError(f"{name} needs a value")
      rest.append(f"{_FLAGS[name]}={value}")
    elif arg == "--minference-format":
      rest.append("minference_format=true")
    else:
      rest.append(arg)
  return parse_cli(SearchConfig, rest, DEFAULT_CONFIG)


def validate(cfg: SearchConfig) -> tuple[SearchSpace, CostTarget,
                                         SearchSettings]:
  """Checks everything that can be checked before slow work.

  Raises:
    ConfigError: naming the key and the problem.
  """
  if not cfg.out:
    raise ConfigError("no output file: pass --out FILE (or out=FILE)")
  if not cfg.out.endswith(".json"):
    raise ConfigError(f"out must be a .json file, got {cfg.out!r}")
  if cfg.model and not Path(cfg.model).exists():
    raise ConfigError(f"model path {cfg.model} does not exist")
  if cfg.seq_len < 128:
    raise ConfigError(f"seq_len must be >= 128, got {cfg.seq_len}")
  if cfg.samples.total < 1:
    raise ConfigError("samples: at least one calibration prompt is needed")
  if cfg.validation.enabled and cfg.validation.samples.total < 1:
    raise ConfigError("validation.samples: at least one held-out prompt is"
                      " needed (or validation.enabled=false)")
  if cfg.rope.kind != "none" and cfg.rope.factor <= 1:
    raise ConfigError(f"rope.factor must be > 1 with rope.kind="
                      f"{cfg.rope.kind!r}, got {cfg.rope.factor}")
  try:
    space = cfg.space.build()
    target = cfg.target.build()
    settings = cfg.scoring.build()
    check_target(space, target, cfg.seq_len)
  except ValueError as e:
    raise ConfigError(f"search config: {e}") from None
  return space, target, settings


def git_revision() -> str | None:
  """HEAD of the checkout (with "+dirty" for local changes), or None."""
  try:
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO_DIR,
                          capture_output=True, text=True, check=True)
    dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-"
                            "files=no"], cwd=REPO_DIR, capture_output=True,
                           text=True, check=True)
  except (OSError, subprocess.CalledProcessError):
    return None
  return head.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "")


def tokens_digest(tokens: np.ndarray) -> str:
  return hashlib.sha256(np.ascontiguousarray(tokens, np.int32)).hexdigest()


def paths_for(out: str | Path) -> dict[str, Path]:
  """The files a search writes next to `out`."""
  out = Path(out)
  stem = out.with_suffix("")
  return {"config": out,
          "record": stem.with_name(stem.name + ".search.json"),
          "minference": stem.with_name(stem.name + ".minference.json")}


def fingerprint(cfg: SearchConfig, model_info: dict, digest: str) -> dict:
  """Everything that determines the searched config (see search_run)."""
  keys = ("seq_len", "seed", "dtype", "space", "target", "samples",
          "scoring", "rope")
  plain = {k: to_plain(getattr(cfg, k)) for k in keys}
  plain["baselines"] = [list(x) if isinstance(x, tuple) else x for x in (
      cfg.validation.vertical_slash, cfg.validation.a_shape,
      cfg.validation.block_sparse)]
  return {"model": model_info, "tokens_sha256": digest, **plain}


@command
def main(argv=None) -> None:
  from experiments.search_pipeline import run_command

  cfg, config_path = parse_args(sys.argv[1:] if argv is None else argv)
  space, target, settings = validate(cfg)
  started = time.time()
  run_command(cfg, config_path, space, target, settings,
              argv=sys.argv[1:] if argv is None else list(argv))
  print(f"search finished in {time.time() - started:.0f} s")


if __name__ == "__main__":
  main()

