"""From a case of the config to the attention that runs it.

A case names an attention (dense, Vertical-Slash everywhere, a pattern
file), where its indices come from (online or replayed) and which layers
run. Here the files are read, checked against the model, and turned into
an AttentionFn for the library's executors (experiments/prefill/
executors.py; per-layer replayed lines as a `models.LayerAttentions`) or
per-layer plans for `pieces.PiecesPrefill`.
"""

import dataclasses
import functools
from pathlib import Path

from experiments.config import ConfigError
from experiments.prefill import ops
from experiments.prefill.pieces import LayerPlan
from experiments.prefill.replay import (
    ReplayedLayerAttention,
    ReplayedLines,
    ReplayVerticalSlash,
)
from experiments.prefill.settings import CaseSpec, PrefillConfig
from minference_jax import Pattern, PatternConfig, PatternKind, VerticalSlash
from minference_jax.pattern_config import load_pattern_config
from models import LayerAttentions, ModelConfig, shared_step_attention

Source = PatternConfig | VerticalSlash | None


def _load_pattern_file(path: str, what: str, num_layers: int,
                       num_heads: int) -> PatternConfig:
  p = Path(path)
  if not p.is_file():
    raise ConfigError(f"{what} {p} does not exist")
  try:
    return load_pattern_config(p, num_layers=num_layers, num_heads=num_heads)
  except ValueError as e:
    raise ConfigError(f"{what}: {e}") from None


def pattern_source(cfg: PrefillConfig, case: CaseSpec, model: ModelConfig,
                   full_layers: int | None = None) -> Source:
  """The case's patterns: None (dense), one VerticalSlash, or a config.

  Args:
    cfg, case: the run and the case.
    model: the model's geometry.
    full_layers: the layers of the model a config is written for (a slice
      runs the first layers of a larger model); None: model.num_layers.

  Raises:
    ConfigError: a missing or malformed file, or a config whose layers or
      heads do not match the model.
  """
  full_layers = full_layers or model.num_layers
  kind = case.attention
  if kind == "dense":
    return None
  if kind == "vertical_slash":
    return VerticalSlash(*cfg.vs_budget)
  if kind == "minference":
    if not Path(cfg.minference_config).is_file():
      raise ConfigError(
          f"MInference config {cfg.minference_config} does not exist: copy"
          " MInference's published file there (it is read at run time and"
          " never committed) or set minference_config=PATH")
    source = _load_pattern_file(cfg.minference_config, "minference_config",
                                full_layers, model.num_heads)
  elif kind == "searched":
    if not Path(cfg.searched_config).is_file():
      raise ConfigError(
          f"searched config {cfg.searched_config} does not exist yet: it is"
          " written by the offline pattern search (issue 18); run the"
          " search for this model or drop case"
          f" {case.label!r}")
    source = _load_pattern_file(cfg.searched_config, "searched_config",
                                full_layers, model.num_heads)
  else:
    source = _load_pattern_file(case.pattern_file, "pattern_file",
                                full_layers, model.num_heads)
  return source


def run_layers(case: CaseSpec, num_layers: int) -> list[int]:
  """The full-model layer indices a case runs.

  Raises:
    ConfigError: layers outside the model.
  """
  if case.layers is None:
    return list(range(num_layers))
  if isinstance(case.layers, int):
    if case.layers > num_layers:
      raise ConfigError(f"case {case.label!r}: layers={case.layers} but the"
                        f" model has {num_layers}")
    return list(range(case.layers))
  bad = [i for i in case.layers if i >= num_layers]
  if bad:
    raise ConfigError(f"case {case.label!r}: layers {bad} outside the"
                      f" model's {num_layers}")
  return list(case.layers)


def layer_patterns(source: Source, layer: int,
                   num_heads: int) -> tuple[Pattern, ...] | None:
  if source is None:
    return None
  if isinstance(source, PatternConfig):
    if layer >= source.num_layers:
      raise ConfigError(f"the pattern config has {source.num_layers} layers;"
                        f" layer {layer} has no patterns")
    return source.layers[layer]
  return (source,) * num_heads


def check_replayable(case: CaseSpec, patterns: list[tuple]) -> None:
  """Replay takes Vertical-Slash heads only (the recordings hold lines)."""
  kinds = {p.kind for layer in patterns for p in layer}
  if kinds - {PatternKind.VERTICAL_SLASH}:
    raise ConfigError(f"case {case.label!r}: replayed indices are"
                      " Vertical-Slash lines; the config also has"
                      f" {sorted(k.value for k in kinds)}")


def threshold(case: CaseSpec, kind: PatternKind) -> int:
  """Prefills shorter than this run the case's `kind` heads dense."""
  if case.dense_threshold is not None:
    return case.dense_threshold
  return ops.default_threshold(kind) if case.implementation == "auto" else 0


def _sparse_at(case: CaseSpec, patterns, t: int) -> bool:
  kinds = {p.kind for p in patterns} - {PatternKind.DENSE}
  return any(t >= threshold(case, k) for k in kinds)


def online_attention(cfg: PrefillConfig, case: CaseSpec, source: Source,
                     layers: list[int]):
  """The library attention for the running layers (config rows reordered
  to the run's layer numbering); with `case.shared_steps` one pattern table
  per layer (`models.shared_step_attention`)."""
  if not isinstance(source, PatternConfig):
    return ops.build_attention(source, case.implementation,
                               case.dense_threshold, cfg.interpret)
  source = dataclasses.replace(
      source, layers=tuple(source.layers[i] for i in layers),
      scores=None, defaulted=(), minference_sizes=())
  attention = ops.build_attention(source, case.implementation,
                                  case.dense_threshold, cfg.interpret)
  if case.shared_steps:
    return shared_step_attention(attention, len(layers), source.num_heads)
  return attention


def _index_build(q, k, lines, *, patterns, implementation, interpret):
  del lines  # online: the estimate chooses the lines
  return ops.layer_index_build(q, k, patterns, implementation=implementation,
                               interpret=interpret)


def online_plans(cfg: PrefillConfig, case: CaseSpec, source: Source,
                 layers: list[int], num_heads: int, t: int
                 ) -> tuple[list[LayerPlan], object]:
  """Plans for a case through `make_attention` (dense or online indices).

  Layers with equal patterns share one executable: each calls the
  attention with the first such layer's index (the attention reads
  layer_idx only to look up the layer's patterns).
  """
  attention = online_attention(cfg, case, source, layers)
  impl = ops.resolve_implementation(case.implementation, cfg.interpret)
  plans, first = [], {}
  for run_idx, layer in enumerate(layers):
    pats = layer_patterns(source, layer, num_heads)
    sparse = pats is not None and _sparse_at(case, pats, t)
    # Layers that run dense at this length share one executable too.
    canon = first.setdefault(pats if sparse else "dense", run_idx)

    def attend(q, k, v, lines, canon=canon):
      del lines
      return attention(q, k, v, layer_idx=canon)

    index = (functools.partial(_index_build, patterns=pats,
                               implementation=impl, interpret=cfg.interpret)
             if sparse else None)
    plans.append(LayerPlan(run_idx, ("online", canon), attend, index))
  return plans, attention


def replay_attention(cfg: PrefillConfig, case: CaseSpec,
                     source: Source) -> ReplayVerticalSlash:
  """The attention that runs a replay case's lines (every layer)."""
  impl = ops.resolve_implementation(case.implementation, cfg.interpret)
  pats = [layer_patterns(source, 0, 1)] if not isinstance(
      source, PatternConfig) else list(source.layers)
  estimate = None
  if cfg.replay.keep_estimate:
    estimate = (max(p.n_vertical for layer in pats for p in layer),
                max(p.n_slash for layer in pats for p in layer))
  return ReplayVerticalSlash(
      impl, estimate, threshold(case, PatternKind.VERTICAL_SLASH),
      cfg.interpret)


def replay_layer_attentions(cfg: PrefillConfig, case: CaseSpec,
                            source: Source, lines: ReplayedLines,
                            batch: int) -> LayerAttentions:
  """A replay case as an AttentionFn for the library's layerwise prefill:
  one `ReplayedLayerAttention` per running layer (one executable for all:
  the lines are traced step arguments)."""
  attention = replay_attention(cfg, case, source)
  return LayerAttentions(tuple(
      ReplayedLayerAttention(lines.layer(i, batch), attention)
      for i in range(lines.vertical.shape[0])))


def replay_plans(cfg: PrefillConfig, case: CaseSpec, source: Source,
                 lines: ReplayedLines, t: int,
                 batch: int) -> list[LayerPlan]:
  """Plans for a replay case: one executable for all layers."""
  attention = replay_attention(cfg, case, source)
  sparse = attention.sparse_at(t)
  return [LayerPlan(i, ("replay",), attention.attend,
                    attention.index if sparse else None,
                    lines.layer(i, batch))
          for i in range(lines.vertical.shape[0])]
