"""Seeded needle-in-a-haystack prompts: filler sentences, one hidden fact."""

import dataclasses
import random

_SUBJECTS = (
    "The old lighthouse", "A quiet river", "The village baker", "Our team",
    "The mountain road", "A small library", "The morning train",
    "An orange cat", "The city council", "A traveling musician",
    "The harbour crane", "A young gardener", "The museum guide",
    "An autumn storm", "The night market",
)
_VERBS = (
    "watched", "carried", "painted", "remembered", "followed", "repaired",
    "described", "opened", "visited", "measured", "collected", "explained",
)
_OBJECTS = (
    "the wooden boxes", "a forgotten map", "the long bridge", "seven lanterns",
    "the winter garden", "a bundle of letters", "the stone wall",
    "three blue bicycles", "the empty station", "a basket of apples",
    "the narrow staircase", "an unfinished song",
)
_TAILS = (
    "before the sun went down.", "while the bells were ringing.",
    "without saying a word.", "as the rain began to fall.",
    "on a calm Sunday afternoon.", "near the edge of the town.",
    "for the third time that week.", "with great care and patience.",
)


@dataclasses.dataclass(frozen=True)
class NeedlePrompt:
  """A haystack with one needle and the question that retrieves it."""

  haystack: str  # filler text with the needle inserted
  needle: str  # the inserted sentence
  question: str
  answer: str  # the string a correct reply contains
  depth: float  # relative position of the needle in the haystack


def filler_sentences(count: int, seed: int) -> list[str]:
  """`count` grammatical, meaningless filler sentences (seeded)."""
  rng = random.Random(seed)
  return [
      f"{rng.choice(_SUBJECTS)} {rng.choice(_VERBS)} {rng.choice(_OBJECTS)} "
      f"{rng.choice(_TAILS)}"
      for _ in range(count)
  ]


def make_needle_prompt(
    num_sentences: int = 300, depth: float = 0.5, seed: int = 0
) -> NeedlePrompt:
  """Builds a haystack of `num_sentences` fillers with a passcode at `depth`.

  Args:
    num_sentences: filler sentences (about 11 tokens each for a BPE tokenizer).
    depth: where the needle goes, 0.0 (start) .. 1.0 (end).
    seed: selects the fillers and the passcode.

  Raises:
    ValueError: for a depth outside [0, 1] or a non-positive length.
  """
  if not 0.0 <= depth <= 1.0:
    raise ValueError(f"depth must be in [0, 1], got {depth}")
  if num_sentences < 1:
    raise ValueError(f"num_sentences must be >= 1, got {num_sentences}")
  rng = random.Random(seed)
  code = f"{rng.randrange(1000, 10000)}"
  needle = f"The secret passcode for the blue door is {code}."
  sentences = filler_sentences(num_sentences, seed + 1)
  sentences.insert(round(depth * num_sentences), needle)
  return NeedlePrompt(
      haystack=" ".join(sentences),
      needle=needle,
      question="What is the secret passcode for the blue door?",
      answer=code,
      depth=depth,
  )
