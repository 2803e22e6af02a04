"""The key-value retrieval generator: the answer is in the prompt, next to
its key, reproducibly for a seed, and the length fitting respects the budget."""

import json

import pytest

from experiments.datasets.kv_retrieval import (
    kv_retrieval_for_length,
    make_kv_retrieval_prompt,
)


@pytest.mark.parametrize("num_pairs,depth", [(1, None), (7, 0.0), (7, 1.0),
                                             (40, 0.5)])
def test_answer_is_the_keys_value_in_the_prompt(num_pairs, depth):
  p = make_kv_retrieval_prompt(num_pairs, seed=3, depth=depth)
  body = p.text[p.text.index("{"): p.text.index("}") + 1]
  pairs = json.loads(body)
  assert len(pairs) == num_pairs == p.num_pairs
  assert pairs[p.key] == p.answer
  assert f'Key: "{p.key}"' in p.text
  if depth is not None:
    assert list(pairs).index(p.key) == round(depth * (num_pairs - 1))


def test_same_seed_same_prompt_other_seed_other_prompt():
  a, b = (make_kv_retrieval_prompt(10, seed=5) for _ in range(2))
  assert a == b
  assert make_kv_retrieval_prompt(10, seed=6).text != a.text


def test_length_fitting_uses_the_budget():
  def encode(s):
    return s.split()

  p = kv_retrieval_for_length(encode, 300, seed=0)
  assert len(encode(p.text)) <= 300
  bigger = make_kv_retrieval_prompt(p.num_pairs + 1, 0)
  assert len(encode(bigger.text)) > 300


def test_bad_arguments_are_named():
  with pytest.raises(ValueError, match="num_pairs"):
    make_kv_retrieval_prompt(0, seed=0)
  with pytest.raises(ValueError, match="depth"):
    make_kv_retrieval_prompt(3, seed=0, depth=1.5)
  with pytest.raises(ValueError, match="target_tokens"):
    kv_retrieval_for_length(lambda s: s.split(), 5, seed=0)
