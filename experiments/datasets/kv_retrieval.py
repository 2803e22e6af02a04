"""InfiniteBench-style key-value retrieval prompts (Zhang et al., 2024,
"InfiniteBench", Retrieve.KV): a JSON object of random UUID keys and UUID
values, and a question asking for the value of one key. MInference searched
its pattern configs on one such prompt (Jiang et al., 2024, section 3.2)."""

import dataclasses
import json
import random
import uuid
from collections.abc import Callable, Sequence

INSTRUCTION = ("Extract the value corresponding to the specified key in the"
               " JSON object below.")


@dataclasses.dataclass(frozen=True)
class KVRetrievalPrompt:
  """One retrieval prompt.

  Attributes:
    text: the instruction, the JSON object and the question, as one string.
    key: the UUID asked for.
    answer: its value (a UUID; correct iff it appears in the reply).
    depth: position of the asked pair among the pairs, 0.0 .. 1.0.
    num_pairs: pairs in the JSON object.
  """

  text: str
  key: str
  answer: str
  depth: float
  num_pairs: int


def _uuid(rng: random.Random) -> str:
  return str(uuid.UUID(int=rng.getrandbits(128), version=4))


def make_kv_retrieval_prompt(num_pairs: int, seed: int,
                             depth: float | None = None) -> KVRetrievalPrompt:
  """A JSON object of `num_pairs` UUID pairs and a question about one.

  Args:
    num_pairs: pairs in the object (about 40 BPE tokens each), >= 1.
    seed: selects the UUIDs and, when depth is None, the asked pair.
    depth: where the asked pair sits, 0.0 (first) .. 1.0 (last).

  Raises:
    ValueError: on num_pairs < 1 or a depth outside [0, 1].
  """
  if num_pairs < 1:
    raise ValueError(f"num_pairs must be >= 1, got {num_pairs}")
  if depth is not None and not 0.0 <= depth <= 1.0:
    raise ValueError(f"depth must be in [0, 1], got {depth}")
  rng = random.Random(seed)
  pairs = [(_uuid(rng), _uuid(rng)) for _ in range(num_pairs)]
  pos = (rng.randrange(num_pairs) if depth is None
         else round(depth * (num_pairs - 1)))
  key, answer = pairs[pos]
  body = json.dumps(dict(pairs), indent=0)
  text = (f"{INSTRUCTION}\n\nJSON data:\n{body}\n\nKey: \"{key}\"\n"
          "The value associated with the specified key is: ")
  return KVRetrievalPrompt(text, key, answer, pos / max(num_pairs - 1, 1),
                           num_pairs)


def kv_retrieval_for_length(
    encode: Callable[[str], Sequence[int]], target_tokens: int, seed: int,
    depth: float | None = None,
) -> KVRetrievalPrompt:
  """The prompt with the most pairs whose encoding fits `target_tokens`.

  Args:
    encode: text -> token ids (the model's tokenizer, chat template aside).
    target_tokens: the token budget, >= the prompt with one pair.
    seed, depth: as in `make_kv_retrieval_prompt`.

  Raises:
    ValueError: if even one pair does not fit.
  """
  def size(n: int) -> int:
    return len(encode(make_kv_retrieval_prompt(n, seed, depth).text))

  if size(1) > target_tokens:
    raise ValueError(f"target_tokens={target_tokens} is below one pair's"
                     f" prompt ({size(1)} tokens)")
  per_pair = max(size(2) - size(1), 1)
  lo, hi = 1, max(2, target_tokens // per_pair + 2)
  while hi - lo > 1:  # the largest n with size(n) <= target_tokens
    mid = (lo + hi) // 2
    lo, hi = (mid, hi) if size(mid) <= target_tokens else (lo, mid)
  return make_kv_retrieval_prompt(lo, seed, depth)


def middle_truncate(ids: Sequence[int], length: int) -> list[int]:
  """The first length // 2 and the last length - length // 2 ids (as
  MInference's and InfiniteBench's scripts shorten long prompts: the
  instruction at the start and the question at the end survive).

  Raises:
    ValueError: on length < 1.
  """
  if length < 1:
    raise ValueError(f"length must be >= 1, got {length}")
  ids = list(ids)
  if len(ids) <= length:
    return ids
  head = length // 2
  return ids[:head] + ids[len(ids) - (length - head):]


def kv_retrieval_tokens(encode: Callable[[str], Sequence[int]], length: int,
                        seed: int) -> list[int]:
  """A KV-retrieval prompt of exactly `length` tokens: the smallest number
  of pairs past the fitted prompt whose encoding reaches `length`,
  middle-truncated (MInference searched on a middle-truncated
  InfiniteBench KV-retrieval prompt).

  Raises:
    ValueError: if even one pair does not fit.
  """
  pairs = kv_retrieval_for_length(encode, length, seed).num_pairs
  while True:
    pairs += 1
    ids = encode(make_kv_retrieval_prompt(pairs, seed).text)
    if len(ids) >= length:
      return middle_truncate(ids, length)
