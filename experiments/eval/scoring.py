"""Scorers, as the benchmarks score (0..1 per case; x100 only in tables).

- RULER (Hsieh et al., 2024; `scripts/eval/synthetic/constants.py`): the
  prediction is stripped and control characters become newlines;
  `string_match_all` is the fraction of references found in it
  (case-insensitive substrings), `string_match_part` is 1 if any is.
- InfiniteBench (Zhang et al., 2024; `src/compute_scores.py`): passkey and
  number_string compare the first run of digits of the prediction with the
  label exactly; kv_retrieval splits the prediction on whitespace and
  punctuation and looks for the label as a whole token; math_find compares
  the first number (integer or decimal, sign ignored) numerically.
- MInference's needle test: the number appears as a substring
  (`string_match_all` with one reference).
"""

import re
from collections.abc import Callable, Sequence

_CONTROL = re.compile(r"[\x00-\x1f]")
_DIGITS = re.compile(r"\d+")
_NUMBER = re.compile(r"\d+(?:\.\d+)?")
_KV_SEPARATORS = re.compile(r"[\n:\"'.,?!{}]")


def _clean(prediction: str) -> str:
  return _CONTROL.sub("\n", prediction.strip())


def string_match_all(prediction: str, references: Sequence[str]) -> float:
  """Fraction of references in the prediction (case-insensitive)."""
  if not references:
    raise ValueError("references must not be empty")
  text = _clean(prediction).lower()
  return sum(r.lower() in text for r in references) / len(references)


def string_match_part(prediction: str, references: Sequence[str]) -> float:
  """1.0 if any reference is in the prediction (case-insensitive)."""
  if not references:
    raise ValueError("references must not be empty")
  text = _clean(prediction).lower()
  return float(any(r.lower() in text for r in references))


def first_int_match(prediction: str, references: Sequence[str]) -> float:
  """1.0 iff the first digit run of the prediction equals the label."""
  if not references:
    raise ValueError("references must not be empty")
  found = _DIGITS.search(prediction)
  return float(found is not None and found.group() == references[0])


def kv_token_match(prediction: str, references: Sequence[str]) -> float:
  """1.0 iff the label is one whitespace token of the cleaned prediction."""
  if not references:
    raise ValueError("references must not be empty")
  tokens = _KV_SEPARATORS.sub(" ", prediction).split()
  return float(references[0] in tokens)


def math_find_match(prediction: str, references: Sequence[str]) -> float:
  """1.0 iff the first number of the prediction equals the label."""
  if not references:
    raise ValueError("references must not be empty")
  found = _NUMBER.search(prediction)
  if found is None:
    return 0.0
  label = references[0]
  if re.fullmatch(r"\d+", label):
    try:
      return float(int(found.group().split(".")[0]) == int(label)
                   and "." not in found.group())
    except ValueError:
      return 0.0
  return float(float(found.group()) == float(label))


SCORERS: dict[str, Callable[[str, Sequence[str]], float]] = {
    "string_match_all": string_match_all,
    "string_match_part": string_match_part,
    "first_int_match": first_int_match,
    "kv_token_match": kv_token_match,
    "math_find_match": math_find_match,
}


def score(metric: str, prediction: str, references: Sequence[str]) -> float:
  """The named metric of one prediction.

  Raises:
    KeyError: for an unknown metric name.
  """
  if metric not in SCORERS:
    raise KeyError(f"unknown metric {metric!r}; known: {sorted(SCORERS)}")
  return SCORERS[metric](prediction, references)
