"""One head's entry in a pattern config file, in our JSON and in
MInference's, and reading a config file with errors that name it."""

import json
import os
import re
from pathlib import Path
from typing import Any

from minference_jax.patterns import (
    PATTERN_TYPES,
    AShape,
    BlockSparse,
    Pattern,
    PatternKind,
    VerticalSlash,
)

# MInference's pattern names (`minference/modules/minference_forward.py`).
MINF_VERTICAL_SLASH = "vertical_and_slash"
MINF_STREAM_LLM = "stream_llm"
MINF_BLOCK_SPARSE = "block_sparse"
# MInference's block-sparse kernel uses a fixed top-k of 100 64x64 blocks and
# ignores the two numbers stored in the config.
MINF_BLOCK_SPARSE_TOP_K = 100

Score = int | float | None

HEAD_KEY = re.compile(r"0|[1-9][0-9]*")
# Named fields of each pattern kind in our JSON (besides "kind").
FIELDS = {
    PatternKind.DENSE: (),
    PatternKind.A_SHAPE: ("n_init", "n_local"),
    PatternKind.VERTICAL_SLASH: ("n_vertical", "n_slash", "last_q"),
    PatternKind.BLOCK_SPARSE: ("top_k", "block"),
}
CLASSES = {cls.kind: cls for cls in PATTERN_TYPES}
# Fields that may be left out of our JSON (they have standard defaults).
OPTIONAL_FIELDS = ("last_q", "block")
OPTIONAL_HEAD_FIELDS = ("score", "defaulted", "minference_sizes")


def is_int(x: Any) -> bool:
  return isinstance(x, int) and not isinstance(x, bool)


def is_score(x: Any) -> bool:
  return x is None or (isinstance(x, (int, float)) and not isinstance(x, bool))


def head_label(layer: int, head: int) -> str:
  return f"layer {layer}, head {head}"


def read_json_file(path: str | os.PathLike, parse: Any) -> Any:
  """`parse(json of the file)`, every error naming the file.

  Raises:
    FileNotFoundError: no such file.
    ValueError: an empty file, text that is not JSON, or what `parse`
      raises (ValueError, TypeError, KeyError), prefixed with the path.
  """
  text = Path(path).read_text()
  if not text.strip():
    raise ValueError(f"pattern config {path} is empty")
  try:
    data = json.loads(text)
  except json.JSONDecodeError as e:
    raise ValueError(f"pattern config {path} is not JSON ({e})") from None
  try:
    return parse(data)
  except (ValueError, TypeError, KeyError) as e:
    raise ValueError(f"pattern config {path}: {e}") from None


def parse_named_head(
    entry: Any, layer: int, head: int
) -> tuple[Pattern, dict[str, Any]]:
  """One head of our JSON -> (pattern, optional extras)."""
  where = head_label(layer, head)
  if not isinstance(entry, dict):
    raise ValueError(f"{where}: expected an object, got {type(entry).__name__}")
  kind_name = entry.get("kind")
  try:
    kind = PatternKind(kind_name)
  except ValueError:
    known = [k.value for k in PatternKind]
    raise ValueError(
        f"{where}: unknown kind {kind_name!r}, expected one of {known}"
    ) from None
  fields = FIELDS[kind]
  unknown = set(entry) - {"kind", *fields, *OPTIONAL_HEAD_FIELDS}
  if unknown:
    raise ValueError(f"{where}: unknown fields {sorted(unknown)} for {kind}")
  kwargs = {}
  for field in fields:
    if field not in entry and field not in OPTIONAL_FIELDS:
      raise ValueError(f"{where}: {kind.value} needs the field {field!r}")
    if field in entry:
      if not is_int(entry[field]):
        raise ValueError(
            f"{where}: {field} must be an int, got {entry[field]!r}"
        )
      kwargs[field] = entry[field]
  try:
    pattern = CLASSES[kind](**kwargs)
  except (TypeError, ValueError) as e:
    raise ValueError(f"{where}: {e}") from None
  extras: dict[str, Any] = {}
  if "score" in entry:
    if not is_score(entry["score"]):
      raise ValueError(f"{where}: score must be a number or null")
    extras["score"] = entry["score"]
  if "defaulted" in entry:
    if not isinstance(entry["defaulted"], bool):
      raise ValueError(f"{where}: defaulted must be true or false")
    extras["defaulted"] = entry["defaulted"]
  if "minference_sizes" in entry:
    sizes = entry["minference_sizes"]
    if (
        kind is not PatternKind.BLOCK_SPARSE
        or not isinstance(sizes, list)
        or len(sizes) != 2
        or not all(is_int(x) and x >= 0 for x in sizes)
    ):
      raise ValueError(
          f"{where}: minference_sizes must be [v, s] (ints >= 0) on a"
          " block_sparse head"
      )
    extras["minference_sizes"] = tuple(sizes)
  return pattern, extras


def check_head_extent(parsed: list[dict[int, Any]]) -> None:
  """With num_heads inferred: a head key beyond the extent of most layers
  (a stray key that would grow every layer's head count) is refused."""
  tops = sorted(max(heads, default=-1) for heads in parsed)
  usual = tops[len(tops) // 2]  # the median layer's largest head index
  for l, heads in enumerate(parsed):
    stray = sorted(h for h in heads if h > usual)
    if stray and 2 * sum(t > usual for t in tops) < len(tops):
      raise ValueError(
          f"layer {l}, head {str(stray[0])!r}: most layers have heads"
          f" 0..{usual} only; pass num_heads if the model has more heads")


def parse_minference_head(
    entry: Any, layer: int, head: int
) -> tuple[Pattern, int, int, Score]:
  """One MInference `[pattern, v, s, score]` entry -> (pattern, v, s, score)."""
  where = head_label(layer, head)
  if not isinstance(entry, list) or len(entry) != 4:
    n = len(entry) if isinstance(entry, list) else type(entry).__name__
    raise ValueError(f"{where}: expected [pattern, v, s, score], got {n}")
  name, v, s, score = entry
  for label, size in (("v", v), ("s", s)):
    if not is_int(size):
      raise ValueError(f"{where}: size {label}={size!r} is not an integer")
    if size < 0:
      raise ValueError(f"{where}: size {label}={size} is negative")
  if not is_score(score):
    raise ValueError(f"{where}: score {score!r} is not a number or null")
  try:
    if name == MINF_VERTICAL_SLASH:
      pattern = VerticalSlash(n_vertical=v, n_slash=s)
    elif name == MINF_STREAM_LLM:
      pattern = AShape(n_init=v, n_local=s)
    elif name == MINF_BLOCK_SPARSE:
      pattern = BlockSparse(top_k=MINF_BLOCK_SPARSE_TOP_K)
    else:
      known = [MINF_VERTICAL_SLASH, MINF_STREAM_LLM, MINF_BLOCK_SPARSE]
      raise ValueError(f"unknown pattern {name!r}, expected one of {known}")
  except (TypeError, ValueError) as e:
    raise ValueError(f"{where}: {e}") from None
  return pattern, v, s, score

