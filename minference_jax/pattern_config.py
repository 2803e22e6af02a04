"""Per-layer, per-head pattern configs: our versioned JSON and MInference's."""

import collections
import dataclasses
import json
import os
from typing import Any, Literal

from minference_jax.pattern_entries import (
    FIELDS,
    HEAD_KEY,
    MINF_BLOCK_SPARSE as MINF_BLOCK_SPARSE,
    MINF_BLOCK_SPARSE_TOP_K as MINF_BLOCK_SPARSE_TOP_K,
    MINF_STREAM_LLM as MINF_STREAM_LLM,
    MINF_VERTICAL_SLASH as MINF_VERTICAL_SLASH,
    Score as Score,
    check_head_extent,
    head_label,
    is_int,
    is_score,
    parse_minference_head,
    parse_named_head,
    read_json_file,
)
from minference_jax.patterns import (
    MINFERENCE_DEFAULT_VS,
    PATTERN_TYPES,
    VS_LAST_Q,
    AShape,
    BlockSparse,
    Pattern,
    PatternKind,
    VerticalSlash,
)

FORMAT_NAME = "minference-jax/pattern-config"
FORMAT_VERSION = 1


@dataclasses.dataclass(frozen=True)
class PatternConfig:
  """Which sparse pattern every (layer, head) of a model uses.

  Hashable (all fields are tuples of hashable values), so it can be static
  configuration under `jax.jit`.

  Attributes:
    layers: `layers[l][h]` is the pattern of query head h in layer l; every
      layer has the same number of heads.
    scores: optional search metric per head (`scores[l][h]`, an int, a float
      or None), kept so that MInference files round-trip exactly; None when
      the config carries no scores at all.
    model: optional free-form model name.
    defaulted: sorted (layer, head) pairs that were absent from a MInference
      file and were filled with MInference's default VerticalSlash(1000, 6096).
    minference_sizes: sorted (layer, head, v, s) rows that keep the two
      numbers of MInference `block_sparse` entries (which its kernel ignores),
      so that export reproduces the file.
  """

  layers: tuple[tuple[Pattern, ...], ...]
  scores: tuple[tuple[Score, ...], ...] | None = None
  model: str | None = None
  defaulted: tuple[tuple[int, int], ...] = ()
  minference_sizes: tuple[tuple[int, int, int, int], ...] = ()

  def __post_init__(self):
    if not isinstance(self.layers, tuple) or not self.layers:
      raise ValueError(
          "layers must be a non-empty tuple of per-layer tuples, got"
          f" {type(self.layers).__name__}"
      )
    num_heads = None
    for l, layer in enumerate(self.layers):
      if not isinstance(layer, tuple) or not layer:
        raise ValueError(f"layers[{l}] must be a non-empty tuple of patterns")
      if num_heads is None:
        num_heads = len(layer)
      elif len(layer) != num_heads:
        raise ValueError(
            f"layer {l} has {len(layer)} heads, layer 0 has {num_heads}"
        )
      for h, pattern in enumerate(layer):
        if not isinstance(pattern, PATTERN_TYPES):
          raise TypeError(
              f"{head_label(l, h)}: expected a Pattern, got"
              f" {type(pattern).__name__}"
          )
    if self.scores is not None:
      if not isinstance(self.scores, tuple) or len(self.scores) != len(
          self.layers
      ):
        raise ValueError("scores must be a tuple with one entry per layer")
      for l, row in enumerate(self.scores):
        if not isinstance(row, tuple) or len(row) != num_heads:
          raise ValueError(f"scores[{l}] must be a tuple of {num_heads} scores")
        for h, score in enumerate(row):
          if not is_score(score):
            raise TypeError(
                f"{head_label(l, h)}: score must be an int, a float or"
                " None, got"
                f" {type(score).__name__}"
            )
    if self.model is not None and not isinstance(self.model, str):
      raise TypeError(f"model must be a str or None, got {type(self.model)}")
    for l, h in self.defaulted:
      self._check_index(l, h)
    if tuple(sorted(set(self.defaulted))) != self.defaulted:
      raise ValueError("defaulted must be sorted (layer, head) pairs, unique")
    for l, h, v, s in self.minference_sizes:
      self._check_index(l, h)
      if not isinstance(self.layers[l][h], BlockSparse):
        raise ValueError(
            f"{head_label(l, h)}: minference_sizes only apply to"
            " BlockSparse heads"
        )
      if not (is_int(v) and is_int(s) and v >= 0 and s >= 0):
        raise ValueError(f"{head_label(l, h)}: sizes must be ints >= 0")
    keys = [(l, h) for l, h, _, _ in self.minference_sizes]
    if sorted(set(keys)) != keys:
      raise ValueError(
          "minference_sizes must be sorted by (layer, head), unique"
      )

  # ----------------------------------------------------------------- access
  @property
  def num_layers(self) -> int:
    return len(self.layers)

  @property
  def num_heads(self) -> int:
    return len(self.layers[0])

  def _check_index(self, layer: int, head: int) -> None:
    if not (is_int(layer) and 0 <= layer < self.num_layers):
      raise ValueError(f"layer={layer!r} out of range [0, {self.num_layers})")
    if not (is_int(head) and 0 <= head < self.num_heads):
      raise ValueError(f"head={head!r} out of range [0, {self.num_heads})")

  def pattern_for(self, layer: int, head: int) -> Pattern:
    """The pattern of query head `head` in layer `layer`.

    Raises:
      ValueError: if layer or head is out of range.
    """
    self._check_index(layer, head)
    return self.layers[layer][head]

  def score_for(self, layer: int, head: int) -> Score:
    """The stored search metric of a head, or None."""
    self._check_index(layer, head)
    return None if self.scores is None else self.scores[layer][head]

  def layer_kinds(self, layer: int) -> tuple[PatternKind, ...]:
    """Distinct pattern kinds of a layer, in PatternKind declaration order."""
    self._check_index(layer, 0)
    present = {p.kind for p in self.layers[layer]}
    return tuple(kind for kind in PatternKind if kind in present)

  @classmethod
  def uniform(
      cls, pattern: Pattern, num_layers: int, num_heads: int, **kwargs
  ) -> "PatternConfig":
    """Every head of every layer uses `pattern`.

    Raises:
      ValueError: if num_layers or num_heads is not a positive int.
    """
    for name, value in (("num_layers", num_layers), ("num_heads", num_heads)):
      if not is_int(value) or value < 1:
        raise ValueError(f"{name} must be a positive int, got {value!r}")
    return cls(layers=((pattern,) * num_heads,) * num_layers, **kwargs)

  # ---------------------------------------------------------------- summary
  def count_by_kind(self) -> dict[PatternKind, int]:
    """Number of heads per pattern kind (kinds that occur only)."""
    counts = collections.Counter(p.kind for row in self.layers for p in row)
    return {kind: counts[kind] for kind in PatternKind if counts[kind]}

  def count_by_pattern(self) -> dict[Pattern, int]:
    """Heads per exact pattern (kind and budget), most common first."""
    counts = collections.Counter(p for row in self.layers for p in row)
    return dict(counts.most_common())

  def summary(self) -> str:
    """A short human-readable description: shape, kinds and budgets."""
    total = self.num_layers * self.num_heads
    name = f"{self.model}: " if self.model else ""
    lines = [f"{name}{self.num_layers} layers x {self.num_heads} heads"]
    for kind, n in self.count_by_kind().items():
      lines.append(f"  {kind.value}: {n} heads ({100.0 * n / total:.1f}%)")
    for pattern, n in self.count_by_pattern().items():
      lines.append(f"    {pattern}: {n}")
    if self.defaulted:
      lines.append(f"  {len(self.defaulted)} heads filled with the default")
    return "\n".join(lines)

  # --------------------------------------------------------------- our JSON
  def to_json_dict(self) -> dict[str, Any]:
    """Our versioned JSON form (named fields per head)."""
    defaulted = set(self.defaulted)
    sizes = {(l, h): (v, s) for l, h, v, s in self.minference_sizes}
    layers = []
    for l, row in enumerate(self.layers):
      out_row = []
      for h, pattern in enumerate(row):
        entry: dict[str, Any] = {"kind": pattern.kind.value}
        for field in FIELDS[pattern.kind]:
          entry[field] = getattr(pattern, field)
        if self.scores is not None:
          entry["score"] = self.scores[l][h]
        if (l, h) in defaulted:
          entry["defaulted"] = True
        if (l, h) in sizes:
          entry["minference_sizes"] = list(sizes[(l, h)])
        out_row.append(entry)
      layers.append(out_row)
    return {
        "format": FORMAT_NAME,
        "version": FORMAT_VERSION,
        "model": self.model,
        "num_layers": self.num_layers,
        "num_heads": self.num_heads,
        "layers": layers,
    }

  @classmethod
  def from_json_dict(cls, data: Any) -> "PatternConfig":
    """Parses our versioned JSON form (see `to_json_dict`).

    Raises:
      ValueError: on a wrong format name or version, wrong layer/head counts,
        unknown kinds or fields, or bad values (naming layer and head).
    """
    if not isinstance(data, dict):
      raise ValueError(f"expected a JSON object, got {type(data).__name__}")
    if data.get("format") != FORMAT_NAME:
      raise ValueError(
          f"format must be {FORMAT_NAME!r}, got {data.get('format')!r}"
      )
    if data.get("version") != FORMAT_VERSION:
      raise ValueError(
          f"unsupported version {data.get('version')!r} (this reader knows"
          f" version {FORMAT_VERSION})"
      )
    unknown = set(data) - {
        "format", "version", "model", "num_layers", "num_heads", "layers"
    }
    if unknown:
      raise ValueError(f"unknown top-level fields {sorted(unknown)}")
    model = data.get("model")
    if model is not None and not isinstance(model, str):
      raise ValueError(f"model must be a string or null, got {model!r}")
    num_layers, num_heads = data.get("num_layers"), data.get("num_heads")
    layers = data.get("layers")
    if not isinstance(layers, list):
      raise ValueError("layers must be a list of per-layer lists")
    if not is_int(num_layers) or num_layers != len(layers):
      raise ValueError(
          f"num_layers={num_layers!r} but the file has {len(layers)} layers"
      )
    patterns, scores = [], []
    any_score, defaulted, sizes = False, [], []
    for l, row in enumerate(layers):
      if not isinstance(row, list) or not is_int(num_heads) or len(
          row
      ) != num_heads:
        n = len(row) if isinstance(row, list) else type(row).__name__
        raise ValueError(f"layer {l}: expected {num_heads!r} heads, got {n}")
      p_row, s_row = [], []
      for h, entry in enumerate(row):
        pattern, extras = parse_named_head(entry, l, h)
        p_row.append(pattern)
        any_score |= "score" in extras
        s_row.append(extras.get("score"))
        if extras.get("defaulted"):
          defaulted.append((l, h))
        if "minference_sizes" in extras:
          sizes.append((l, h) + extras["minference_sizes"])
      patterns.append(tuple(p_row))
      scores.append(tuple(s_row))
    return cls(
        layers=tuple(patterns),
        scores=tuple(scores) if any_score else None,
        model=model,
        defaulted=tuple(defaulted),
        minference_sizes=tuple(sizes),
    )

  def save_json(self, path: str | os.PathLike) -> None:
    """Writes our versioned JSON form to `path`."""
    with open(path, "w") as f:
      json.dump(self.to_json_dict(), f, indent=1)
      f.write("\n")

  @classmethod
  def load_json(cls, path: str | os.PathLike) -> "PatternConfig":
    """Reads our versioned JSON form from `path` (see `from_json_dict`).

    Raises:
      FileNotFoundError: no such file.
      ValueError: naming the file: empty, not JSON, or not a valid config.
    """
    return read_json_file(path, cls.from_json_dict)

  # -------------------------------------------------------- MInference JSON
  @classmethod
  def from_minference_json(
      cls,
      data: Any,
      *,
      num_heads: int | None = None,
      missing: Literal["default", "error"] = "default",
      model: str | None = None,
  ) -> "PatternConfig":
    """Imports MInference's published per-head format.

    The format is a list with one object per layer mapping the head index (a
    string) to `[pattern, v, s, score]`:
    - `"vertical_and_slash"` -> `VerticalSlash(n_vertical=v, n_slash=s)`;
    - `"stream_llm"` -> `AShape(n_init=v, n_local=s)`;
    - `"block_sparse"` -> `BlockSparse(top_k=100)`: MInference's kernel ignores
      v and s; they are kept in `minference_sizes` for an exact export.
    The score (an int, a float or null) is kept in `scores`.

    A head absent from a layer's object is, by default (`missing="default"`),
    given MInference's own fallback `VerticalSlash(1000, 6096)` with score None
    and listed in `defaulted`; `missing="error"` raises instead.

    Args:
      data: the parsed JSON (a list of per-layer objects).
      num_heads: query heads per layer; None infers it as one more than the
        largest head index found in any layer.
      missing: what to do with a head absent from a layer: "default" or
        "error".
      model: optional model name to record.

    Returns:
      The config; `to_minference_json` of it reproduces `data` exactly.

    Raises:
      ValueError: on a malformed file (wrong top-level type, unknown pattern
        name, wrong entry length, non-integer or negative sizes, bad head
        key, head out of range, or with num_heads=None a head key above
        what most layers hold), naming the layer and head; or on a missing
        head with `missing="error"`.
    """
    if missing not in ("default", "error"):
      raise ValueError(f"missing must be 'default' or 'error', got {missing!r}")
    if not isinstance(data, list) or not data:
      raise ValueError(
          "a MInference config is a non-empty JSON list of per-layer objects,"
          f" got {type(data).__name__}"
      )
    parsed: list[dict[int, list]] = []
    for l, layer in enumerate(data):
      if not isinstance(layer, dict):
        raise ValueError(
            f"layer {l}: expected an object mapping head -> entry, got"
            f" {type(layer).__name__}"
        )
      heads = {}
      for key, entry in layer.items():
        if not isinstance(key, str) or not HEAD_KEY.fullmatch(key):
          raise ValueError(
              f"layer {l}, head {key!r}: head keys must be decimal strings"
          )
        heads[int(key)] = entry
      parsed.append(heads)
    seen = max((max(heads, default=-1) for heads in parsed), default=-1) + 1
    if num_heads is None:
      if seen == 0:
        raise ValueError("no heads in any layer: pass num_heads")
      check_head_extent(parsed)
      num_heads = seen
    elif not is_int(num_heads) or num_heads < 1:
      raise ValueError(f"num_heads must be a positive int, got {num_heads!r}")
    patterns, scores, defaulted, sizes = [], [], [], []
    default = VerticalSlash(*MINFERENCE_DEFAULT_VS)
    for l, heads in enumerate(parsed):
      p_row, s_row = [], []
      for h in sorted(heads):
        if h >= num_heads:
          raise ValueError(
              f"{head_label(l, h)}: head index out of range for"
              f" num_heads={num_heads}"
          )
      for h in range(num_heads):
        if h not in heads:
          if missing == "error":
            raise ValueError(
                f"{head_label(l, h)}: head missing from the file")
          p_row.append(default)
          s_row.append(None)
          defaulted.append((l, h))
          continue
        pattern, v, s, score = parse_minference_head(heads[h], l, h)
        if isinstance(pattern, BlockSparse):
          sizes.append((l, h, v, s))
        p_row.append(pattern)
        s_row.append(score)
      patterns.append(tuple(p_row))
      scores.append(tuple(s_row))
    return cls(
        layers=tuple(patterns),
        scores=tuple(scores),
        model=model,
        defaulted=tuple(defaulted),
        minference_sizes=tuple(sizes),
    )

  def to_minference_json(
      self, *, include_defaulted: bool = False
  ) -> list[dict[str, list]]:
    """Exports MInference's per-head format (heads in ascending order).

    Heads listed in `defaulted` are left out (as in the file they came from)
    unless `include_defaulted`. A head without a score gets a null score. A
    BlockSparse head writes its recorded `minference_sizes`, or
    `[top_k, 0]` when none were recorded (MInference ignores both numbers).

    Raises:
      ValueError: for a head MInference cannot express (Dense, VerticalSlash
        with last_q != 64, BlockSparse with top_k != 100), naming it.
    """
    defaulted = set() if include_defaulted else set(self.defaulted)
    sizes = {(l, h): (v, s) for l, h, v, s in self.minference_sizes}
    out = []
    for l, row in enumerate(self.layers):
      layer = {}
      for h, pattern in enumerate(row):
        if (l, h) in defaulted:
          continue
        score = None if self.scores is None else self.scores[l][h]
        if isinstance(pattern, VerticalSlash) and pattern.last_q == VS_LAST_Q:
          entry = [MINF_VERTICAL_SLASH, pattern.n_vertical, pattern.n_slash]
        elif isinstance(pattern, AShape):
          entry = [MINF_STREAM_LLM, pattern.n_init, pattern.n_local]
        elif (
            isinstance(pattern, BlockSparse)
            and pattern.top_k == MINF_BLOCK_SPARSE_TOP_K
        ):
          v, s = sizes.get((l, h), (pattern.top_k, 0))
          entry = [MINF_BLOCK_SPARSE, v, s]
        else:
          raise ValueError(
              f"{head_label(l, h)}: {pattern} has no MInference equivalent"
          )
        layer[str(h)] = entry + [score]
      out.append(layer)
    return out

  @classmethod
  def load_minference_json(
      cls, path: str | os.PathLike, **kwargs
  ) -> "PatternConfig":
    """Reads a MInference config file (see `from_minference_json`); errors
    as `load_json`."""
    return read_json_file(
        path, lambda data: cls.from_minference_json(data, **kwargs))

  def save_minference_json(self, path: str | os.PathLike, **kwargs) -> None:
    """Writes MInference's format to `path` (see `to_minference_json`)."""
    with open(path, "w") as f:
      json.dump(self.to_minference_json(**kwargs), f)


def load_pattern_config(path: str | os.PathLike, *,
                        num_layers: int | None = None,
                        num_heads: int | None = None) -> PatternConfig:
  """Reads a pattern config file in either format, for a model.

  Our versioned JSON (an object with "format") or MInference's (a list of
  per-layer objects; read with `num_heads`, so a head key beyond the
  model's heads is named). Given the model's layer and head counts, a
  config of another shape is refused.

  Args:
    path: the JSON file.
    num_layers: the model's layers (None: not checked).
    num_heads: the model's query heads per layer (None: not checked;
      inferred for a MInference file).

  Raises:
    FileNotFoundError: no such file.
    ValueError: naming the file: empty, not JSON, malformed (naming layer
      and head), or layer / head counts other than the model's.
  """

  def parse(data):
    if isinstance(data, dict):
      return PatternConfig.from_json_dict(data)
    return PatternConfig.from_minference_json(data, num_heads=num_heads)

  cfg = read_json_file(path, parse)
  for what, have, want in (("layers", cfg.num_layers, num_layers),
                           ("heads per layer", cfg.num_heads, num_heads)):
    if want is not None and have != want:
      raise ValueError(f"pattern config {path} has {have} {what}; the model"
                       f" has {want}")
  return cfg
