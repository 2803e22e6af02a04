"""The bench-prefill config: YAML under configs/experiments/prefill_*.yaml.

One model per config, several *cases* (an attention setting timed at every
length in `seq_lens` it applies to), optional phase breakdowns for some
cases. Every field is checked here or, where it needs a file or the model's
geometry, by `experiments.bench_prefill.validate` before any slow work.
"""

import dataclasses
from typing import Any, Literal

from models.partitioning import MeshConfig

ATTENTION_KINDS = ("dense", "vertical_slash", "minference", "searched",
                   "pattern_file")
IMPLEMENTATIONS = ("auto", "triton", "mosaic_gpu", "xla")
MODES = ("prefill", "cache", "cache_host")
EXECUTORS = ("layerwise", "model", "pieces")

Attention = Literal["dense", "vertical_slash", "minference", "searched",
                    "pattern_file"]
Implementation = Literal["auto", "triton", "mosaic_gpu", "xla"]
Mode = Literal["prefill", "cache", "cache_host"]
Executor = Literal["layerwise", "model", "pieces"]


@dataclasses.dataclass(frozen=True)
class ModelSpec:
  """Which model runs.

  Attributes:
    source: "preset" (a `ModelConfig.preset` geometry with random weights
      drawn on the device, random token ids), "slice" (a model slice of
      `experiments.model_slice`: a real model's first layers and
      real text) or "checkpoint" (`models.load_model(path)`: a GGUF file or
      an HF checkpoint, with `tokens_file`'s token ids).
    preset: the preset name (source "preset"), e.g. "llama3_8b_1048k".
    overrides: ModelConfig fields replaced on the preset (e.g. a smaller
      hidden size for CPU tests).
    path: the slice file (source "slice") or the checkpoint.
    tokens_file: a .npy of token ids (>= the longest length) for source
      "checkpoint" (e.g. a slice's text: `original_tokens()`); None:
      random ids.
    dtype: parameter and activation dtype.
    weight_std: standard deviation of the random weights.
    seed: weights and tokens seed.
    rope_scaling: an HF `rope_scaling` mapping applied to the model (e.g.
      {rope_type: dynamic, factor: 128}) to extend its context; None: its
      own RoPE.
    beyond_context: run lengths past the model's context with its own RoPE
      (timing studies; said so at the start); otherwise they are refused.
  """

  source: Literal["preset", "slice", "checkpoint"] = "preset"
  preset: str = "llama3_8b_1048k"
  overrides: dict[str, Any] = dataclasses.field(default_factory=dict)
  path: str = ".device_cache/smollm2_slice.npz"
  tokens_file: str | None = None
  dtype: Literal["bfloat16", "float32"] = "bfloat16"
  weight_std: float = 0.02
  seed: int = 0
  rope_scaling: dict[str, Any] | None = None
  beyond_context: bool = False

  def __post_init__(self):
    if self.weight_std <= 0:
      raise ValueError(f"weight_std must be > 0, got {self.weight_std}")
    if self.source != "preset" and (self.overrides or self.preset !=
                                    ModelSpec.preset
                                    or self.weight_std != 0.02):
      raise ValueError(f"model.source={self.source!r} reads the model from"
                       " model.path; model.preset, model.overrides and"
                       " model.weight_std apply to source 'preset' only")
    if self.source != "checkpoint" and self.tokens_file:
      raise ValueError("model.tokens_file applies to source 'checkpoint'"
                       f" only (source is {self.source!r})")


@dataclasses.dataclass(frozen=True)
class CaseSpec:
  """One attention setting, timed at every applicable length.

  Attributes:
    label: unique name of the case (rows, plot legend, `phases`).
    attention: "dense"; "vertical_slash" (VerticalSlash(*vs_budget) on every
      head); "minference" (the MInference file `minference_config`);
      "searched" (our searched config `searched_config`); "pattern_file"
      (`pattern_file`, ours or MInference's format).
    indices: "online" (the library's estimate at run time, through
      `make_attention`) or "replay" (index sets recorded from a real
      model's heads; Vertical-Slash configs only; see `replay`).
    implementation: sparse kernels: "auto" (what `make_attention(backend=
      "auto")` picks), "triton", "mosaic_gpu", or "xla" (the gather path,
      any device).
    dense_threshold: prefills shorter than this run dense; None takes
      `make_attention`'s default for "auto" and 0 for the others.
    layers: None (every layer), n (the first n layers) or a list of layer
      indices of the full model; times of a subset are scaled to all
      layers and labelled so.
    modes: "prefill" (no KV cache), "cache" (K/V of every layer kept on the
      device, in a `models.KVCache`), "cache_host" (kept in pinned host
      memory; always the "pieces" executor, the library keeps no host
      cache).
    executor: "layerwise" (the library's `models.LayerwisePrefill`, what
      `CausalLM` runs for long prompts: one executable per distinct layer,
      dispatched back to back), "model" (`models.forward` under one jit,
      what `CausalLM` runs for short prompts) or "pieces" (the benchmark's
      own layerwise executor, experiments/prefill/pieces.py). On a
      multi-device mesh every case runs `models.make_sharded_prefill`.
    min_len, max_len: lengths outside [min_len, max_len] are skipped.
    pattern_file: the file of attention "pattern_file".
    optional: a missing pattern file skips the case (its rows say why)
      instead of stopping the run.
    shared_steps: run a per-head pattern config as one pattern table per
      layer (`models.shared_step_attention`): one compiled layer step where
      layers with different patterns would compile one each, at the price
      of every layer launching every pattern group of the config (online
      indices, executors "layerwise", "model" and the mesh only).
  """

  label: str
  attention: Attention = "vertical_slash"
  indices: Literal["online", "replay"] = "online"
  implementation: Implementation = "auto"
  dense_threshold: int | None = None
  layers: int | tuple[int, ...] | None = None
  modes: tuple[Mode, ...] = ("prefill",)
  executor: Executor = "layerwise"
  min_len: int = 0
  max_len: int = 1 << 40
  pattern_file: str | None = None
  optional: bool = False
  shared_steps: bool = False

  def __post_init__(self):
    if not self.label or any(c in self.label for c in "/\\ "):
      raise ValueError(f"case label {self.label!r} must be a non-empty name"
                       " without spaces or slashes")
    if self.indices == "replay" and self.attention == "dense":
      raise ValueError(f"case {self.label!r}: replayed indices need a"
                       " sparse attention, not 'dense'")
    if self.attention == "pattern_file" and not self.pattern_file:
      raise ValueError(f"case {self.label!r}: attention 'pattern_file'"
                       " needs pattern_file")
    if self.executor == "model" and (self.indices == "replay"
                                     or "cache_host" in self.modes):
      raise ValueError(f"case {self.label!r}: executor 'model' runs"
                       " `models.forward`, which takes neither replayed"
                       " indices nor a host cache; use 'layerwise'")
    if not self.modes or len(set(self.modes)) != len(self.modes):
      raise ValueError(f"case {self.label!r}: modes must be distinct and"
                       f" non-empty, got {self.modes}")
    if self.dense_threshold is not None and self.dense_threshold < 0:
      raise ValueError(f"case {self.label!r}: dense_threshold must be >= 0")
    if isinstance(self.layers, int) and self.layers < 1:
      raise ValueError(f"case {self.label!r}: layers must be >= 1")
    if isinstance(self.layers, tuple) and (
        not self.layers or min(self.layers) < 0
        or len(set(self.layers)) != len(self.layers)):
      raise ValueError(f"case {self.label!r}: layers must be distinct"
                       f" indices >= 0, got {self.layers}")
    if self.min_len > self.max_len:
      raise ValueError(f"case {self.label!r}: min_len > max_len")
    if self.pattern_file and self.attention != "pattern_file":
      raise ValueError(f"case {self.label!r}: pattern_file is read by"
                       " attention 'pattern_file' only, not"
                       f" {self.attention!r}")
    if self.attention == "dense" and self.dense_threshold is not None:
      raise ValueError(f"case {self.label!r}: dense_threshold has no effect"
                       " on a dense case")
    if self.shared_steps and (
        self.attention in ("dense", "vertical_slash")
        or self.indices == "replay" or self.executor == "pieces"
        or "cache_host" in self.modes):
      raise ValueError(f"case {self.label!r}: shared_steps applies to a"
                       " per-head pattern config (minference, searched,"
                       " pattern_file) with online indices, run by the"
                       " 'layerwise' or 'model' executor without a host"
                       " cache")


@dataclasses.dataclass(frozen=True)
class ReplaySpec:
  """Where recorded index sets come from (cases with indices "replay").

  Attributes:
    index_dirs: folders searched in order for
      `model_head_indices_T<T>.npz` (written by `experiments.
      model_head_indices`).
    slice_path: the model slice that records missing lengths.
    record_missing: record a missing length from the slice (eager run of
      its layers; seconds to a minute on a GPU) instead of failing.
    record_dir: where recordings go (default: the first index_dirs entry).
    keep_estimate: also run the online estimate on the layer's own q/k and
      keep its result alive, so the replayed layer pays what the online
      path pays for it (only the lines come from the recording).
  """

  index_dirs: tuple[str, ...] = ("experiments/results",)
  slice_path: str = ".device_cache/smollm2_slice.npz"
  record_missing: bool = False
  record_dir: str | None = None
  keep_estimate: bool = True


@dataclasses.dataclass(frozen=True)
class TimingSpec:
  """Median of repeats after warm-up runs; compile is timed separately.

  A warm-up run longer than `budget_s` is the measurement (one repeat,
  flagged); otherwise the repeats fill `budget_s` within
  [min_repeats, max_repeats].
  """

  warmup: int = 1
  min_repeats: int = 1
  max_repeats: int = 5
  budget_s: float = 30.0

  def __post_init__(self):
    if self.warmup < 1 or self.min_repeats < 1:
      raise ValueError("warmup and min_repeats must be >= 1")
    if self.max_repeats < self.min_repeats:
      raise ValueError("max_repeats must be >= min_repeats")


@dataclasses.dataclass(frozen=True)
class PrefillConfig:
  """Everything one `minference-jax bench-prefill` run does.

  Attributes:
    name: result files are `<out_dir>/<name>.{json,md,png}`.
    out_dir: output folder.
    model: the model (ModelSpec).
    seq_lens: prompt lengths T, run in ascending order.
    batch: B.
    cases: the attention settings (CaseSpec), at least one.
    chunk_size: tokens per chunk of the norms, projections and MLP (None:
      unchunked).
    vs_budget: (n_vertical, n_slash) of attention "vertical_slash".
    minference_config: MInference's published config file, read at run
      time (never copied into the repo).
    searched_config: our searched config for the model (attention
      "searched").
    replay: ReplaySpec.
    timing: TimingSpec.
    only: run only these case labels (empty: all); the others keep their
      rows from `resume_from`.
    phases: labels of cases that also get a phase breakdown.
    phase_lens: lengths of the breakdowns (empty: every length).
    phase_index_layers: at most this many layers get their index build
      timed when a case's layers have different patterns (the mean is
      applied to the others); every layer otherwise.
    skip_over_memory: skip a (case, length, mode) whose estimated peak
      exceeds the device memory (recorded as skipped, with the estimate).
    device_memory_gib: device memory for that check (None: the device's
      `bytes_limit`; no check where the backend has no statistics).
    crossover: compute the dense/sparse crossover per implementation at
      the layer and model level from the rows.
    resume: skip (case, length, mode) rows already in the output JSON.
    resume_from: read earlier rows from this JSON instead of the output's
      (e.g. a committed result, when each GPU call starts empty); the
      output then holds the earlier rows and the new ones.
    compilation_cache_dir: JAX's persistent compilation cache (identical
      pieces of different cases compile once); None: off.
    plot: write the latency-vs-length plot.
    interpret: Pallas interpret mode (CPU dry runs of the GPU kernels).
    mesh: a device mesh, `{data, sequence, tensor}` sizes and optional
      `rules` (models.MeshConfig.from_dict): with more than one device
      every case runs `models.make_sharded_prefill` (prefill mode; online
      or replayed indices); None: one device.
  """

  name: str = "prefill"
  out_dir: str = "outputs/prefill"
  model: ModelSpec = ModelSpec()
  seq_lens: tuple[int, ...] = (32768, 131072, 524288, 1048576)
  batch: int = 1
  cases: tuple[CaseSpec, ...] = (CaseSpec("dense", attention="dense"),)
  chunk_size: int | None = 65536
  vs_budget: tuple[int, int] = (1000, 6096)
  minference_config: str = (
      ".device_cache/minference_configs/"
      "Llama_3_8B_Instruct_262k_kv_out_v32_fit_o_best_pattern.json")
  searched_config: str = "configs/patterns/smollm2-135m-instruct.json"
  replay: ReplaySpec = ReplaySpec()
  timing: TimingSpec = TimingSpec()
  only: tuple[str, ...] = ()
  phases: tuple[str, ...] = ()
  phase_lens: tuple[int, ...] = ()
  phase_index_layers: int = 4
  skip_over_memory: bool = True
  device_memory_gib: float | None = None
  crossover: bool = False
  resume: bool = True
  resume_from: str | None = None
  compilation_cache_dir: str | None = None
  plot: bool = True
  interpret: bool = False
  mesh: dict[str, Any] | None = None

  def __post_init__(self):
    if not self.seq_lens or min(self.seq_lens) < 1:
      raise ValueError(f"seq_lens must be positive, got {self.seq_lens}")
    if self.batch < 1:
      raise ValueError(f"batch must be >= 1, got {self.batch}")
    if not self.cases:
      raise ValueError("cases must list at least one case")
    labels = [c.label for c in self.cases]
    dup = sorted({x for x in labels if labels.count(x) > 1})
    if dup:
      raise ValueError(f"case labels must be unique; repeated: {dup}")
    for field in ("phases", "only"):
      unknown = sorted(set(getattr(self, field)) - set(labels))
      if unknown:
        raise ValueError(f"{field} names unknown cases {unknown}; cases:"
                         f" {labels}")
    if self.chunk_size is not None and self.chunk_size < 1:
      raise ValueError(f"chunk_size must be >= 1 or null, got"
                       f" {self.chunk_size}")
    if min(self.vs_budget) < 1:
      raise ValueError(f"vs_budget must be positive, got {self.vs_budget}")
    if self.phase_index_layers < 1:
      raise ValueError("phase_index_layers must be >= 1")
    if not self.name or "/" in self.name:
      raise ValueError(f"name {self.name!r} must be a file name")
    if self.mesh is not None:
      MeshConfig.from_dict(self.mesh)  # ValueError names the bad key

  def case(self, label: str) -> CaseSpec:
    return next(c for c in self.cases if c.label == label)

  def lengths_for(self, case: CaseSpec) -> list[int]:
    """The case's lengths, ascending."""
    return sorted(t for t in set(self.seq_lens)
                  if case.min_len <= t <= case.max_len)
