"""Every scorer on known right and wrong answers, with the benchmarks'
conventions (RULER substring matching, InfiniteBench exact matching), and
the perplexity bucketing against a direct sum."""

import numpy as np
import pytest

from experiments.eval import scoring
from experiments.eval.model_calls import bucket_sums, position_buckets


def test_string_match_all_counts_the_fraction_found():
  refs = ["1234567", "7654321", "Lisbon"]
  assert scoring.string_match_all(" 1234567, 7654321 and lisbon.", refs) == 1
  assert scoring.string_match_all("1234567 and 7654321", refs) == 2 / 3
  assert scoring.string_match_all("no numbers", refs) == 0
  # control characters become newlines, so a match across them fails
  assert scoring.string_match_all("12345\x0067", ["1234567"]) == 0


def test_string_match_part_needs_any_reference():
  assert scoring.string_match_part("It was PARIS.", ["Rome", "paris"]) == 1
  assert scoring.string_match_part("It was Lyon.", ["Rome", "paris"]) == 0


@pytest.mark.parametrize("prediction,label,expected", [
    (" 71432.", "71432", 1.0),
    ("The pass key is 71432", "71432", 1.0),
    ("714320", "71432", 0.0),  # an extra digit is wrong
    ("7143", "71432", 0.0),
    ("-71432", "71432", 1.0),  # the sign is not a digit
    ("1,234", "1234", 0.0),  # the first digit run is "1"
    ("no digits", "71432", 0.0),
])
def test_first_int_match(prediction, label, expected):
  assert scoring.first_int_match(prediction, [label]) == expected


def test_kv_token_match_needs_the_whole_uuid():
  uuid = "830e07bc-1e39-4f10-92bd-4acefaecbd38"
  assert scoring.kv_token_match(f'"{uuid}".', [uuid]) == 1
  assert scoring.kv_token_match(f"value: {uuid}\n", [uuid]) == 1
  assert scoring.kv_token_match(uuid[:-1], [uuid]) == 0
  assert scoring.kv_token_match(f"x{uuid}", [uuid]) == 0


@pytest.mark.parametrize("prediction,label,expected", [
    (" 9154.", "9154", 1.0), ("9154.0", "9154", 0.0), ("915", "9154", 0.0),
    ("It is 12 then 9154", "9154", 0.0), ("2.5", "2.5", 1.0),
    ("2.50", "2.5", 1.0), ("none", "7", 0.0),
])
def test_math_find_match(prediction, label, expected):
  assert scoring.math_find_match(prediction, [label]) == expected


def test_score_dispatch_and_errors():
  assert scoring.score("first_int_match", "42", ["42"]) == 1.0
  with pytest.raises(KeyError, match="unknown metric"):
    scoring.score("rouge", "a", ["a"])
  with pytest.raises(ValueError, match="references"):
    scoring.string_match_all("a", [])


def test_position_buckets_and_sums_match_a_direct_sum():
  assert position_buckets(3000) == [(0, 512), (512, 1024), (1024, 2048),
                                    (2048, 3000)]
  rng = np.random.default_rng(0)
  nll = rng.random(2999)  # targets at positions 1..2999
  sums = bucket_sums(nll, position_buckets(3000))
  assert [n for _, n in sums] == [511, 512, 1024, 952]
  assert sum(s for s, _ in sums) == pytest.approx(nll.sum())
  assert sums[1][0] == pytest.approx(nll[511:1023].sum())
