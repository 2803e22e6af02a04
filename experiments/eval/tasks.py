"""The task registry: generator, scorer and generation budget per task.

Task names are `suite/task`; `GROUPS` name sets of them (as lm-eval's task
groups). Token budgets: RULER's `tokens_to_generate` (niah 128, vt 30, cwe
120, fwe 50); for InfiniteBench MInference's larger budgets (passkey 15,
number_string 20, kv_retrieval 80; our math_find 8, since SmolLM2-style
tokenizers give each digit its own token); MInference's needle test 32.
Bump a task's `version` whenever its prompt or scoring changes: the version
is part of every result's key.
"""

import dataclasses
import zlib
from collections.abc import Callable

from experiments.datasets import infinitebench, niah, ruler
from experiments.datasets.prompting import PromptEncoder, TaskPrompt, fit_units

Builder = Callable[[int], TaskPrompt]


@dataclasses.dataclass(frozen=True)
class TaskSpec:
  """One task.

  Attributes:
    name: "suite/task".
    make: (seed, depth or None) -> builder of n context units.
    metric: a scorer name in `scoring.SCORERS` (or "perplexity").
    max_new_tokens: generation budget.
    version: bumped on any prompt or scoring change.
    minimum_units: the smallest meaningful unit count.
  """

  name: str
  make: Callable[[int, float | None], Builder] | None
  metric: str
  max_new_tokens: int
  version: int = 1
  minimum_units: int = 1

  @property
  def suite(self) -> str:
    return self.name.split("/", 1)[0]


def _niah(**kw) -> Callable[[int, float | None], Builder]:
  return lambda seed, depth: ruler.make_niah(seed, depth, **kw)


_SPECS = (
    TaskSpec("niah/needle", niah.make_needle, "string_match_all", 32),
    # RULER: niah_single_1/2/3, multikey_1/2/3, multivalue, multiquery
    TaskSpec("ruler/niah_single_1", _niah(haystack="noise"),
             "string_match_all", 128),
    TaskSpec("ruler/niah_single_2", _niah(haystack="prose"),
             "string_match_all", 128),
    TaskSpec("ruler/niah_single_3", _niah(haystack="prose",
                                          value_kind="uuid"),
             "string_match_all", 128),
    TaskSpec("ruler/niah_multikey_1", _niah(haystack="prose", num_keys=4),
             "string_match_all", 128),
    TaskSpec("ruler/niah_multikey_2", _niah(haystack="needles"),
             "string_match_all", 128),
    TaskSpec("ruler/niah_multikey_3", _niah(haystack="needles",
                                            key_kind="uuid",
                                            value_kind="uuid"),
             "string_match_all", 128),
    TaskSpec("ruler/niah_multivalue", _niah(haystack="prose", num_values=4),
             "string_match_all", 128),
    TaskSpec("ruler/niah_multiquery", _niah(haystack="prose", num_keys=4,
                                            num_queries=4),
             "string_match_all", 128),
    TaskSpec("ruler/vt", ruler.make_variable_tracking, "string_match_all",
             30),
    TaskSpec("ruler/cwe", ruler.make_common_words, "string_match_all", 120),
    TaskSpec("ruler/fwe", ruler.make_frequent_words, "string_match_all", 50,
             minimum_units=25),
    TaskSpec("infinitebench/passkey", infinitebench.make_passkey,
             "first_int_match", 15),
    TaskSpec("infinitebench/number_string", infinitebench.make_number_string,
             "first_int_match", 20),
    TaskSpec("infinitebench/kv_retrieval", infinitebench.make_kv_retrieval,
             "kv_token_match", 80),
    TaskSpec("infinitebench/math_find", infinitebench.make_math_find,
             "math_find_match", 8),
    # Perplexity of the first L tokens of long KJV books, per position bucket.
    TaskSpec("ppl/kjv", None, "perplexity", 0),
)
TASKS: dict[str, TaskSpec] = {s.name: s for s in _SPECS}

GROUPS: dict[str, tuple[str, ...]] = {
    "ruler": tuple(n for n in TASKS if n.startswith("ruler/")),
    "infinitebench": tuple(n for n in TASKS if n.startswith(
        "infinitebench/")),
    "niah": ("niah/needle",),
    "ppl": ("ppl/kjv",),
}


def expand_tasks(names) -> tuple[str, ...]:
  """Task names with group names expanded, in order, without repeats.

  Raises:
    KeyError: naming the unknown task and listing the known ones.
  """
  out: list[str] = []
  for name in names:
    members = GROUPS.get(name, (name,))
    for member in members:
      if member not in TASKS:
        raise KeyError(f"unknown task {member!r}; tasks: {sorted(TASKS)};"
                       f" groups: {sorted(GROUPS)}")
      if member not in out:
        out.append(member)
  return tuple(out)


def case_seed(seed: int, task: str, length: int, depth: float | None,
              index: int) -> int:
  """A stable 31-bit seed for one case (independent of Python's hash)."""
  text = f"{seed}|{task}|{length}|{depth}|{index}"
  return zlib.crc32(text.encode()) & 0x7FFFFFFF


def make_prompt(spec: TaskSpec, encoder: PromptEncoder, n_tokens: int,
                seed: int, depth: float | None) -> tuple[list[int],
                                                         TaskPrompt]:
  """A case's ids (exactly n_tokens) and its TaskPrompt.

  Raises:
    ValueError: if the task does not fit in n_tokens, or for a
      perplexity task (no prompt).
  """
  if spec.make is None:
    raise ValueError(f"{spec.name} has no prompts (a perplexity task)")
  build = spec.make(seed, depth)
  _, prompt = fit_units(build, encoder, n_tokens,
                        minimum=spec.minimum_units)
  return encoder.assemble(prompt, n_tokens), prompt
