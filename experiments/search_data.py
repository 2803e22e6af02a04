"""Calibration and held-out prompts for the pattern search, as token ids.

Two offline kinds, each seeded: InfiniteBench-style KV retrieval (what
MInference searched on, Jiang et al., 2024, section 3.2) and "haystack"
text: the filler sentences of `experiments/needle.py` with one needle and
its question, standing in for real text until a corpus is bundled. Every
prompt goes through the model's chat template (when it has one) and is
middle-truncated to exactly the search length.
"""

import dataclasses
from collections.abc import Mapping

import numpy as np

from experiments.datasets.kv_retrieval import (
    kv_retrieval_tokens,
    middle_truncate,
)
from experiments.needle import make_needle_prompt
from models.tokenizer import Tokenizer

KINDS = ("kv_retrieval", "haystack")
# Held-out prompts use seeds from here on, so they never meet the
# calibration prompts (which use seed + i).
HELD_OUT_SEED_OFFSET = 10_000
_TOKENS_PER_SENTENCE = 9  # a lower bound for the filler sentences


@dataclasses.dataclass(frozen=True)
class Sample:
  """One prompt.

  Attributes:
    kind: "kv_retrieval" or "haystack".
    seed: its generator seed.
    tokens: [T] int32 ids.
  """

  kind: str
  seed: int
  tokens: np.ndarray

  @property
  def name(self) -> str:
    return f"{self.kind}:{self.seed}"


def _encoder(tokenizer: Tokenizer):
  if tokenizer.chat_template is None:
    return tokenizer.encode
  return lambda text: tokenizer.apply_chat_template(
      [{"role": "user", "content": text}], add_generation_prompt=True,
      tokenize=True)


def _haystack_tokens(encode, length: int, seed: int) -> list[int]:
  sentences = max(8, length // _TOKENS_PER_SENTENCE)
  while True:
    needle = make_needle_prompt(sentences, depth=0.5, seed=seed)
    ids = encode(f"{needle.haystack}\n\n{needle.question} Answer with the"
                 " number.")
    if len(ids) >= length:
      return middle_truncate(ids, length)
    sentences *= 2


def make_samples(tokenizer: Tokenizer, length: int,
                 counts: Mapping[str, int], seed: int,
                 held_out: bool = False) -> list[Sample]:
  """Seeded prompts of exactly `length` tokens.

  Args:
    tokenizer: the model's tokenizer.
    length: tokens per prompt.
    counts: prompts per kind, e.g. {"kv_retrieval": 3, "haystack": 1}.
    seed: the run's seed; prompt i of a kind uses seed + i (held out:
      seed + 10000 + i).
    held_out: draw the held-out prompts instead of the calibration ones.

  Returns:
    Samples in KINDS order, then by index.

  Raises:
    ValueError: an unknown kind, a negative count, or a length too short
      for one KV pair.
  """
  unknown = sorted(set(counts) - set(KINDS))
  if unknown:
    raise ValueError(f"unknown sample kinds {unknown}; known: {list(KINDS)}")
  encode = _encoder(tokenizer)
  base = seed + (HELD_OUT_SEED_OFFSET if held_out else 0)
  out = []
  for kind in KINDS:
    n = counts.get(kind, 0)
    if n < 0:
      raise ValueError(f"{kind}: count must be >= 0, got {n}")
    for i in range(n):
      s = base + i
      ids = (kv_retrieval_tokens(encode, length, s) if kind == "kv_retrieval"
             else _haystack_tokens(encode, length, s))
      out.append(Sample(kind, s, np.asarray(ids, np.int32)))
  return out
