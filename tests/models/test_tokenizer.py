"""Tokenizer: GGUF rebuild vs transformers' ids, chat template, JSON."""

import importlib.util
import json
from pathlib import Path

import gguf
import pytest
from hypothesis import given
from hypothesis import strategies as st

from models import assets
from models.tokenizer import Tokenizer, render_chat_template
from paths import FIXTURES_DIR

FIXTURES = FIXTURES_DIR / "smollm2"
HAS_JINJA = importlib.util.find_spec("jinja2") is not None


@pytest.fixture(scope="module")
def meta() -> dict:
  return json.loads((FIXTURES / "expected.json").read_text())


@pytest.fixture(scope="module")
def smol() -> Tokenizer:
  try:
    path = assets.smollm2_gguf_path()
  except FileNotFoundError as err:
    pytest.skip(f"SmolLM2 GGUF not installed: {err}")
  return Tokenizer.from_gguf(path)


def test_ids_match_transformers(smol, meta):
  cases = meta["tokenizer_cases"]
  assert len(cases) >= 9
  for case in cases:
    assert smol.encode(case["text"]) == case["ids"], case["text"]
    # The GGUF says add_bos_token = false; transformers agrees.
    assert smol.encode(case["text"]) == case["ids_add_special"]
    assert smol.decode(case["ids"]) == case["decoded"], case["text"]


def test_prompt_ids_match_fixture_logits_inputs(smol, meta):
  import safetensors.numpy

  arrays = safetensors.numpy.load_file(str(FIXTURES / "expected.safetensors"))
  for key, text in meta["prompts"].items():
    assert smol.encode(text) == arrays[f"{key}.ids"].tolist(), key


def test_special_tokens(smol, meta):
  special = meta["special"]
  assert smol.bos_token_id == special["bos_token_id"]
  assert smol.eos_token_id == special["eos_token_id"]
  assert smol.bos_token == special["bos_token"]
  assert smol.eos_token == special["eos_token"]
  assert smol.add_bos is False
  assert smol.vocab_size == meta["config"]["vocab_size"]
  # Special-token text is one id each; with add_bos the BOS id leads.
  assert smol.encode("<|im_end|>") == [special["eos_token_id"]]
  assert smol.encode("hi", add_bos=True)[0] == special["bos_token_id"]
  eos = special["eos_token_id"]
  assert smol.decode([eos], skip_special_tokens=True) == ""


def test_digits_split_one_by_one(smol):
  # SmolLM2's pre-tokenizer ("smollm" in llama.cpp) isolates every digit.
  ids = smol.encode("31415926")
  assert [smol.decode([i]) for i in ids] == list("31415926")


def test_chat_template_builtin_renderer_matches_transformers(smol, meta):
  assert smol.chat_template == meta["chat_template"]
  for case in meta["chat_cases"]:
    out = render_chat_template(
      smol.chat_template,
      case["messages"],
      add_generation_prompt=case["add_generation_prompt"],
      use_jinja=False,
    )
    assert out == case["rendered"]


@pytest.mark.skipif(not HAS_JINJA, reason="jinja2 is not installed here")
def test_chat_template_jinja_matches_transformers(smol, meta):
  for case in meta["chat_cases"]:
    out = render_chat_template(
      smol.chat_template,
      case["messages"],
      add_generation_prompt=case["add_generation_prompt"],
      use_jinja=True,
    )
    assert out == case["rendered"]


def test_apply_chat_template_tokenized(smol, meta):
  import safetensors.numpy

  arrays = safetensors.numpy.load_file(str(FIXTURES / "expected.safetensors"))
  ids = smol.apply_chat_template(meta["chat_messages"], tokenize=True)
  assert ids == arrays["chat.ids"].tolist()
  text = smol.apply_chat_template(meta["chat_messages"])
  assert text == meta["prompts"]["chat"]


def test_chat_template_errors(smol):
  with pytest.raises(ValueError, match="'role' and 'content'"):
    smol.apply_chat_template([{"role": "user"}])
  with pytest.raises(ValueError, match="not ChatML-shaped"):
    render_chat_template(
      "{% for m in messages %}[INST] {{ m.content }} [/INST]{% endfor %}",
      [{"role": "user", "content": "hi"}],
      use_jinja=False,
    )


def test_tokenizer_json_round_trip(smol, meta, tmp_path):
  again = Tokenizer.from_file(smol.save(tmp_path / "tok"))
  for case in meta["tokenizer_cases"]:
    assert again.encode(case["text"]) == case["ids"]
  assert (again.bos_token_id, again.eos_token_id) == (
    smol.bos_token_id,
    smol.eos_token_id,
  )
  assert again.chat_template == smol.chat_template
  assert again.apply_chat_template(
    meta["chat_messages"]
  ) == smol.apply_chat_template(meta["chat_messages"])


def test_from_file_errors(tmp_path):
  with pytest.raises(FileNotFoundError):
    Tokenizer.from_file(tmp_path)
  bad = tmp_path / "tokenizer.json"
  bad.write_text("{not json")
  with pytest.raises(ValueError, match="not a valid tokenizer.json"):
    Tokenizer.from_file(bad)


# ---- a tiny byte-level BPE written into GGUF metadata here -------------------


def gpt2_byte_alphabet() -> list[str]:
  """GPT-2's byte -> printable character table (written from its definition).

  Printable Latin-1 bytes ('!'..'~', '¡'..'¬', '®'..'ÿ') stand for
  themselves; the other 68 bytes map, in byte order, to chr(256), chr(257), ...
  """
  keep = (
    set(range(ord("!"), ord("~") + 1))
    | set(range(0xA1, 0xAD))
    | set(range(0xAE, 0x100))
  )
  out, extra = [], 0
  for b in range(256):
    if b in keep:
      out.append(chr(b))
    else:
      out.append(chr(256 + extra))
      extra += 1
  return out


def tiny_meta(**override) -> dict:
  alphabet = gpt2_byte_alphabet()
  merges = ["h i", "\u0120 hi", "l o", "lo w"]  # Ġ is the byte-level space
  tokens = ["<unk>", "<s>", "</s>", "<tool>"] + alphabet
  tokens += ["hi", "\u0120hi", "lo", "low"]
  types = [3, 3, 3, 4] + [1] * (len(tokens) - 4)
  meta = {
    "tokenizer.ggml.model": "gpt2",
    "tokenizer.ggml.pre": "smollm",
    "tokenizer.ggml.tokens": tokens,
    "tokenizer.ggml.token_type": types,
    "tokenizer.ggml.merges": merges,
    "tokenizer.ggml.bos_token_id": 1,
    "tokenizer.ggml.eos_token_id": 2,
    "tokenizer.ggml.add_bos_token": True,
  }
  meta.update(override)
  return meta


def test_tiny_bpe_merges_and_added_tokens():
  tok = Tokenizer.from_gguf_metadata(tiny_meta())
  vocab = {t: i for i, t in enumerate(tiny_meta()["tokenizer.ggml.tokens"])}
  ids = tok.encode("hi hi low<tool></s>")
  assert ids == [
    1,
    vocab["hi"],
    vocab["\u0120hi"],
    vocab["\u0120"],
    vocab["low"],
    vocab["<tool>"],
    2,
  ]
  assert tok.decode(ids, skip_special_tokens=True) == "hi hi low<tool>"
  assert tok.encode("42", add_bos=False) == [vocab["4"], vocab["2"]]


TINY_TOK = Tokenizer.from_gguf_metadata(tiny_meta())


@given(st.text(max_size=40))
def test_tiny_bpe_round_trips_any_text(text):
  tok = TINY_TOK
  # Text that spells a special token would decode back to it as well; skip
  # it so the property is about bytes, not token names.
  if any(s in text for s in ("<s>", "</s>", "<unk>", "<tool>")):
    return
  assert tok.decode(tok.encode(text, add_bos=False)) == text


def test_tiny_bpe_from_gguf_file(tmp_path):
  meta = tiny_meta()
  path = tmp_path / "tok.gguf"
  w = gguf.GGUFWriter(str(path), arch="llama")
  w.add_tokenizer_model(meta["tokenizer.ggml.model"])
  w.add_tokenizer_pre(meta["tokenizer.ggml.pre"])
  w.add_token_list(meta["tokenizer.ggml.tokens"])
  w.add_token_types(meta["tokenizer.ggml.token_type"])
  w.add_token_merges(meta["tokenizer.ggml.merges"])
  w.add_bos_token_id(1)
  w.add_eos_token_id(2)
  w.add_add_bos_token(True)
  w.add_chat_template("{{ '<|im_start|>' + message['role'] + '\\n' }}")
  w.write_header_to_file()
  w.write_kv_data_to_file()
  w.write_tensors_to_file()
  w.close()
  from_file = Tokenizer.from_gguf(path)
  from_dict = Tokenizer.from_gguf_metadata(meta)
  for text in ("hi low", "  lo w\n", "x<tool>y"):
    assert from_file.encode(text) == from_dict.encode(text)
  assert from_file.chat_template.startswith("{{ '<|im_start|>'")


@pytest.mark.parametrize(
  "override,match",
  [
    ({"tokenizer.ggml.model": "llama"}, "only 'gpt2'"),
    ({"tokenizer.ggml.pre": "mystery"}, "unsupported tokenizer.ggml.pre"),
    ({"tokenizer.ggml.merges": ["h i j"]}, "malformed merge"),
    ({"tokenizer.ggml.merges": []}, "lacks tokenizer.ggml.tokens/merges"),
    ({"tokenizer.ggml.token_type": [1, 1]}, "token_type has 2 entries"),
    ({"tokenizer.ggml.eos_token_id": 10**6}, "outside the vocabulary"),
  ],
)
def test_bad_gguf_tokenizer_metadata(override, match):
  with pytest.raises(ValueError, match=match):
    Tokenizer.from_gguf_metadata(tiny_meta(**override))


def test_input_errors():
  tok = Tokenizer.from_gguf_metadata(tiny_meta())
  with pytest.raises(TypeError, match="text must be str"):
    tok.encode(b"bytes")
  with pytest.raises(ValueError, match="ids outside"):
    tok.decode([tok.vocab_size])
  with pytest.raises(ValueError, match="no chat_template"):
    tok.apply_chat_template([{"role": "user", "content": "hi"}])
