"""SmolLM2-135M-Instruct (bundled GGUF): our JAX model vs transformers (f32)."""

# Both sides run the same dequantised fp32 weights (transformers dequantises
# the GGUF itself), so the only differences are float rounding over 30
# layers. Tolerance: |ours - transformers| <= 1e-3 absolute per logit (logits
# reach ~20). Expected values: tests/fixtures/smollm2 (scripts/
# make_model_fixtures.py).

import json
from pathlib import Path

import jax.numpy as jnp
import numpy as np
import pytest
import safetensors.numpy

from attention_reference import reference_attention
from models import assets, gguf_io
from models.config import ModelConfig
from models.generate import generate_greedy
from models.llama import CausalLM
from models.tokenizer import Tokenizer
from models.weights import params_from_state_dict
from paths import FIXTURES_DIR

FIXTURES = FIXTURES_DIR / "smollm2"
ATOL = 1e-3


@pytest.fixture(scope="module")
def smol():
  """(model, tokenizer, expected arrays, expected json), built once."""
  try:
    path = assets.smollm2_gguf_path()
  except FileNotFoundError as err:
    pytest.skip(f"SmolLM2 GGUF not installed: {err}")
  reader = gguf_io.read_gguf(path)  # opened once for weights and tokenizer
  hf_config, state = gguf_io.load_gguf(reader)
  config = ModelConfig.from_hf_config(hf_config)
  params = params_from_state_dict(config, state, dtype=jnp.float32)
  del state
  model = CausalLM(config, params, attention=reference_attention)
  tok = Tokenizer.from_gguf(reader)
  arrays = safetensors.numpy.load_file(str(FIXTURES / "expected.safetensors"))
  meta = json.loads((FIXTURES / "expected.json").read_text())
  return model, tok, arrays, meta


def test_config_is_smollm2(smol):
  model, _, _, meta = smol
  c = model.config
  want = meta["config"]
  assert (c.num_layers, c.hidden_size, c.intermediate_size) == (
    want["num_hidden_layers"],
    want["hidden_size"],
    want["intermediate_size"],
  )
  assert (c.num_heads, c.num_kv_heads, c.head_dim) == (
    want["num_attention_heads"],
    want["num_key_value_heads"],
    want["head_dim"],
  )
  assert c.vocab_size == want["vocab_size"] and c.tie_word_embeddings
  assert c.rope.theta == want["rope_theta"]


@pytest.mark.parametrize("prompt", ["text", "chat"])
def test_prompt_logits_match_transformers(smol, prompt):
  model, tok, arrays, meta = smol
  ids = arrays[f"{prompt}.ids"]
  assert tok.encode(meta["prompts"][prompt]) == ids.tolist()
  last = meta["last_positions"]
  idx = np.arange(len(ids) - last, len(ids))
  got, _ = model(jnp.asarray(ids[None]), logits_for=idx)
  got = np.asarray(got, np.float32)[0]  # [last, V]
  assert got.shape == (last, model.config.vocab_size)
  subset = arrays["vocab_subset"]
  np.testing.assert_allclose(
    got[:, subset], arrays[f"{prompt}.subset_logits"], atol=ATOL, rtol=0
  )
  top_ids = arrays[f"{prompt}.top_ids"]  # [last, 64]
  np.testing.assert_allclose(
    np.take_along_axis(got, top_ids, -1),
    arrays[f"{prompt}.top_logits"],
    atol=ATOL,
    rtol=0,
  )
  # logsumexp covers every vocab entry: a bad tail would show here.
  g64 = got.astype(np.float64)
  peak = g64.max(-1, keepdims=True)
  lse = (peak + np.log(np.exp(g64 - peak).sum(-1, keepdims=True)))[:, 0]
  np.testing.assert_allclose(
    lse, arrays[f"{prompt}.logsumexp"], atol=ATOL, rtol=0
  )
  # Top-5 ids agree wherever transformers' ranking is not a near-tie.
  want_top = arrays[f"{prompt}.top_logits"]
  ours_top = np.argsort(-got, axis=-1, kind="stable")[:, :5]
  for pos in range(last):
    for r in range(5):
      gap_above = np.inf if r == 0 else want_top[pos, r - 1] - want_top[pos, r]
      gap_below = want_top[pos, r] - want_top[pos, r + 1]
      if min(gap_above, gap_below) > 4 * ATOL:
        assert ours_top[pos, r] == top_ids[pos, r], (prompt, pos, r)
  if prompt == "text":
    np.testing.assert_allclose(
      got[-1], arrays["text.last_logits"], atol=ATOL, rtol=0
    )


def test_greedy_generation_reproduces_transformers(smol):
  model, tok, arrays, meta = smol
  want = arrays["generate.ids"].tolist()
  # transformers' greedy steps never came closer than this to a tie.
  assert arrays["generate.top2_margin"].min() > 20 * ATOL
  prompt = jnp.asarray(arrays["chat.ids"][None])
  result = generate_greedy(
    model,
    prompt,
    max_new_tokens=meta["generate"]["max_new_tokens"],
    eos_ids=[tok.eos_token_id],
  )
  got = np.asarray(result.tokens)[0, : int(result.lengths[0])].tolist()
  assert got == want
  text = tok.decode(got, skip_special_tokens=True)
  assert text == meta["generate"]["text"]
  assert "Paris" in text
