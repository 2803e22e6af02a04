"""Every task generator: the prompt has exactly the asked length, the answer
is in it and can be recovered from the text alone by a plain solver, the
requested depth is where the fact sits, and the same seed gives the same
prompt (another seed another)."""

import collections
import json
import re

import pytest
from eval_helpers import tiny_tokenizer

from experiments.datasets import prose, words
from experiments.datasets.prompting import PromptEncoder, fit_units
from experiments.eval.tasks import TASKS, expand_tasks, make_prompt

GENERATION_TASKS = [n for n, s in TASKS.items() if s.make is not None]


@pytest.fixture(scope="module")
def encoder():
  tok = tiny_tokenizer()
  return PromptEncoder(
      lambda s: tok.encode(s, add_bos=False),
      lambda m: tok.apply_chat_template(m, tokenize=False))


def _solve(task: str, text: str, prompt) -> set[str]:
  """The answer a reader finds in `text`, using only the question's facts."""
  if task == "niah/needle":
    city = prompt.meta["city"]
    return set(re.findall(rf"special magic {city} number is: (\d+)\.", text))
  if task.startswith("ruler/niah"):
    found = set()
    for key in prompt.meta["keys"]:
      found |= set(re.findall(
          rf"special magic \w+ for {re.escape(key)} is: ([\w-]+)\.", text))
    return found
  if task == "ruler/vt":
    binds = dict(re.findall(r"VAR (\w+) = (VAR \w+|\d+)\.", text))
    value = prompt.meta["value"]

    def resolve(name):
      seen = set()
      while binds.get(name, "").startswith("VAR ") and name not in seen:
        seen.add(name)
        name = binds[name][4:]
      return binds.get(name)

    return {n for n in binds if resolve(n) == value}
  if task == "ruler/cwe":
    listing = text.split("Below is a numbered list of words.")[1]
    counts = collections.Counter(re.findall(r"\d+\. (\w+)", listing))
    return {w for w, _ in counts.most_common(len(prompt.references))}
  if task == "ruler/fwe":
    body = text.split("coded word appears.")[1].split("Which")[0]
    counts = collections.Counter(t for t in body.split() if t != "...")
    return {w for w, _ in counts.most_common(len(prompt.references))}
  if task == "infinitebench/kv_retrieval":
    pairs = json.loads(text[text.index("{"): text.index("}") + 1])
    return {pairs[prompt.meta["key"]]}
  if task == "infinitebench/math_find":
    body = text.split("list of numbers.")[1].split("What is")[0]
    numbers = [int(x) for x in re.findall(r"\d+", body)]
    pick = max if prompt.meta["find"] == "largest" else min
    return {str(pick(numbers))}
  if task == "infinitebench/passkey":
    return set(re.findall(r"The pass key is (\d+)\. Remember it", text))
  if task == "infinitebench/number_string":
    return set(re.findall(r"sequence of digits is (\d+)\. Remember", text))
  raise AssertionError(f"no solver for {task}")


@pytest.mark.parametrize("task", GENERATION_TASKS)
def test_answer_in_prompt_recoverable_exact_length(task, encoder):
  tok = tiny_tokenizer()
  for seed, n_tokens in ((11, 1200), (12, 1700)):
    ids, prompt = make_prompt(TASKS[task], encoder, n_tokens, seed, 0.5)
    assert len(ids) == n_tokens, (task, seed)
    text = tok.decode(ids)
    for ref in prompt.references:
      assert ref in text, (task, seed, ref)
    assert _solve(task, text, prompt) == set(prompt.references), (task, seed)
    assert text.endswith(prompt.answer_prefix)
    assert text.startswith("<|im_start|>user\n")


@pytest.mark.parametrize("task", GENERATION_TASKS)
def test_same_seed_same_prompt(task, encoder):
  spec = TASKS[task]
  a, pa = make_prompt(spec, encoder, 1300, 5, 0.25)
  b, pb = make_prompt(spec, encoder, 1300, 5, 0.25)
  c, pc = make_prompt(spec, encoder, 1300, 6, 0.25)
  assert a == b and pa == pb
  assert a != c and pa.references != pc.references


@pytest.mark.parametrize("task", ["niah/needle", "ruler/niah_single_2",
                                  "ruler/niah_multikey_2",
                                  "infinitebench/passkey",
                                  "infinitebench/kv_retrieval",
                                  "infinitebench/math_find"])
@pytest.mark.parametrize("depth", [0.0, 0.3, 1.0])
def test_depth_places_the_fact(task, depth, encoder):
  _, prompt = make_prompt(TASKS[task], encoder, 1000, 3, depth)
  units = prompt.meta["num_units"]
  assert abs(prompt.depth - depth) <= 1.5 / units, (task, depth)


def test_fit_units_is_the_largest_that_fits(encoder):
  build = TASKS["niah/needle"].make(1, 0.5)
  n, prompt = fit_units(build, encoder, 900)
  assert encoder.size(prompt) <= 900 < encoder.size(build(n + 1))
  with pytest.raises(ValueError, match="smallest prompt needs"):
    fit_units(build, encoder, 20)


def test_groups_expand_and_unknown_names_fail():
  assert "ruler/vt" in expand_tasks(["ruler"])
  assert len(expand_tasks(["ruler"])) == 11
  assert expand_tasks(["niah/needle", "niah"]) == ("niah/needle",)
  with pytest.raises(KeyError, match="unknown task 'ruler/qa_1'"):
    expand_tasks(["ruler/qa_1"])


def test_prose_corpus_and_word_lists():
  books = prose.books()
  assert len(books) == 66 and books[0].name == "Genesis"
  assert books[0].verses[0].startswith("In the beginning God created")
  assert sum(len(b.verses) for b in books) == len(prose.sentences()) > 31000
  assert prose.haystack_units(3, len(prose.sentences()) - 1)[1] == (
      prose.sentences()[0])
  assert len(words.nouns()) > 5000 and len(words.adjectives()) > 500
  assert all(w.isalpha() and w == w.lower() for w in words.all_words())
