"""Needle-in-a-haystack over long prose (Kamradt, 2023; MInference's
variant, Jiang et al., 2024, section 4): a sentence "The special magic
{city} number is: {7 digits}." hidden at a chosen depth of a book, and the
question for it. Scored by whether the number appears in the answer.

The haystack is the King James Bible (`prose.py`), standing in for PG-19;
each seed starts at another verse. The grid helpers give MInference's
length x depth grid: depths are evenly spaced percentages from 0 to 100.
"""

import random

from experiments.datasets import prose
from experiments.datasets.prompting import TaskPrompt, insert_at_depth
from experiments.datasets.ruler import Builder

CITIES = (
    "Lisbon", "Nairobi", "Oslo", "Lima", "Hanoi", "Quito", "Tbilisi",
    "Dakar", "Helsinki", "Montevideo", "Kyoto", "Valparaiso", "Accra",
    "Reykjavik", "Tallinn", "Cusco", "Marrakesh", "Bergen", "Adelaide",
    "Winnipeg", "Seville", "Krakow", "Porto", "Zanzibar", "Antwerp",
    "Salzburg", "Galway", "Mombasa", "Cordoba", "Trieste",
)


def depth_grid(count: int) -> list[float]:
  """`count` evenly spaced depths from 0.0 to 1.0 (MInference uses 10).

  Raises:
    ValueError: on count < 1.
  """
  if count < 1:
    raise ValueError(f"count must be >= 1, got {count}")
  if count == 1:
    return [0.5]
  return [round(i / (count - 1), 4) for i in range(count)]


def make_needle(seed: int, depth: float | None = None) -> Builder:
  """The needle task: n haystack verses with the needle at `depth`.

  Args:
    seed: fixes the city, the number and the first verse of the haystack.
    depth: relative position of the needle (0..1); None: random.

  Returns:
    A builder: n verses -> TaskPrompt.

  Raises:
    ValueError: for a depth outside [0, 1].
  """
  if depth is not None and not 0.0 <= depth <= 1.0:
    raise ValueError(f"depth must be in [0, 1], got {depth}")
  rng = random.Random(seed)
  city = rng.choice(CITIES)
  number = str(rng.randrange(1_000_000, 10_000_000))
  where = rng.random() if depth is None else depth
  start = rng.randrange(len(prose.sentences()))
  needle = f"The special magic {city} number is: {number}."

  def build(n: int) -> TaskPrompt:
    units = prose.haystack_units(n, start)
    index = insert_at_depth(units, needle, where)
    return TaskPrompt(
        instruction=("A special magic number is hidden somewhere in the"
                     " book excerpt below. Read it carefully: you will be"
                     " asked for the number."),
        context=" ".join(units),
        question=(f"What is the special magic {city} number? Answer with"
                  " the number only."),
        answer_prefix=f"The special magic {city} number is",
        references=(number,),
        filler=" " + " ".join(prose.haystack_units(8, start + n)),
        depth=index / max(len(units) - 1, 1),
        meta={"city": city, "num_units": n},
    )

  return build
