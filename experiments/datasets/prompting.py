"""From a generated task prompt to token ids of an exact length.

Every synthetic task builds a `TaskPrompt` from a number of context units
(haystack sentences, list entries, key-value pairs). `fit_units` finds the
most units whose prompt fits a token budget (as RULER fits its haystacks by
binary search with the model's tokenizer, Hsieh et al., 2024), and
`PromptEncoder.assemble` returns exactly the budget: the few tokens still
missing are taken from the prompt's `filler` (more haystack text, cut at the
token level as MInference's needle test cuts its haystack) and placed at the
end of the context. Equal lengths let cases of one length share a batch and
one compiled prefill.

The chat template (for instruct models) wraps the user message; the answer
prefix opens the assistant turn, after the template's generation prompt
(RULER's convention).
"""

import dataclasses
from collections.abc import Callable, Mapping, Sequence
from typing import Any

Encode = Callable[[str], Sequence[int]]
_SENTINEL = "\u0000USER-CONTENT\u0000"


@dataclasses.dataclass(frozen=True)
class TaskPrompt:
  """One generated case, before tokenisation.

  Attributes:
    instruction: text before the context.
    context: the haystack holding the facts asked for.
    question: text after the context.
    answer_prefix: the start of the answer ("" for none).
    references: the strings a correct answer contains (or equals).
    filler: text whose first tokens top the prompt up to an exact length
      ("" tops up with newlines).
    depth: relative position of the asked fact in the context (0..1) or
      None where a task has no single position.
    meta: task-specific facts (keys, counts) recorded with the result.
  """

  instruction: str
  context: str
  question: str
  answer_prefix: str
  references: tuple[str, ...]
  filler: str = ""
  depth: float | None = None
  meta: Mapping[str, Any] = dataclasses.field(default_factory=dict)

  @property
  def user_text(self) -> str:
    """The user message as one string (for logs and character checks)."""
    return "".join(self.user_pieces())

  def user_pieces(self) -> tuple[str, str, str]:
    head = f"{self.instruction}\n\n" if self.instruction else ""
    tail = f"\n\n{self.question}" if self.question else ""
    return head, self.context, tail


class PromptEncoder:
  """Token ids for TaskPrompts: chat wrapping, sizes, exact assembly.

  Args:
    encode: text -> ids, without BOS (the tokenizer's `encode`).
    chat_template: renders messages to text (the tokenizer's
      `apply_chat_template(..., tokenize=False)`), or None for raw prompts.
    bos_id: an id to put first (base models whose tokenizer adds BOS), or
      None.
  """

  def __init__(self, encode: Encode,
               chat_template: Callable[[list[dict]], str] | None = None,
               bos_id: int | None = None):
    self.encode = encode
    self.chat = chat_template is not None
    head, tail = "", ""
    if chat_template is not None:
      text = chat_template([{"role": "user", "content": _SENTINEL}])
      if text.count(_SENTINEL) != 1:
        raise ValueError("the chat template must place the user message once")
      head, tail = text.split(_SENTINEL)
    self._head = ([bos_id] if bos_id is not None else []) + list(
        encode(head) if head else [])
    self._tail = list(encode(tail)) if tail else []
    newline = list(encode("\n"))
    if not newline:
      raise ValueError("the tokenizer encodes '\\n' to no tokens")
    self._newline = newline[0]

  def _pieces(self, p: TaskPrompt) -> tuple[list[int], list[int]]:
    """(ids before the top-up point, ids after it)."""
    head, context, tail = p.user_pieces()
    before = self._head + list(self.encode(head + context))
    after = list(self.encode(tail)) if tail else []
    after += self._tail
    if p.answer_prefix:
      after += list(self.encode(p.answer_prefix))
    return before, after

  def size(self, p: TaskPrompt) -> int:
    """Token count of the prompt without top-up."""
    before, after = self._pieces(p)
    return len(before) + len(after)

  def assemble(self, p: TaskPrompt, n_tokens: int) -> list[int]:
    """Exactly `n_tokens` ids: the prompt, topped up after the context.

    Raises:
      ValueError: if the prompt alone is longer than n_tokens.
    """
    before, after = self._pieces(p)
    missing = n_tokens - len(before) - len(after)
    if missing < 0:
      raise ValueError(f"the prompt has {len(before) + len(after)} tokens,"
                       f" more than n_tokens={n_tokens}")
    fill: list[int] = []
    if missing and p.filler:
      source = list(self.encode(p.filler))
      while len(fill) < missing and source:
        fill += source
    if len(fill) < missing:
      fill += [self._newline] * (missing - len(fill))
    return before + fill[:missing] + after


def fit_units(build: Callable[[int], TaskPrompt], encoder: PromptEncoder,
              budget: int, *, minimum: int = 1) -> tuple[int, TaskPrompt]:
  """The largest unit count n >= minimum whose prompt fits `budget` tokens.

  Sizes grow with n up to small wobbles (regenerated texts): n is guessed
  from the size growth per unit, bracketed, bisected, then checked
  downwards.

  Args:
    build: n -> the TaskPrompt with n context units (deterministic).
    encoder: measures sizes.
    budget: the token budget.
    minimum: the smallest meaningful n.

  Returns:
    (n, build(n)).

  Raises:
    ValueError: if even `minimum` units exceed the budget (the message
      says how many tokens the smallest prompt needs).
  """
  smallest = build(minimum)
  need = encoder.size(smallest)
  if need > budget:
    raise ValueError(f"the smallest prompt needs {need} tokens, more than"
                     f" the budget of {budget}")

  def fits(n: int) -> bool:
    return encoder.size(build(n)) <= budget

  # Guess n from the growth between two sizes, then bracket and bisect.
  probe = minimum * 8
  grown = encoder.size(build(probe)) - need
  per_unit = max(grown / (probe - minimum), 1e-3)
  guess = max(minimum, minimum + int((budget - need) / per_unit))
  step = max(1, guess // 50)
  if fits(guess):
    lo, hi = guess, guess + step
    while fits(hi):
      lo, hi, step = hi, hi + step * 2, step * 2
  else:
    lo, hi = max(minimum, guess - step), guess
    while lo > minimum and not fits(lo):
      hi, lo, step = lo, max(minimum, lo - step * 2), step * 2
  while hi - lo > 1:
    mid = (lo + hi) // 2
    if fits(mid):
      lo = mid
    else:
      hi = mid
  prompt = build(lo)
  while lo > minimum and encoder.size(prompt) > budget:
    lo -= 1
    prompt = build(lo)
  return lo, prompt


def insert_at_depth(units: list[str], item: str, depth: float) -> int:
  """Inserts `item` into `units` at relative position `depth` (0..1).

  Returns:
    The index it went to.

  Raises:
    ValueError: for a depth outside [0, 1].
  """
  if not 0.0 <= depth <= 1.0:
    raise ValueError(f"depth must be in [0, 1], got {depth}")
  index = round(depth * len(units))
  units.insert(index, item)
  return index
