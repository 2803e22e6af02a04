"""English word lists for synthetic keys and word-counting tasks.

From the PyPI package `wonderwords` (MIT licence; pinned in
requirements.txt), whose noun and adjective lists RULER draws its needle keys
from (Hsieh et al., 2024). Words on its profanity list, words with
non-letters and words shorter than three letters are dropped.
"""

import functools
import importlib.resources
import random


def _read(name: str) -> list[str]:
  text = importlib.resources.files("wonderwords").joinpath(
      f"assets/{name}").read_text()
  return [w.strip() for w in text.splitlines() if w.strip()]


@functools.lru_cache(maxsize=1)
def _lists() -> dict[str, tuple[str, ...]]:
  banned = {w.lower() for w in _read("profanitylist.txt")}

  def clean(words):
    kept = sorted({w.lower() for w in words
                   if w.isalpha() and w.isascii() and len(w) >= 3}
                  - banned)
    return tuple(kept)

  return {kind: clean(_read(f"{kind}list.txt"))
          for kind in ("noun", "adjective", "verb")}


def nouns() -> tuple[str, ...]:
  """Lowercase nouns (sorted, unique)."""
  return _lists()["noun"]


def adjectives() -> tuple[str, ...]:
  """Lowercase adjectives (sorted, unique)."""
  return _lists()["adjective"]


def verbs() -> tuple[str, ...]:
  """Lowercase verbs (sorted, unique)."""
  return _lists()["verb"]


def all_words() -> tuple[str, ...]:
  """Nouns, adjectives and verbs together (sorted, unique)."""
  return tuple(sorted(set(nouns()) | set(adjectives()) | set(verbs())))


def key_phrases(rng: random.Random, count: int) -> list[str]:
  """`count` distinct "adjective-noun" keys (RULER's word keys).

  Raises:
    ValueError: on a negative count.
  """
  if count < 0:
    raise ValueError(f"count must be >= 0, got {count}")
  seen: set[str] = set()
  out: list[str] = []
  while len(out) < count:
    key = f"{rng.choice(adjectives())}-{rng.choice(nouns())}"
    if key not in seen:
      seen.add(key)
      out.append(key)
  return out
