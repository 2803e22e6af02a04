"""Benchmark: the pattern search's wall time for a whole model (GPU).

    python -m experiments.search_bench out_dir=$OUT [key=value ...]

For each length in `lengths`, the search of every layer of the model
(`experiments/search.py`'s run loop, 4 calibration prompts by default, no
held-out pass) runs twice in one process: a cold run (compiling) and a warm
run (compiled), each from an empty record. Writes
`search_bench_<device>.json` and `.md` under out_dir (with the command,
device and jax version), plus each length's searched config and record.
Lengths past the model's trained context use YaRN RoPE scaling by
length / trained length, so the patterns stay meaningful.
"""

import dataclasses
import json
import statistics
import sys
import time
from pathlib import Path

import jax
import numpy as np

from experiments.config import ConfigError, command, parse_cli, to_plain
from experiments.search import (
    REPO_DIR,
    SamplesConfig,
    ScoringConfig,
    SpaceConfig,
    TargetConfig,
    git_revision,
)
from experiments.search_data import make_samples
from experiments.search_pipeline import apply_rope_scaling
from experiments.search_run import SearchRecord, assemble_config, run_search
from minference_jax.search import check_target
from models import load_model

DEFAULT_CONFIG = REPO_DIR / "configs" / "search" / "bench_gpu.yaml"


@dataclasses.dataclass(frozen=True)
class BenchConfig:
  """Options of the search benchmark.

  Attributes:
    out_dir: folder for search_bench_<device>.json/.md and each length's
      searched config.
    model: a .gguf file or safetensors checkpoint; None: bundled SmolLM2.
    dtype: the model's parameter dtype.
    lengths: calibration lengths timed (past the trained context with
      YaRN scaling).
    runs: searches per length in one process (the first compiles).
    seed: calibration prompts.
    space, target, samples, scoring: as `minference-jax search`.
  """

  out_dir: str | None = None
  model: str | None = None
  dtype: str = "bfloat16"
  lengths: tuple[int, ...] = (8192, 32768)
  runs: int = 2
  seed: int = 0
  space: SpaceConfig = SpaceConfig()
  target: TargetConfig = TargetConfig()
  samples: SamplesConfig = SamplesConfig()
  scoring: ScoringConfig = ScoringConfig(row_blocks=4, key_chunk=2048,
                                         precision="default")


def _device() -> str:
  return jax.devices()[0].device_kind


def bench_length(cfg: BenchConfig, loaded, length: int, out: Path) -> dict:
  """Cold and warm searches of every layer at one length."""
  space, target = cfg.space.build(), cfg.target.build()
  settings = cfg.scoring.build()
  check_target(space, target, length)
  trained = loaded.config.max_position_embeddings
  rope = "none" if length <= trained else "yarn"
  mcfg = apply_rope_scaling(loaded.config, rope, length / trained)
  start = time.perf_counter()
  samples = make_samples(loaded.tokenizer, length, cfg.samples.counts(),
                         cfg.seed)
  prompts_s = time.perf_counter() - start
  tokens = np.stack([s.tokens for s in samples])
  runs = []
  for run in range(cfg.runs):
    path = out / f"search_bench_{length}_run{run}.search.json"
    path.unlink(missing_ok=True)
    record = SearchRecord.open(path, {"length": length, "run": run}, {})
    layer_s = []
    start = time.perf_counter()
    run_search(mcfg, loaded.params, tokens, record, space, target, settings,
               on_layer=lambda layer, res, s: layer_s.append(s))
    total = time.perf_counter() - start
    runs.append({"total_s": round(total, 2),
                 "layers_s": [round(s, 3) for s in layer_s],
                 "search_s": round(sum(layer_s), 2)})
    print(f"T={length} run {run}: {total:.1f} s ({sum(layer_s):.1f} s in"
          f" the per-layer search, median layer"
          f" {statistics.median(layer_s):.2f} s)", flush=True)
  config = assemble_config(record, mcfg.num_layers, mcfg.num_heads,
                           settings.objective, settings.aggregate)
  config.save_json(out / f"search_bench_{length}.json")
  shares = {k.value: n for k, n in config.count_by_kind().items()}
  return {"length": length, "rope": rope,
          "rope_factor": length / trained if rope != "none" else None,
          "prompts": len(samples), "prompt_s": round(prompts_s, 2),
          "runs": runs, "heads_per_kind": shares}


def markdown(result: dict) -> str:
  lines = [f"# Pattern search time, {result['model']} ({result['layers']}"
           f" layers x {result['heads']} heads)", "",
           f"Command: `{result['command']}`  ",
           f"Device: {result['device']}, jax {result['jax']}, git"
           f" {result['git']}, model dtype {result['dtype']}, scoring"
           f" {result['scoring']}.", "",
           "| tokens | prompts | RoPE | cold run s (compiling) | warm run s |"
           " warm median layer s | heads per kind |",
           "|---|---|---|---|---|---|---|"]
  for row in result["lengths"]:
    runs = row["runs"]
    warm = runs[-1]
    rope = row["rope"] if row["rope"] == "none" else (
        f"{row['rope']} x{row['rope_factor']:g}")
    lines.append(
        f"| {row['length']} | {row['prompts']} | {rope} |"
        f" {runs[0]['total_s']:.1f} | {warm['total_s']:.1f} |"
        f" {statistics.median(warm['layers_s']):.2f} |"
        f" {row['heads_per_kind']} |")
  lines += ["", "Times are wall seconds of the whole run: the dense forward"
            " passes that record q/k/v plus every layer's search (estimates,"
            " ChangeSpace, scoring), prompts and model loading excluded."]
  return "\n".join(lines) + "\n"


@command
def main(argv=None) -> None:
  argv = sys.argv[1:] if argv is None else list(argv)
  default = DEFAULT_CONFIG if DEFAULT_CONFIG.is_file() else None
  cfg, _ = parse_cli(BenchConfig, argv, default)
  if not cfg.out_dir:
    raise ConfigError("out_dir=DIR is required")
  if cfg.model and not Path(cfg.model).exists():
    raise ConfigError(f"model path {cfg.model} does not exist")
  if cfg.runs < 1:
    raise ConfigError(f"runs must be >= 1, got {cfg.runs}")
  out = Path(cfg.out_dir)
  out.mkdir(parents=True, exist_ok=True)
  loaded = load_model(cfg.model, dtype=cfg.dtype)
  result = {
      "model": loaded.path.name, "layers": loaded.config.num_layers,
      "heads": loaded.config.num_heads, "device": _device(),
      "jax": jax.__version__, "git": git_revision(), "dtype": cfg.dtype,
      "command": "python -m experiments.search_bench " + " ".join(argv),
      "scoring": to_plain(cfg.scoring), "config": to_plain(cfg),
      "lengths": [bench_length(cfg, loaded, t, out) for t in cfg.lengths],
  }
  stem = "search_bench_" + "".join(
      c if c.isalnum() else "_" for c in _device().lower()).strip("_")
  (out / f"{stem}.json").write_text(json.dumps(result, indent=1) + "\n")
  (out / f"{stem}.md").write_text(markdown(result))
  print(f"wrote {out / stem}.json and .md")


if __name__ == "__main__":
  main()
