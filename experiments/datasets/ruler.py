"""RULER-style synthetic tasks (Hsieh et al., 2024, "RULER: What's the Real
Context Size of Your Long-Context Language Models?", arXiv 2404.06654).

Eleven of RULER's 13 tasks, regenerated offline: the eight needle tasks,
variable tracking (vt), common words (cwe) and frequent words (fwe)
extraction. The two QA tasks need SQuAD/HotpotQA downloads and are left out.
RULER's essay haystack (Paul Graham essays, copyrighted, fetched at run
time) is replaced by the public-domain King James Bible (`prose.py`); label
such numbers "RULER-KJV". Prompts are written for this project; the task
structure (haystacks, needle counts, answer counts) follows the paper.

Each `make_*` returns a builder: n context units -> TaskPrompt, with every
fact fixed by the seed (only the haystack length depends on n), so
`prompting.fit_units` can search n for a token budget.
"""

import random
import string
import uuid
from collections.abc import Callable

from experiments.datasets import prose, words
from experiments.datasets.prompting import TaskPrompt, insert_at_depth

Builder = Callable[[int], TaskPrompt]

# RULER's "noise" haystack: five repeated trivial sentences.
NOISE = ("The grass is green. The sky is blue. The sun is yellow."
         " Here we go. There and back again.")


def _number(rng: random.Random) -> str:
  return str(rng.randrange(1_000_000, 10_000_000))  # 7 digits


def _uuid(rng: random.Random) -> str:
  return str(uuid.UUID(int=rng.getrandbits(128), version=4))


def _values(rng: random.Random, kind: str, count: int) -> list[str]:
  make = _number if kind == "number" else _uuid
  out: list[str] = []
  while len(out) < count:
    value = make(rng)
    if value not in out:
      out.append(value)
  return out


def _keys(rng: random.Random, kind: str, count: int) -> list[str]:
  if kind == "word":
    return words.key_phrases(rng, count)
  return _values(rng, "uuid", count)


def _noun(value_kind: str) -> str:
  return "number" if value_kind == "number" else "uuid"


def _needle(key: str, value: str, value_kind: str) -> str:
  return f"One special magic {_noun(value_kind)} for {key} is: {value}."


def _haystack(kind: str, n: int, start: int) -> list[str]:
  if kind == "noise":
    return [NOISE] * n
  return prose.haystack_units(n, start)


def make_niah(seed: int, depth: float | None = None, *,
              haystack: str = "prose", key_kind: str = "word",
              value_kind: str = "number", num_keys: int = 1,
              num_values: int = 1, num_queries: int = 1) -> Builder:
  """RULER's needle family (niah_single/multikey/multivalue/multiquery).

  Args:
    seed: fixes keys, values, distractor depths and the haystack start.
    depth: where the first asked needle goes (0..1); None: random.
    haystack: "noise" (repeated trivial sentences), "prose" (KJV verses)
      or "needles" (every unit is a distractor needle, as niah_multikey_2/3).
    key_kind: "word" (adjective-noun) or "uuid".
    value_kind: "number" (7 digits) or "uuid".
    num_keys: needles with distinct keys (distractors included).
    num_values: values per asked key (niah_multivalue: 4).
    num_queries: keys asked together (niah_multiquery: 4).

  Returns:
    A builder: n haystack units -> TaskPrompt.

  Raises:
    ValueError: on unknown kinds or inconsistent counts.
  """
  if haystack not in ("noise", "prose", "needles"):
    raise ValueError(f"haystack must be noise, prose or needles, got"
                     f" {haystack!r}")
  if key_kind not in ("word", "uuid") or value_kind not in ("number", "uuid"):
    raise ValueError(f"unknown key/value kind {key_kind!r}/{value_kind!r}")
  if not 1 <= num_queries <= num_keys or num_values < 1:
    raise ValueError("need 1 <= num_queries <= num_keys and num_values >= 1")
  rng = random.Random(seed)
  first_depth = rng.random() if depth is None else depth
  keys = _keys(rng, key_kind, num_keys)
  values = [_values(rng, value_kind, num_values) for _ in keys]
  depths = [first_depth] + [rng.random() for _ in range(num_keys - 1)]
  # Per-key needles: a key with several values gets one needle per value.
  needles = [[_needle(k, v, value_kind) for v in vs]
             for k, vs in zip(keys, values)]
  start = rng.randrange(len(prose.sentences()))
  distractor_seed = rng.getrandbits(32)
  asked = list(range(num_queries))
  noun = _noun(value_kind)
  plural = num_values > 1 or num_queries > 1
  asked_keys = [keys[i] for i in asked]
  if num_queries == 1:
    query = asked_keys[0]
  else:
    query = ", ".join(asked_keys[:-1]) + f" and {asked_keys[-1]}"
  references = tuple(v for i in asked for v in values[i])

  def build(n: int) -> TaskPrompt:
    if haystack == "needles":
      drng = random.Random(distractor_seed)
      taken = set(keys)
      dkeys = []
      while len(dkeys) < n:
        (key,) = _keys(drng, key_kind, 1)
        if key not in taken:
          taken.add(key)
          dkeys.append(key)
      units = [_needle(k, _values(drng, value_kind, 1)[0], value_kind)
               for k in dkeys]
    else:
      units = _haystack(haystack, n, start)
    first_index = 0
    for j, (group, d) in enumerate(zip(needles, depths)):
      for m, needle in enumerate(group):
        # values of one key spread a little after its depth
        where = min(1.0, d + 0.02 * m) if m else d
        index = insert_at_depth(units, needle, where)
        if j == 0 and m == 0:
          first_index = index
    joiner = "\n" if haystack == "needles" else " "
    verb = "are" if plural else "is"
    what = f"all the special magic {noun}s" if plural else (
        f"the special magic {noun}")
    return TaskPrompt(
        instruction=(f"Some special magic {noun}s are hidden in the text"
                     " below. Memorize them: I will ask about them"
                     " afterwards."),
        context=joiner.join(units),
        question=(f"What {verb} {what} for {query} mentioned in the text"
                  " above?"),
        answer_prefix=(f"The special magic {noun}{'s' if plural else ''}"
                       f" for {query} mentioned in the text {verb}"),
        references=references,
        filler="" if haystack == "needles" else joiner + joiner.join(
            _haystack(haystack, 8, start + n)),
        depth=first_index / max(len(units) - 1, 1),
        meta={"keys": asked_keys, "num_units": n},
    )

  return build


def make_variable_tracking(seed: int, depth: float | None = None, *,
                           num_hops: int = 4) -> Builder:
  """RULER's vt: a chain `VAR A = 12345`, `VAR B = VAR A`, ... in noise.

  The chain's statements are spread in order over the haystack (the first
  at `depth`); the answer is every variable name bound to the value.

  Raises:
    ValueError: on num_hops < 1.
  """
  if num_hops < 1:
    raise ValueError(f"num_hops must be >= 1, got {num_hops}")
  rng = random.Random(seed)
  names: list[str] = []
  while len(names) < num_hops + 1:
    name = "".join(rng.choice(string.ascii_uppercase) for _ in range(5))
    if name not in names:
      names.append(name)
  value = str(rng.randrange(10_000, 100_000))
  first = rng.random() * 0.5 if depth is None else depth
  depths = [first + (1.0 - first) * i / (num_hops + 1)
            for i in range(num_hops + 1)]
  statements = [f"VAR {names[0]} = {value}."] + [
      f"VAR {names[i]} = VAR {names[i - 1]}." for i in range(1, num_hops + 1)]

  def build(n: int) -> TaskPrompt:
    units = [NOISE] * n
    first_index = 0
    for i, (s, d) in enumerate(zip(statements, depths)):
      index = insert_at_depth(units, s, d)
      if i == 0:
        first_index = index
    return TaskPrompt(
        instruction=("Memorize the variable assignments hidden in the text"
                     " below; I will ask which variables hold a value."),
        context=" ".join(units),
        question=(f"Which variables are assigned the value {value} in the"
                  " text above, directly or through other variables?"),
        answer_prefix=(f"The variables assigned the value {value} are:"),
        references=tuple(names),
        filler=" " + NOISE,
        depth=first_index / max(len(units) - 1, 1),
        meta={"value": value, "num_units": n},
    )

  return build


def make_common_words(seed: int, depth: float | None = None, *,
                      num_common: int = 10, common_freq: int = 10,
                      rare_freq: int = 2) -> Builder:
  """RULER's cwe: a numbered word list; name its `num_common` most common
  words (each `common_freq` times, every other word `rare_freq` times).

  n is the number of rare words. `depth` is unused (the answer is spread).
  RULER's long-context setting is 30x/3x; the defaults here (10x/2x) keep
  the rare words the majority of the list at 2K-8K tokens.

  Raises:
    ValueError: unless common_freq > rare_freq >= 1.
  """
  del depth
  if not common_freq > rare_freq >= 1 or num_common < 1:
    raise ValueError("need num_common >= 1 and common_freq > rare_freq >= 1")
  rng = random.Random(seed)
  pool = list(words.all_words())
  rng.shuffle(pool)
  common = pool[:num_common]
  rare_pool = pool[num_common:]
  order_seed = rng.getrandbits(32)

  def build(n: int) -> TaskPrompt:
    items = common * common_freq + rare_pool[:n] * rare_freq
    random.Random(order_seed).shuffle(items)
    listing = " ".join(f"{i + 1}. {w}" for i, w in enumerate(items))
    return TaskPrompt(
        instruction="Below is a numbered list of words.",
        context=listing,
        question=(f"Which {num_common} words appear most often in the list"
                  " above?"),
        answer_prefix=(f"The {num_common} most common words in the list"
                       " are:"),
        references=tuple(common),
        meta={"num_units": n},
    )

  return build


def make_frequent_words(seed: int, depth: float | None = None, *,
                        alpha: float = 2.0, num_answers: int = 3) -> Builder:
  """RULER's fwe: coded six-letter words with Zipf counts; name the
  `num_answers` most frequent ones after the top word, which is "...".

  n is the count of the top-ranked token; rank r appears round(n / r^alpha)
  times (so the answer ranks have distinct counts), with a vocabulary of
  ranks down to a count of one. `depth` is unused.

  Raises:
    ValueError: on alpha <= 0 or num_answers < 1.
  """
  del depth
  if alpha <= 0 or num_answers < 1:
    raise ValueError("need alpha > 0 and num_answers >= 1")
  rng = random.Random(seed)
  vocab: list[str] = []
  while len(vocab) < 4096:
    w = "".join(rng.choice(string.ascii_lowercase) for _ in range(6))
    if w not in vocab:
      vocab.append(w)
  order_seed = rng.getrandbits(32)

  def build(n: int) -> TaskPrompt:
    n = max(n, (num_answers + 2) ** 2)
    counts = []
    rank = 1
    while rank <= len(vocab):
      c = round(n / rank ** alpha)
      if c < 1:
        break
      counts.append(c)
      rank += 1
    items = ["..."] * counts[0]
    for r, c in enumerate(counts[1:], start=1):
      items += [vocab[r]] * c
    random.Random(order_seed).shuffle(items)
    return TaskPrompt(
        instruction=("Read the coded text below and count how often each"
                     " coded word appears."),
        context=" ".join(items),
        question=(f"Which {num_answers} coded words appear most often in the"
                  " text above (not counting '...')?"),
        answer_prefix=(f"The {num_answers} most frequent coded words are:"),
        references=tuple(vocab[1:1 + num_answers]),
        meta={"num_units": n},
    )

  return build
