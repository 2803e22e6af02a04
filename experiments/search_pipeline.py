"""What `minference-jax search` does after its options are checked: load
the model, make the prompts, search (resumably), write the configs, run the
held-out validation and write the report."""

import dataclasses
import datetime
import json
import shlex
from collections.abc import Sequence
from pathlib import Path

import jax
import numpy as np
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

from experiments.config import ConfigError, to_plain
from experiments.search import (
    BASELINE_NAMES,
    REPO_DIR,
    SearchConfig,
    fingerprint,
    git_revision,
    paths_for,
    tokens_digest,
)
from experiments.search_data import make_samples
from experiments.search_report import (
    search_summary,
    validation_summary,
    write_report,
)
from experiments.search_run import (
    RecordMismatch,
    SearchRecord,
    assemble_config,
    baseline_config,
    run_search,
    run_validation,
)
from minference_jax.pattern_config import PatternConfig
from minference_jax.patterns import BlockSparse, VerticalSlash
from minference_jax.search import CostTarget, SearchSettings, SearchSpace
from models import ModelConfig, load_model
from models.assets import smollm2_gguf_path

BUNDLED_NAME = "SmolLM2-135M-Instruct"


def apply_rope_scaling(config: ModelConfig, kind: str,
                       factor: float) -> ModelConfig:
  """The model config with RoPE scaling `kind` by `factor` ("none": as is).
  YaRN keeps the trained length as its original length."""
  if kind == "none":
    return config
  trained = config.max_position_embeddings
  yarn = kind == "yarn"
  rope = dataclasses.replace(
      config.rope, kind=kind, factor=float(factor),
      original_max_position_embeddings=(
          trained if yarn else config.rope.original_max_position_embeddings),
      max_position_embeddings=(int(trained * factor) if yarn
                               else config.rope.max_position_embeddings))
  return dataclasses.replace(config, rope=rope)


def model_name(cfg: SearchConfig, path: Path) -> str:
  if cfg.model_name:
    return cfg.model_name
  if cfg.model is None:
    return BUNDLED_NAME
  return path.stem if path.is_file() else path.name


def model_info(name: str, path: Path, config: ModelConfig) -> dict:
  """The model's identity for the fingerprint (no machine paths)."""
  return {"name": name, "file": path.name,
          "bytes": path.stat().st_size if path.is_file() else None,
          "num_layers": config.num_layers, "num_heads": config.num_heads,
          "num_kv_heads": config.num_kv_heads, "head_dim": config.head_dim,
          "hidden_size": config.hidden_size}


def minference_export(config: PatternConfig) -> tuple[list, list]:
  """MInference's JSON of `config` and the heads rewritten for it.

  MInference's kernel runs every Block-Sparse head with top-k 100; a head
  searched with another top-k is written as MInference's own search writes
  Block-Sparse winners, VerticalSlash(1000, 6096), and listed.
  """
  rewritten, layers = [], []
  for i, row in enumerate(config.layers):
    new = []
    for h, p in enumerate(row):
      if isinstance(p, BlockSparse) and p.top_k != 100:
        rewritten.append([i, h])
        p = VerticalSlash(1000, 6096)
      new.append(p)
    layers.append(tuple(new))
  export = dataclasses.replace(config, layers=tuple(layers))
  return export.to_minference_json(), rewritten


def _progress(console: Console, total: int, what: str):
  progress = Progress(TextColumn(f"[bold]{what}[/]"), BarColumn(),
                      TextColumn("{task.completed}/{task.total} layers"),
                      TimeElapsedColumn(), console=console)
  return progress, progress.add_task(what, total=total)


def run_command(cfg: SearchConfig, config_path: str | None,
                space: SearchSpace, target: CostTarget,
                settings: SearchSettings, argv: Sequence[str]) -> None:
  """Runs a validated search command end to end (see experiments/search)."""
  console = Console()
  paths = paths_for(cfg.out)
  path = Path(cfg.model) if cfg.model else smollm2_gguf_path()
  name = model_name(cfg, path)
  with console.status(f"loading {name}"):
    loaded = load_model(cfg.model, dtype=cfg.dtype)
  mcfg = apply_rope_scaling(loaded.config, cfg.rope.kind, cfg.rope.factor)
  if (cfg.seq_len > loaded.config.max_position_embeddings
      and cfg.rope.kind == "none"):
    console.print(f"[yellow]note[/]: seq_len {cfg.seq_len} is past the"
                  f" model's trained {loaded.config.max_position_embeddings}"
                  " tokens and no rope scaling is set (rope.kind)")
  with console.status("making the calibration prompts"):
    samples = make_samples(loaded.tokenizer, cfg.seq_len,
                           cfg.samples.counts(), cfg.seed)
  tokens = np.stack([s.tokens for s in samples])  # [B, T]
  run_info = {
      "command": "minference-jax search " + shlex.join(argv),
      "config_file": _relative(config_path), "resolved": to_plain(cfg),
      "git": git_revision(), "jax": jax.__version__,
      "device": jax.devices()[0].device_kind,
      "started": datetime.datetime.now(datetime.UTC).isoformat(
          timespec="seconds"),
      "samples": [s.name for s in samples],
  }
  try:
    record = SearchRecord.open(
        paths["record"], fingerprint(cfg, model_info(name, path, mcfg),
                                     tokens_digest(tokens)), run_info)
  except (RecordMismatch, ValueError) as e:
    raise ConfigError(str(e)) from None
  done = len(record.layers)
  console.print(
      f"[bold]search[/] {name}: {mcfg.num_layers} layers x {mcfg.num_heads}"
      f" heads, {len(samples)} prompts x {cfg.seq_len} tokens"
      f" ({', '.join(s.name for s in samples)}); {len(space.candidates)}"
      f" candidates, target {target.describe(cfg.seq_len)}, objective"
      f" {settings.objective} ({settings.aggregate})"
      + (f"; resuming: {done} layers done" if done else ""))
  progress, task = _progress(console, mcfg.num_layers, "search")

  def on_layer(layer, res, seconds):
    kinds = [p.kind.value for p in res.patterns]
    counts = ", ".join(f"{k} {kinds.count(k)}" for k in sorted(set(kinds)))
    win = res.winner
    recall = res.recall[:, win, range(len(win))].mean()
    progress.console.print(
        f"layer {layer:>2}: {seconds:6.1f} s  {counts}; recall"
        f" {recall:.3f}; kernel density"
        f" {res.tiles[:, win, range(len(win))].mean() / _dense(res):.3f}")
    progress.advance(task)

  with progress:
    progress.update(task, completed=done)
    run_search(mcfg, loaded.params, tokens, record, space, target, settings,
               baselines=cfg.validation.baselines(), on_layer=on_layer)
  searched = assemble_config(record, mcfg.num_layers, mcfg.num_heads,
                             settings.objective, settings.aggregate,
                             cfg.block_sparse_rewrite, model=name)
  searched.save_json(paths["config"])
  console.print(f"wrote {paths['config']} and {paths['record']}")
  console.print(searched.summary())
  if cfg.minference_format:
    data, rewritten = minference_export(searched)
    paths["minference"].write_text(json.dumps(data) + "\n")
    record.data["minference_export"] = {"rewritten_block_sparse": rewritten}
    record.save()
    note = (f" ({len(rewritten)} Block-Sparse heads with top-k != 100"
            " written as vertical_and_slash 1000/6096, as MInference's"
            " search does)" if rewritten else "")
    console.print(f"wrote {paths['minference']}{note}")
  validation = None
  if cfg.validation.enabled:
    unrewritten = assemble_config(record, mcfg.num_layers, mcfg.num_heads,
                                  settings.objective, settings.aggregate)
    configs = {"searched": unrewritten}
    for i, base in enumerate(BASELINE_NAMES):
      configs[base] = baseline_config(record, i, mcfg.num_layers)
    with console.status("making the held-out prompts"):
      held = make_samples(loaded.tokenizer, cfg.seq_len,
                          cfg.validation.samples.counts(), cfg.seed,
                          held_out=True)
    record.data["run"]["held_out"] = [s.name for s in held]
    progress, task = _progress(console, mcfg.num_layers, "held-out check")
    with progress:
      progress.update(task, completed=len(record.data["validation"]))
      run_validation(mcfg, loaded.params, np.stack([s.tokens for s in held]),
                     record, configs, settings,
                     on_layer=lambda layer, s: progress.advance(task))
    validation = validation_summary(record.data["validation"],
                                    mcfg.num_layers, cfg.seq_len)
    for cname, row in validation.items():
      console.print(f"held-out {cname:>14}: recall {row['recall']:.4f},"
                    f" output error {row['output_error']:.4f}, kernel"
                    f" density {row['kernel_density']:.3f}")
  if cfg.results:
    summary = search_summary(record.layers, searched, cfg.seq_len)
    info = {**{k: record.data["run"].get(k) for k in (
        "command", "git", "jax", "device", "samples", "held_out")},
            "model": name, "objective": settings.objective,
            "aggregate": settings.aggregate,
            "target": target.describe(cfg.seq_len),
            "held_out": ", ".join(record.data["run"].get("held_out", []))}
    info["samples"] = len(samples)
    length = (f"{cfg.seq_len // 1024}k" if cfg.seq_len % 1024 == 0
              else str(cfg.seq_len))
    stem = f"search_{_slug(name)}_{length}"
    for p in write_report(cfg.results, stem, summary, validation, info,
                          searched):
      console.print(f"wrote {p}")


def _relative(path: str | None) -> str | None:
  """A path relative to the checkout when inside it, else its name (no
  machine paths in results)."""
  if path is None:
    return None
  p = Path(path).resolve()
  try:
    return str(p.relative_to(REPO_DIR))
  except ValueError:
    return p.name


def _dense(res) -> float:
  tb = -(-res.seq_len // 64)
  return tb * (tb + 1) / 2


def _slug(name: str) -> str:
  return "".join(c if c.isalnum() else "-" for c in name.lower()).strip("-")
