"""The search's run loop: a dense forward whose attention callable searches
each layer, a record file that makes the run resumable, and the held-out
evaluation of the searched config against uniform baselines.

The record (`<out stem>.search.json`) holds a fingerprint of everything
that determines the result (model, samples, space, target, scoring) and
one entry per finished layer, rewritten atomically after every layer: a
killed run loses at most the layer in flight, and a rerun with the same
settings skips the finished layers. The forward pass always uses the same
dense attention, so a resumed run sees the same q/k/v as an uninterrupted
one and writes the same config.
"""

import dataclasses
import json
import math
import os
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from minference_jax.attention import make_attention
from minference_jax.pattern_config import PatternConfig
from minference_jax.patterns import AShape, BlockSparse, Pattern, VerticalSlash
from minference_jax.search import (
    CostTarget,
    LayerSearch,
    SearchSettings,
    SearchSpace,
    score_patterns,
    search_layer,
)
from models import CausalLM, ModelConfig

RECORD_FORMAT = "minference-jax/search-record"
RECORD_VERSION = 1


class RecordMismatch(ValueError):
  """An existing record was made with other settings."""


# ------------------------------------------------------------- encoding
def encode_pattern(p: Pattern) -> list:
  """A search pattern as [kind, first, second] (JSON)."""
  if isinstance(p, AShape):
    return [p.kind.value, p.n_init, p.n_local]
  if isinstance(p, VerticalSlash):
    return [p.kind.value, p.n_vertical, p.n_slash]
  if isinstance(p, BlockSparse):
    return [p.kind.value, p.top_k, 0]
  raise ValueError(f"{p} is not a search pattern")


def decode_pattern(entry: Sequence) -> Pattern:
  kind, a, b = entry
  if kind == "a_shape":
    return AShape(n_init=a, n_local=b)
  if kind == "vertical_slash":
    return VerticalSlash(n_vertical=a, n_slash=b)
  if kind == "block_sparse":
    return BlockSparse(top_k=a)
  raise ValueError(f"unknown pattern kind {kind!r} in a search record")


def _finite(x, digits: int | None = None) -> Any:
  """Nested lists with NaN / inf as None (strict JSON), floats rounded to
  `digits` significant digits."""
  if isinstance(x, np.ndarray):
    x = x.tolist()
  if isinstance(x, list):
    return [_finite(v, digits) for v in x]
  if isinstance(x, float):
    if not math.isfinite(x):
      return None
    return float(f"{x:.{digits}g}") if digits else x
  return x


def _nan(x):
  if isinstance(x, list):
    return [_nan(v) for v in x]
  return math.nan if x is None else x


def _mean_worst(x: np.ndarray, higher_is_better: bool) -> dict:
  """Mean and worst over the samples axis of [B, C, N] (JSON)."""
  worst = x.min(axis=0) if higher_is_better else x.max(axis=0)
  return {"mean": _finite(x.mean(axis=0), 6), "worst": _finite(worst, 6)}


def metrics_entry(recall, error, tiles, covered) -> dict:
  """[B, C, N] metrics as per (candidate, head) aggregates (JSON)."""
  error = np.asarray(error)
  return {
      "recall": _mean_worst(np.asarray(recall), True),
      "output_error": (None if np.isnan(error).all()
                       else _mean_worst(error, False)),
      "tiles": _finite(np.asarray(tiles, np.float64).mean(axis=0), 6),
      "covered": _finite(np.asarray(covered, np.float64).mean(axis=0), 8),
  }


def layer_entry(res: LayerSearch, seconds: float) -> dict:
  """One layer's search result as JSON: patterns, winners, and per
  (candidate, head) the mean and worst over the calibration samples."""
  return {
      "seq_len": res.seq_len,
      "target_tiles": res.target_tiles,
      "candidates": [encode_pattern(p) for p in res.candidates],
      "adjusted": [[encode_pattern(p) for p in row] for row in res.adjusted],
      "winner": [int(c) for c in res.winner],
      "loss": _finite(res.loss, 6),
      **metrics_entry(res.recall, res.output_error, res.tiles, res.covered),
      "baselines": [[encode_pattern(p) for p in row] for row in res.baselines],
      "baseline_tiles": _finite(res.baseline_tiles, 6),
      "seconds": round(seconds, 3),
  }


def winner_score(entry: Mapping, objective: str, aggregate: str) -> list:
  """Per head, the winner's aggregated objective (recall or error)."""
  metric = entry["recall" if objective == "recall" else "output_error"]
  table = np.asarray(_nan(metric[aggregate]), np.float64)  # [C, N]
  return [float(table[c, h]) for h, c in enumerate(entry["winner"])]


# --------------------------------------------------------------- record
def _dumps(data: dict) -> str:
  """The record as JSON: one line per layer entry, the rest indented."""
  parts = []
  for key, value in data.items():
    if key in ("layers", "validation") and value:
      rows = ",\n".join(
          f"  {json.dumps(k)}: {json.dumps(v, separators=(',', ':'))}"
          for k, v in value.items())
      parts.append(f" {json.dumps(key)}: {{\n{rows}\n }}")
    else:
      text = json.dumps(value, indent=1).replace("\n", "\n ")
      parts.append(f" {json.dumps(key)}: {text}")
  return "{\n" + ",\n".join(parts) + "\n}\n"


def _write_atomic(path: Path, data: Any) -> None:
  tmp = path.with_name(path.name + ".tmp")
  tmp.write_text(_dumps(data))
  os.replace(tmp, path)


def _differences(a: Any, b: Any, prefix: str = "") -> list[str]:
  if isinstance(a, dict) and isinstance(b, dict):
    out = []
    for key in sorted(set(a) | set(b)):
      out += _differences(a.get(key), b.get(key), f"{prefix}{key}.")
    return out
  return [] if a == b else [prefix.rstrip(".")]


@dataclasses.dataclass
class SearchRecord:
  """The resumable record of one search (see the module docstring)."""

  path: Path
  data: dict

  @classmethod
  def open(cls, path: str | Path, fingerprint: dict,
           run_info: dict) -> "SearchRecord":
    """Loads the record at `path` (checking its fingerprint) or starts one.

    Raises:
      RecordMismatch: the file holds a run with other settings (names the
        differing keys).
      ValueError: the file is not a search record.
    """
    path = Path(path)
    fingerprint = json.loads(json.dumps(fingerprint))  # JSON-normal form
    if path.exists():
      with open(path) as f:
        data = json.load(f)
      if (not isinstance(data, dict) or data.get("format") != RECORD_FORMAT
          or data.get("version") != RECORD_VERSION):
        raise ValueError(f"{path} is not a {RECORD_FORMAT} v{RECORD_VERSION}"
                         " file")
      diff = _differences(data.get("fingerprint"), fingerprint)
      if diff:
        raise RecordMismatch(
            f"{path} holds a search with other settings ({', '.join(diff)});"
            " delete it to start over, or write to another --out")
      return cls(path, data)
    data = {"format": RECORD_FORMAT, "version": RECORD_VERSION,
            "fingerprint": fingerprint, "run": run_info, "layers": {},
            "validation": {}}
    path.parent.mkdir(parents=True, exist_ok=True)
    record = cls(path, data)
    record.save()
    return record

  def save(self) -> None:
    _write_atomic(self.path, self.data)

  @property
  def layers(self) -> dict[str, dict]:
    return self.data["layers"]

  def put(self, section: str, layer: int, entry: dict) -> None:
    self.data[section][str(layer)] = entry
    self.save()


# ---------------------------------------------------------- the passes
@dataclasses.dataclass(eq=False)
class LayerHook:
  """An attention callable for an eager dense forward: runs `work(layer, q,
  k, v)` on layers `todo` holds, then returns dense attention."""

  work: Callable[[int, jax.Array, jax.Array, jax.Array], None]
  todo: set
  dense: Any = dataclasses.field(
      default_factory=lambda: make_attention(None, backend="dense"))

  def __call__(self, q, k, v, *, layer_idx: int, q_offset: int = 0):
    if layer_idx in self.todo:
      self.work(layer_idx, q, k, v)
    return self.dense(q, k, v, layer_idx=layer_idx, q_offset=q_offset)


def forward_layers(model_config: ModelConfig, params, tokens: np.ndarray,
                   hook: LayerHook) -> None:
  """One eager dense prefill of `tokens` [B, T] through `hook`; stops after
  the last layer `hook.todo` names (later layers are not needed)."""

  class _Done(Exception):
    pass

  last = max(hook.todo)
  work = hook.work

  def work_then_stop(layer, q, k, v):
    work(layer, q, k, v)
    if layer == last:
      raise _Done

  hook = dataclasses.replace(hook, work=work_then_stop)
  model = CausalLM(model_config, params, attention=hook, jit=False)
  try:
    model(jnp.asarray(tokens, jnp.int32), logits_for="last")
  except _Done:
    pass


def run_search(
    model_config: ModelConfig,
    params,
    tokens: np.ndarray,
    record: SearchRecord,
    space: SearchSpace,
    target: CostTarget,
    settings: SearchSettings,
    baselines: Sequence[Pattern] = (),
    on_layer: Callable[[int, LayerSearch, float], None] | None = None,
) -> None:
  """Searches every layer the record does not hold yet.

  Args:
    model_config, params: the model.
    tokens: [B, T] calibration prompts.
    record: the resumable record (updated after every layer).
    space, target, settings: the search (see `search_layer`).
    baselines: uniform candidates brought to the target per head, kept for
      the held-out comparison.
    on_layer: called after each searched layer (progress display).
  """
  todo = {i for i in range(model_config.num_layers)
          if str(i) not in record.layers}
  if not todo:
    return

  def work(layer, q, k, v):
    start = time.perf_counter()
    res, _ = search_layer(q, k, v, space, target, settings, baselines)
    seconds = time.perf_counter() - start
    record.put("layers", layer, layer_entry(res, seconds))
    if on_layer is not None:
      on_layer(layer, res, seconds)

  forward_layers(model_config, params, tokens, LayerHook(work, todo))


def assemble_config(record: SearchRecord, num_layers: int, num_heads: int,
                    objective: str, aggregate: str,
                    block_sparse_rewrite: bool = False,
                    model: str | None = None) -> PatternConfig:
  """The searched pattern config from a complete record.

  Args:
    block_sparse_rewrite: write Block-Sparse winners as MInference's public
      search does, VerticalSlash(1000, 6096).

  Raises:
    ValueError: the record misses a layer or has another head count.
  """
  layers, scores = [], []
  for i in range(num_layers):
    entry = record.layers.get(str(i))
    if entry is None:
      raise ValueError(f"the search record has no result for layer {i}")
    if len(entry["winner"]) != num_heads:
      raise ValueError(f"layer {i} of the record has"
                       f" {len(entry['winner'])} heads, the model"
                       f" {num_heads}")
    row = []
    for h, c in enumerate(entry["winner"]):
      p = decode_pattern(entry["adjusted"][c][h])
      if block_sparse_rewrite and isinstance(p, BlockSparse):
        p = VerticalSlash(1000, 6096)
      row.append(p)
    layers.append(tuple(row))
    scores.append(tuple(winner_score(entry, objective, aggregate)))
  return PatternConfig(layers=tuple(layers), scores=tuple(scores),
                       model=model)


def baseline_config(record: SearchRecord, index: int, num_layers: int,
                    model: str | None = None) -> PatternConfig:
  """Uniform baseline `index` with its per-head budgets at the target."""
  return PatternConfig(layers=tuple(
      tuple(decode_pattern(e) for e in
            record.layers[str(i)]["baselines"][index])
      for i in range(num_layers)), model=model)


def run_validation(
    model_config: ModelConfig,
    params,
    tokens: np.ndarray,
    record: SearchRecord,
    configs: Mapping[str, PatternConfig],
    settings: SearchSettings,
    on_layer: Callable[[int, float], None] | None = None,
) -> None:
  """Scores several pattern configs on held-out prompts, layer by layer.

  Each finished layer's metrics go to the record's "validation" section
  (per config and head: recall and output error, mean and worst over the
  prompts; mean kernel tiles and covered pairs), so this pass resumes too.
  """
  names = list(configs)
  todo = {i for i in range(model_config.num_layers)
          if str(i) not in record.data["validation"]}
  if not todo:
    return

  def work(layer, q, k, v):
    start = time.perf_counter()
    rows = [configs[name].layers[layer] for name in names]
    scores, tiles, _ = score_patterns(q, k, v, rows, settings)
    seconds = time.perf_counter() - start
    record.put("validation", layer, {
        "configs": names,
        **metrics_entry(scores.recall, scores.output_error, tiles,
                        scores.covered),
        "seconds": round(seconds, 3),
    })
    if on_layer is not None:
      on_layer(layer, seconds)

  forward_layers(model_config, params, tokens, LayerHook(work, todo))
