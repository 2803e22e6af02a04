"""The eval command's config: model x attention configs x tasks x lengths.

Read from `configs/eval/NAME.yaml` plus `key=value` overrides through
`experiments.config` (CLI wins, as in lm-eval). Checks that need no model
run here, at parse time: task names, lengths, depths, attention specs and
pattern files.
"""

import dataclasses
import json
from pathlib import Path
from typing import Any, Literal

from experiments.config import ConfigError
from experiments.eval.tasks import TASKS, expand_tasks
from models import LAYERWISE_FROM

AttentionKind = Literal["dense", "vertical_slash", "a_shape", "block_sparse",
                        "pattern_file"]


# The keys each attention kind reads (besides name and kind).
_KIND_KEYS = {
    "dense": (),
    "vertical_slash": ("n_vertical", "n_slash", "scale_from"),
    "a_shape": ("n_init", "n_local", "scale_from"),
    "block_sparse": ("top_k", "scale_from"),
    "pattern_file": ("path",),
}


@dataclasses.dataclass(frozen=True)
class AttentionSpec:
  """One attention config to evaluate.

  Budgets with `scale_from` set are MInference's budgets scaled to the
  length: budget x T / scale_from (at least the pattern's minimum; at most
  what T allows). Without it they are used as given.

  Attributes:
    name: a label for tables and plots (unique in a run).
    kind: "dense", one pattern on every head ("vertical_slash", "a_shape",
      "block_sparse") or "pattern_file" (a per-head config JSON).
    n_vertical, n_slash: Vertical-Slash budgets (MInference: 1000, 6096).
    n_init, n_local: A-shape sinks and window (MInference: 128, 3968).
    top_k: Block-Sparse key blocks of 64 per row block (MInference: 100).
    scale_from: the length the budgets were set for, or None (fixed).
    path: the pattern JSON (kind "pattern_file"): ours or MInference's.
  """

  name: str
  kind: AttentionKind = "dense"
  n_vertical: int = 1000
  n_slash: int = 6096
  n_init: int = 128
  n_local: int = 3968
  top_k: int = 100
  scale_from: int | None = None
  path: str | None = None

  def __post_init__(self):
    if not self.name or "/" in self.name:
      raise ValueError(f"attention name must be non-empty without '/', got"
                       f" {self.name!r}")
    if self.scale_from is not None and self.scale_from < 1:
      raise ValueError(f"{self.name}: scale_from must be >= 1, got"
                       f" {self.scale_from}")
    if self.kind == "pattern_file" and not self.path:
      raise ValueError(f"{self.name}: kind pattern_file needs a path")
    used = _KIND_KEYS[self.kind]
    ignored = [f.name for f in dataclasses.fields(self)
               if f.name not in ("name", "kind", *used)
               and getattr(self, f.name) != f.default]
    if ignored:
      raise ValueError(
          f"attention {self.name!r} (kind {self.kind}) sets {ignored}, which"
          f" this kind ignores; it reads {list(used) or 'no other key'}")


@dataclasses.dataclass(frozen=True)
class ModelSpec:
  """The model and how prompts reach it.

  Attributes:
    path: a .gguf file or HF safetensors directory; None for the bundled
      SmolLM2-135M-Instruct.
    dtype: parameter and activation dtype.
    rope_scaling: an HF `rope_scaling` dict (e.g. {rope_type: dynamic,
      factor: 4}) to run past the trained length; None keeps the model's.
    chat: wrap prompts in the chat template (None: when the tokenizer has
      one).
  """

  path: str | None = None
  dtype: Literal["float32", "bfloat16"] = "float32"
  rope_scaling: dict[str, Any] | None = None
  chat: bool | None = None


@dataclasses.dataclass(frozen=True)
class EvalConfig:
  """A whole evaluation run.

  Attributes:
    name: the run's label (file names, table titles).
    model: the model.
    backend: attention backend for the sparse configs: "xla" (any device),
      "pallas" (GPU kernels; `interpret` runs them on CPU) or "auto"
      (pallas on GPU, xla elsewhere). Sparse heads always run sparse here
      (no dense threshold).
    interpret: Pallas interpret mode (CPU checks of the kernel path).
    attention: the attention configs; the first is the reference (dense).
    run_attention: names of the configs to run now (empty: all); the
      report still covers every config (to split a long run into calls).
    tasks: task or group names (see `tasks.GROUPS`).
    lengths: total tokens per case (prompt + generation reserve), as
      RULER counts length; perplexity reads the first `length` tokens.
    depths: needle depths (0..1) for the tasks in `depth_tasks`; other
      tasks draw a depth per sample from the seed.
    depth_tasks: tasks evaluated over the depth grid.
    samples: cases per task, length (and depth for grid tasks).
    ppl_docs: documents per length for perplexity tasks.
    seed: the base seed of every generator.
    batch_size: rows per prefill (cases of one task and length share a
      shape; the last batch is padded with repeats).
    ppl_batch_size: rows per perplexity prefill (its [B, T, V] float32
      logits bound it: 6.4 GB per row at 32K with a 49K vocabulary).
    generation_reserve: tokens kept free for the answer (the prompt has
      length - reserve tokens; >= every task's max_new_tokens).
    density_samples: prompts per attention config and length on which
      density and attention recall per layer are measured (0: off).
    output_dir: where results.jsonl, the resolved config, tables and plots
      go.
    results_name: if set, the markdown/JSON summary is also written as
      experiments/results/{results_name}.{md,json} (the committed copy).
    report_only: rebuild tables and plots from output_dir/results.jsonl
      without running the model.
    compare_with: another results.jsonl whose answers to compare, case by
      case (e.g. a CPU spot-check against the GPU run).
    resume_from: results.jsonl files of earlier calls whose finished cases
      are copied into this run's file first (a run split over several
      device calls, each with an empty output folder).
    layerwise_from: `models.CausalLM`'s option: prefills of at least this
      many tokens run layer by layer (one compiled step per distinct
      layer, so a config whose layers are alike compiles its kernels once),
      shorter ones as one jitted program over all layers (0: always layer
      by layer; null: never). It changes compile time, not results (equal
      up to rounding), so it is not part of a run's fingerprint.
  """

  name: str = "eval"
  model: ModelSpec = ModelSpec()
  backend: Literal["auto", "xla", "pallas"] = "auto"
  interpret: bool = False
  attention: tuple[AttentionSpec, ...] = (AttentionSpec("dense"),)
  run_attention: tuple[str, ...] = ()
  tasks: tuple[str, ...] = ("niah/needle",)
  lengths: tuple[int, ...] = (2048,)
  depths: tuple[float, ...] = (0.0, 0.25, 0.5, 0.75, 1.0)
  depth_tasks: tuple[str, ...] = ("niah/needle",)
  samples: int = 2
  ppl_docs: int = 2
  seed: int = 0
  batch_size: int = 1
  ppl_batch_size: int = 1
  generation_reserve: int = 128
  density_samples: int = 1
  output_dir: str = "outputs/eval"
  results_name: str | None = None
  report_only: bool = False
  compare_with: str | None = None
  resume_from: tuple[str, ...] = ()
  layerwise_from: int | None = LAYERWISE_FROM

  def __post_init__(self):
    try:
      tasks = expand_tasks(self.tasks)
    except KeyError as e:
      raise ConfigError(f"config key 'tasks': {e.args[0]}") from None
    object.__setattr__(self, "tasks", tasks)
    unknown = [t for t in self.depth_tasks if t not in TASKS]
    if unknown:
      raise ConfigError(f"config key 'depth_tasks': unknown tasks {unknown};"
                        f" tasks: {sorted(TASKS)}")
    if not self.lengths or any(n < 256 for n in self.lengths):
      raise ConfigError(f"config key 'lengths' needs lengths >= 256, got"
                        f" {list(self.lengths)}")
    if any(not 0.0 <= d <= 1.0 for d in self.depths) or not self.depths:
      raise ConfigError(f"config key 'depths' needs values in [0, 1], got"
                        f" {list(self.depths)}")
    for key in ("samples", "ppl_docs", "batch_size", "ppl_batch_size"):
      if getattr(self, key) < 1:
        raise ConfigError(f"config key {key!r} must be >= 1, got"
                          f" {getattr(self, key)}")
    if self.density_samples < 0:
      raise ConfigError("config key 'density_samples' must be >= 0")
    if self.layerwise_from is not None and self.layerwise_from < 0:
      raise ConfigError("config key 'layerwise_from' must be >= 0 or null,"
                        f" got {self.layerwise_from}")
    need = max(TASKS[t].max_new_tokens for t in tasks)
    if self.generation_reserve < need:
      raise ConfigError(
          f"config key 'generation_reserve' is {self.generation_reserve},"
          f" below the largest task budget ({need} new tokens)")
    if min(self.lengths) <= self.generation_reserve:
      raise ConfigError(
          f"lengths must exceed generation_reserve={self.generation_reserve}"
          f", got {list(self.lengths)}")
    names = [a.name for a in self.attention]
    if not names or len(set(names)) != len(names):
      raise ConfigError(f"config key 'attention' needs distinct names, got"
                        f" {names}")
    unknown = sorted(set(self.run_attention) - set(names))
    if unknown:
      raise ConfigError(f"config key 'run_attention': unknown configs"
                        f" {unknown}; attention configs: {names}")

  @property
  def output_path(self) -> Path:
    return Path(self.output_dir)

  def active_attention(self) -> tuple[AttentionSpec, ...]:
    """The attention configs this call runs (`run_attention`, or all)."""
    wanted = set(self.run_attention)
    return tuple(a for a in self.attention if not wanted or a.name in wanted)


def check_pattern_files(cfg: EvalConfig) -> None:
  """Every pattern_file this call runs exists and is JSON (before any slow
  work).

  Raises:
    ConfigError: naming the attention config and the file.
  """
  for path in cfg.resume_from:
    if not Path(path).is_file():
      raise ConfigError(f"config key 'resume_from': {path} does not exist")
  for spec in cfg.active_attention():
    if spec.kind != "pattern_file":
      continue
    path = Path(spec.path)
    if not path.is_file():
      raise ConfigError(
          f"attention {spec.name!r}: pattern file {path} does not exist"
          " (run the pattern search to produce it, or remove this config"
          " from 'attention')")
    try:
      json.loads(path.read_text())
    except (OSError, ValueError) as e:
      raise ConfigError(f"attention {spec.name!r}: pattern file {path} is"
                        f" not valid JSON: {e}") from None


def check_lengths(cfg: EvalConfig, geometry: Any) -> None:
  """Every length fits the model (a models.ModelConfig; with
  `model.rope_scaling`, if any).

  Raises:
    ConfigError: for a length above the model's context, naming both and
      the RoPE-scaling option that extends it.
  """
  # Imported here: the config parses without loading JAX.
  from experiments.model_context import check_context, with_rope_scaling

  config = with_rope_scaling(geometry, cfg.model.rope_scaling,
                             "model.rope_scaling")
  too_long = sorted(n for n in cfg.lengths
                    if n > config.max_position_embeddings)
  if too_long:
    check_context(config, too_long[-1],
                  what=f"lengths {too_long} (prompt plus generation"
                       " reserve)", scaling_key="model.rope_scaling")
