"""Attention configs of an eval run -> per-length patterns and callables.

MInference's default budgets (Jiang et al., 2024, section 4 and the public
code): Vertical-Slash (1000 verticals, 6096 slashes), A-shape (128 sinks +
3968 local), Block-Sparse (top 100 blocks of 64). Scaled configs multiply
them by T / scale_from, so a budget set for a long context keeps its share
of the keys at a shorter one.
"""

import dataclasses
import hashlib
from pathlib import Path

from experiments.config import ConfigError
from experiments.eval.config import AttentionSpec, EvalConfig
from minference_jax import AShape, BlockSparse, Dense, PatternConfig
from minference_jax import VerticalSlash
from minference_jax.attention import make_attention
from minference_jax.pattern_config import load_pattern_config
from minference_jax.patterns import Pattern
from models import shared_step_attention

BLOCK = 64


def _scaled(value: int, spec: AttentionSpec, length: int, low: int) -> int:
  if spec.scale_from is None:
    return value
  return max(low, round(value * length / spec.scale_from))


def pattern_for_length(spec: AttentionSpec, length: int) -> Pattern | None:
  """The single pattern of a uniform config at `length` (None: dense or a
  pattern file)."""
  if spec.kind == "vertical_slash":
    return VerticalSlash(_scaled(spec.n_vertical, spec, length, 30),
                         _scaled(spec.n_slash, spec, length, 50))
  if spec.kind == "a_shape":
    return AShape(_scaled(spec.n_init, spec, length, 4),
                  _scaled(spec.n_local, spec, length, BLOCK))
  if spec.kind == "block_sparse":
    return BlockSparse(_scaled(spec.top_k, spec, length, 1))
  return None


def load_pattern_file(path: str | Path, num_layers: int,
                      num_heads: int) -> PatternConfig:
  """Our JSON (a mapping with "format") or MInference's (a list of layers),
  checked against the model's layer and head counts
  (`minference_jax.pattern_config.load_pattern_config`).

  Raises:
    ConfigError: for an unreadable file or the wrong geometry.
  """
  try:
    return load_pattern_config(path, num_layers=num_layers,
                               num_heads=num_heads)
  except (OSError, ValueError) as e:
    raise ConfigError(str(e)) from None


@dataclasses.dataclass(frozen=True)
class ResolvedAttention:
  """One attention config at one length.

  Attributes:
    spec: the config as written.
    length: the prompt length it serves.
    patterns: the PatternConfig, a single Pattern, or None (dense).
    backend: "dense", "xla" or "pallas".
  """

  spec: AttentionSpec
  length: int
  patterns: PatternConfig | Pattern | None
  backend: str

  def layer_patterns(self, layer: int, num_heads: int) -> tuple[Pattern,
                                                                ...]:
    """Per-head patterns of a layer (Dense() everywhere for dense)."""
    if self.patterns is None:
      return (Dense(),) * num_heads
    if isinstance(self.patterns, PatternConfig):
      return self.patterns.layers[layer]
    return (self.patterns,) * num_heads

  def describe(self) -> dict:
    """A canonical JSON-able description (part of the run fingerprint)."""
    spec = dataclasses.asdict(self.spec)
    if self.spec.kind == "pattern_file":
      digest = hashlib.sha256(Path(self.spec.path).read_bytes()).hexdigest()
      spec["file_sha256"] = digest[:16]
    pattern = (None if not isinstance(self.patterns, (AShape, VerticalSlash,
                                                     BlockSparse))
               else {"type": type(self.patterns).__name__,
                     **dataclasses.asdict(self.patterns)})
    return {"spec": spec, "pattern": pattern, "backend": self.backend}

  def make(self, interpret: bool = False):
    """The attention callable (sparse heads always sparse: threshold 0).

    A PatternConfig runs as one pattern table per layer
    (`models.shared_step_attention`): a layer-by-layer prefill then
    compiles one layer step whatever its layers' patterns, where a config
    whose layers all differ (a searched one) would compile one per layer.
    The outputs are those of `MInferenceAttention` (tested), so this is not
    part of the run's fingerprint.
    """
    if self.patterns is None:
      return make_attention(None, backend="dense")
    attention = make_attention(self.patterns, backend=self.backend,
                               dense_threshold=0, interpret=interpret)
    if isinstance(self.patterns, PatternConfig):
      return shared_step_attention(attention, self.patterns.num_layers,
                                   self.patterns.num_heads)
    return attention


def resolve_backend(backend: str, platform: str) -> str:
  """"auto" -> "pallas" on GPU, "xla" elsewhere."""
  if backend == "auto":
    return "pallas" if platform == "gpu" else "xla"
  return backend


def resolve(cfg: EvalConfig, spec: AttentionSpec, length: int,
            num_layers: int, num_heads: int,
            platform: str) -> ResolvedAttention:
  """The config at one prompt length, on this platform."""
  if spec.kind == "dense":
    return ResolvedAttention(spec, length, None, "dense")
  backend = resolve_backend(cfg.backend, platform)
  if spec.kind == "pattern_file":
    patterns = load_pattern_file(spec.path, num_layers, num_heads)
  else:
    patterns = pattern_for_length(spec, length)
  return ResolvedAttention(spec, length, patterns, backend)
