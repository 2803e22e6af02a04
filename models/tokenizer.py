"""A `tokenizers`-based tokenizer from tokenizer.json or GGUF metadata."""

# GGUF facts used (llama.cpp's tokenizer keys): tokenizer.ggml.model "gpt2" is
# byte-level BPE with `tokens` (id order), `merges` ("left right"), and
# `token_type` (1 normal, 3 control = special, 4 user-defined = added, matched
# whole in the text); tokenizer.ggml.pre names the pre-tokenizer split
# (llama.cpp's regex list per name); bos/eos/unknown/padding ids; add_bos_token;
# tokenizer.chat_template is a Jinja string.

import json
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import tokenizers
from tokenizers import AddedToken, Regex, decoders, models, pre_tokenizers

# Split regexes of llama.cpp's "llama-bpe" and "qwen2" pre-tokenizers.
_LLAMA3_SPLIT = (
  r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
  r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
_QWEN2_SPLIT = (
  r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}"
  r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
# tokenizer.ggml.pre -> pre-tokenizer family (llama.cpp groups these names).
_PRE_FAMILIES = {
  "default": "gpt2",
  "gpt2": "gpt2",
  "gpt-2": "gpt2",
  # digits split one by one, then the GPT-2 split
  "smollm": "digits+gpt2",
  "starcoder": "digits+gpt2",
  "refact": "digits+gpt2",
  "codeshell": "digits+gpt2",
  "llama3": "llama3",
  "llama-v3": "llama3",
  "llama-bpe": "llama3",
  "qwen2": "qwen2",
}


def _pre_tokenizer(pre: str | None) -> pre_tokenizers.PreTokenizer:
  family = _PRE_FAMILIES.get(pre or "default")
  if family is None:
    raise ValueError(
      f"unsupported tokenizer.ggml.pre {pre!r}; supported: "
      f"{sorted(_PRE_FAMILIES)}"
    )
  byte_level = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
  if family == "gpt2":
    return byte_level
  if family == "digits+gpt2":
    return pre_tokenizers.Sequence(
      [pre_tokenizers.Digits(individual_digits=True), byte_level]
    )
  split = _LLAMA3_SPLIT if family == "llama3" else _QWEN2_SPLIT
  return pre_tokenizers.Sequence(
    [
      pre_tokenizers.Split(Regex(split), behavior="isolated"),
      pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ]
  )


class Tokenizer:
  """Encode/decode and chat templating for a causal LM.

  Attributes:
    backend: the `tokenizers.Tokenizer`.
    bos_token_id / eos_token_id: ids or None.
    add_bos: whether `encode` prepends BOS by default.
    chat_template: the Jinja chat template string, or None.
  """

  def __init__(
    self,
    backend: tokenizers.Tokenizer,
    *,
    bos_token: str | None = None,
    eos_token: str | None = None,
    add_bos: bool = False,
    chat_template: str | None = None,
  ):
    if not isinstance(backend, tokenizers.Tokenizer):
      raise TypeError(
        f"backend must be a tokenizers.Tokenizer, got {type(backend).__name__}"
      )
    self.backend = backend
    self.bos_token = bos_token
    self.eos_token = eos_token
    self.add_bos = bool(add_bos)
    self.chat_template = chat_template
    self.bos_token_id = self._id(bos_token, "bos_token")
    self.eos_token_id = self._id(eos_token, "eos_token")

  def _id(self, token: str | None, what: str) -> int | None:
    if token is None:
      return None
    idx = self.backend.token_to_id(token)
    if idx is None:
      raise ValueError(f"{what} {token!r} is not in the vocabulary")
    return idx

  @property
  def vocab_size(self) -> int:
    """Number of ids, added tokens included."""
    return self.backend.get_vocab_size(with_added_tokens=True)

  # ---- construction -------------------------------------------------------

  @classmethod
  def from_file(cls, path: str | Path) -> "Tokenizer":
    """Loads tokenizer.json (+ tokenizer_config.json beside it, if present).

    Args:
      path: a tokenizer.json file or the folder holding it.

    Returns:
      The tokenizer; bos/eos, add_bos_token and chat_template come from
      tokenizer_config.json when it exists.

    Raises:
      FileNotFoundError: no tokenizer.json.
      ValueError: the file (or tokenizer_config.json) does not parse.
    """
    path = Path(path)
    if path.is_dir():
      path = path / "tokenizer.json"
    if not path.is_file():
      raise FileNotFoundError(f"tokenizer file not found: {path}")
    try:
      backend = tokenizers.Tokenizer.from_file(str(path))
    except Exception as err:  # tokenizers raises a bare Exception
      raise ValueError(f"{path} is not a valid tokenizer.json: {err}") from err
    cfg_path = path.parent / "tokenizer_config.json"
    try:
      cfg = json.loads(cfg_path.read_text()) if cfg_path.is_file() else {}
    except json.JSONDecodeError as e:
      raise ValueError(f"{cfg_path} is not valid JSON ({e})") from None

    def token(value: Any) -> str | None:
      return value.get("content") if isinstance(value, Mapping) else value

    return cls(
      backend,
      bos_token=token(cfg.get("bos_token")),
      eos_token=token(cfg.get("eos_token")),
      add_bos=bool(cfg.get("add_bos_token", False)),
      chat_template=cfg.get("chat_template"),
    )

  @classmethod
  def from_gguf_metadata(cls, meta: Mapping[str, Any]) -> "Tokenizer":
    """Rebuilds a byte-level BPE tokenizer from GGUF `tokenizer.ggml.*` keys.

    Args:
      meta: GGUF metadata (e.g. `models.gguf_io.gguf_metadata(reader)`), with
        the token and merge arrays.

    Returns:
      The tokenizer; control tokens (type 3) are special tokens and
      user-defined ones (type 4) added tokens, both matched whole.

    Raises:
      ValueError: keys missing, a tokenizer model other than "gpt2", an
        unknown pre-tokenizer, or a malformed merge.
    """
    kind = meta.get("tokenizer.ggml.model")
    if kind != "gpt2":
      raise ValueError(
        f"tokenizer.ggml.model {kind!r} is not supported (only 'gpt2' BPE)"
      )
    tokens = list(meta.get("tokenizer.ggml.tokens") or [])
    merges_raw = list(meta.get("tokenizer.ggml.merges") or [])
    if not tokens or not merges_raw:
      raise ValueError("GGUF metadata lacks tokenizer.ggml.tokens/merges")
    merges = []
    for m in merges_raw:
      parts = m.split(" ")
      if len(parts) != 2:
        raise ValueError(f"malformed merge {m!r} in tokenizer.ggml.merges")
      merges.append((parts[0], parts[1]))
    vocab = {tok: i for i, tok in enumerate(tokens)}
    if len(vocab) != len(tokens):
      raise ValueError("tokenizer.ggml.tokens holds duplicate tokens")
    backend = tokenizers.Tokenizer(
      models.BPE(vocab=vocab, merges=merges, fuse_unk=False)
    )
    backend.pre_tokenizer = _pre_tokenizer(meta.get("tokenizer.ggml.pre"))
    backend.decoder = decoders.ByteLevel()
    types = list(meta.get("tokenizer.ggml.token_type") or [1] * len(tokens))
    if len(types) != len(tokens):
      raise ValueError(
        f"tokenizer.ggml.token_type has {len(types)} entries for "
        f"{len(tokens)} tokens"
      )
    special = [
      AddedToken(t, special=True, normalized=False)
      for t, ty in zip(tokens, types)
      if ty == 3
    ]
    added = [
      AddedToken(t, special=False, normalized=False)
      for t, ty in zip(tokens, types)
      if ty == 4
    ]
    if special:
      backend.add_special_tokens(special)
    if added:
      backend.add_tokens(added)

    def token(key: str) -> str | None:
      idx = meta.get(f"tokenizer.ggml.{key}")
      if idx is None:
        return None
      if not 0 <= int(idx) < len(tokens):
        raise ValueError(f"tokenizer.ggml.{key}={idx} outside the vocabulary")
      return tokens[int(idx)]

    return cls(
      backend,
      bos_token=token("bos_token_id"),
      eos_token=token("eos_token_id"),
      add_bos=bool(meta.get("tokenizer.ggml.add_bos_token", False)),
      chat_template=meta.get("tokenizer.chat_template"),
    )

  @classmethod
  def from_gguf(cls, path: Any) -> "Tokenizer":
    """Reads the tokenizer stored in a GGUF file (see `from_gguf_metadata`).

    Args:
      path: the .gguf file, or an open `gguf.GGUFReader`.
    """
    from models import gguf_io  # local: gguf is only needed for this path

    reader = path if hasattr(path, "fields") else gguf_io.read_gguf(path)
    return cls.from_gguf_metadata(gguf_io.gguf_metadata(reader))

  def save(self, directory: str | Path) -> Path:
    """Writes tokenizer.json and tokenizer_config.json into `directory`.

    Returns:
      The directory (readable again with `from_file`).
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    self.backend.save(str(directory / "tokenizer.json"))
    cfg = {
      "bos_token": self.bos_token,
      "eos_token": self.eos_token,
      "add_bos_token": self.add_bos,
      "chat_template": self.chat_template,
    }
    (directory / "tokenizer_config.json").write_text(json.dumps(cfg, indent=1))
    return directory

  # ---- use ----------------------------------------------------------------

  def encode(self, text: str, *, add_bos: bool | None = None) -> list[int]:
    """Token ids of `text`; special-token strings in it map to their ids.

    Args:
      text: the input string.
      add_bos: prepend BOS; None uses the tokenizer's default (`add_bos`).

    Returns:
      List of int ids.

    Raises:
      TypeError: `text` is not a str.
      ValueError: BOS asked for but the tokenizer has none.
    """
    if not isinstance(text, str):
      raise TypeError(f"text must be str, got {type(text).__name__}")
    ids = self.backend.encode(text, add_special_tokens=False).ids
    if self.add_bos if add_bos is None else add_bos:
      if self.bos_token_id is None:
        raise ValueError("add_bos=True but the tokenizer has no BOS token")
      ids = [self.bos_token_id, *ids]
    return ids

  def decode(
    self, ids: Sequence[int], *, skip_special_tokens: bool = False
  ) -> str:
    """Text of `ids` (special tokens kept unless `skip_special_tokens`)."""
    ids = [int(i) for i in ids]
    bad = [i for i in ids if not 0 <= i < self.vocab_size]
    if bad:
      raise ValueError(f"ids outside [0, {self.vocab_size}): {bad[:5]}")
    return self.backend.decode(ids, skip_special_tokens=skip_special_tokens)

  def apply_chat_template(
    self,
    messages: Sequence[Mapping[str, str]],
    *,
    add_generation_prompt: bool = True,
    tokenize: bool = False,
  ) -> str | list[int]:
    """Renders a conversation with the tokenizer's chat template.

    Uses jinja2 (sandboxed, as transformers does) when it is installed;
    otherwise a built-in renderer for ChatML-style templates (SmolLM2's).

    Args:
      messages: [{"role": ..., "content": ...}, ...].
      add_generation_prompt: end with the assistant turn header.
      tokenize: return ids (no extra BOS; the template writes its own
        special tokens) instead of the string.

    Returns:
      The rendered string, or its token ids.

    Raises:
      ValueError: no chat template, malformed messages, or a non-ChatML
        template while jinja2 is not installed.
    """
    if self.chat_template is None:
      raise ValueError("this tokenizer has no chat_template")
    for i, m in enumerate(messages):
      if not isinstance(m, Mapping) or not {"role", "content"} <= set(m):
        raise ValueError(f"messages[{i}] needs 'role' and 'content': {m!r}")
    text = render_chat_template(
      self.chat_template,
      messages,
      add_generation_prompt=add_generation_prompt,
      bos_token=self.bos_token or "",
      eos_token=self.eos_token or "",
    )
    return self.encode(text, add_bos=False) if tokenize else text


def render_chat_template(
  template: str,
  messages: Sequence[Mapping[str, str]],
  *,
  add_generation_prompt: bool = True,
  bos_token: str = "",
  eos_token: str = "",
  use_jinja: bool | None = None,
) -> str:
  """Renders a Jinja chat template (jinja2 if available, else ChatML subset).

  Args:
    template: the template string.
    messages: the conversation.
    add_generation_prompt: passed to the template.
    bos_token / eos_token: template variables.
    use_jinja: force (True) or forbid (False) jinja2; None picks it when it
      is importable.

  Returns:
    The rendered text.

  Raises:
    ValueError: the built-in renderer does not understand the template.
    ImportError: use_jinja=True without jinja2.
  """
  if use_jinja is None:
    try:
      import jinja2  # noqa: F401

      use_jinja = True
    except ImportError:
      use_jinja = False
  if use_jinja:
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
    return env.from_string(template).render(
      messages=[dict(m) for m in messages],
      add_generation_prompt=add_generation_prompt,
      bos_token=bos_token,
      eos_token=eos_token,
    )
  return _render_chatml(template, messages, add_generation_prompt)


_CHATML_TURN = re.compile(
  r"""\{\{\s*['"]<\|im_start\|>['"]\s*\+\s*message\[['"]role['"]\]\s*\+\s*"""
  r"""['"](?:\\n|\n)['"]\s*\+\s*message\[['"]content['"]\]\s*\+\s*"""
  r"""['"]<\|im_end\|>['"]\s*(?:\+\s*['"](?:\\n|\n)['"]\s*)?\}\}"""
)
_CHATML_DEFAULT_SYSTEM = re.compile(
  r"""\{%-?\s*if\s+loop\.first\s+and\s+messages\[0\]\[['"]role['"]\]\s*!=\s*"""
  r"""['"]system['"]\s*-?%\}\s*\{\{\s*'((?:[^'\\]|\\.)*)'\s*\}\}\s*"""
  r"""\{%-?\s*endif\s*-?%\}""",
  re.DOTALL,
)
_CHATML_GENERATION = re.compile(
  r"""\{%-?\s*if\s+add_generation_prompt\s*-?%\}\s*\{\{\s*"""
  r"""['"]<\|im_start\|>assistant(?:\\n|\n)['"]\s*\}\}"""
)


def _unescape(literal: str) -> str:
  return re.sub(
    r"\\(.)", lambda m: {"n": "\n", "t": "\t"}.get(m[1], m[1]), literal
  )


def _render_chatml(
  template: str,
  messages: Sequence[Mapping[str, str]],
  add_generation_prompt: bool,
) -> str:
  """ChatML: '<|im_start|>{role}\\n{content}<|im_end|>\\n' per message.

  Understands exactly the shape SmolLM2 (and Qwen-style ChatML) templates
  use: one turn expression, an optional default system block emitted before a
  first non-system message, and the assistant generation header.
  """
  if not _CHATML_TURN.search(template):
    raise ValueError(
      "chat template is not ChatML-shaped; install jinja2 to render it"
    )
  match = _CHATML_DEFAULT_SYSTEM.search(template)
  default_system = _unescape(match[1]) if match else ""
  parts = []
  for i, m in enumerate(messages):
    if i == 0 and m["role"] != "system":
      parts.append(default_system)
    parts.append(f"<|im_start|>{m['role']}\n{m['content']}<|im_end|>\n")
  if add_generation_prompt:
    if not _CHATML_GENERATION.search(template):
      raise ValueError("chat template has no ChatML generation prompt")
    parts.append("<|im_start|>assistant\n")
  return "".join(parts)
