"""InfiniteBench-style synthetic retrieval tasks (Zhang et al., 2024,
"InfiniteBench: Extending Long Context Evaluation Beyond 100K Tokens",
arXiv 2402.13718): Retrieve.PassKey, Retrieve.Number, Retrieve.KV and
Math.Find, regenerated offline with the structure of the benchmark's
synthetic construction (noise filler, random digits, UUID pairs, integer
lists). Prompts are written for this project. Retrieve.KV reuses
`kv_retrieval.make_kv_retrieval_prompt`.

Each `make_*` returns a builder: n context units -> TaskPrompt (facts fixed
by the seed), for `prompting.fit_units`.
"""

import random
from collections.abc import Callable

from experiments.datasets.kv_retrieval import make_kv_retrieval_prompt
from experiments.datasets.prompting import TaskPrompt, insert_at_depth
from experiments.datasets.ruler import NOISE

Builder = Callable[[int], TaskPrompt]

_RETRIEVE_INSTRUCTION = ("Somewhere in the repetitive text below there is"
                         " one important fact. Find it and remember it: I"
                         " will ask about it afterwards.")


def _retrieval(seed: int, depth: float | None, fact: str, question: str,
               answer_prefix: str, answer: str, name: str) -> Builder:
  rng = random.Random(seed)
  where = rng.random() if depth is None else depth

  def build(n: int) -> TaskPrompt:
    units = [NOISE] * n
    index = insert_at_depth(units, fact, where)
    return TaskPrompt(
        instruction=_RETRIEVE_INSTRUCTION,
        context=" ".join(units),
        question=question,
        answer_prefix=answer_prefix,
        references=(answer,),
        filler=" " + NOISE,
        depth=index / max(len(units) - 1, 1),
        meta={name: answer, "num_units": n},
    )

  return build


def make_passkey(seed: int, depth: float | None = None) -> Builder:
  """Retrieve.PassKey: a 5-digit pass key hidden in noise sentences."""
  rng = random.Random(seed ^ 0x5A5A)
  key = str(rng.randrange(10_000, 100_000))
  fact = f"The pass key is {key}. Remember it. {key} is the pass key."
  return _retrieval(seed, depth, fact, "What is the pass key?",
                    "The pass key is", key, "passkey")


def make_number_string(seed: int, depth: float | None = None) -> Builder:
  """Retrieve.Number: a 10-digit string (digits may repeat) in noise."""
  rng = random.Random(seed ^ 0x3C3C)
  digits = str(rng.randrange(1, 10)) + "".join(
      str(rng.randrange(10)) for _ in range(9))
  fact = (f"The sequence of digits is {digits}. Remember it. {digits} is"
          " the sequence of digits.")
  return _retrieval(seed, depth, fact, "What is the sequence of digits?",
                    "The sequence of digits is", digits, "number")


def make_kv_retrieval(seed: int, depth: float | None = None) -> Builder:
  """Retrieve.KV: the value of one UUID key in a JSON object of n pairs."""

  def build(n: int) -> TaskPrompt:
    kv = make_kv_retrieval_prompt(n, seed, depth)
    body, sep, question = kv.text.rpartition("\n\nKey: ")
    if not sep:  # a changed layout: keep the whole text as the context
      body, question = kv.text, ""
    else:
      question = "Key: " + question
    return TaskPrompt(
        instruction="",
        context=body,
        question=question.rstrip(),
        answer_prefix="",
        references=(kv.answer,),
        depth=kv.depth,
        meta={"key": kv.key, "num_units": n},
    )

  return build


def make_math_find(seed: int, depth: float | None = None) -> Builder:
  """Math.Find: the largest or smallest number of a list of n integers.

  The answer is unique: it is placed once at `depth` and every other entry
  is strictly inside the range.
  """
  rng = random.Random(seed)
  largest = rng.random() < 0.5
  where = rng.random() if depth is None else depth
  answer = rng.randrange(9_000, 10_000) if largest else rng.randrange(0, 100)
  list_seed = rng.getrandbits(32)
  word = "largest" if largest else "smallest"

  def build(n: int) -> TaskPrompt:
    lrng = random.Random(list_seed)
    values = [str(lrng.randrange(100, 9_000)) for _ in range(n)]
    index = insert_at_depth(values, str(answer), where)
    return TaskPrompt(
        instruction="Below is a list of numbers.",
        context=", ".join(values),
        question=f"What is the {word} number in the list above?",
        answer_prefix=f"The {word} number in the list is",
        references=(str(answer),),
        depth=index / max(len(values) - 1, 1),
        meta={"find": word, "num_units": n},
    )

  return build
