"""Model configs: a frozen dataclass, HF config.json parsing, named presets."""

import dataclasses
from collections.abc import Mapping
from typing import Any

from models import glm
from models.rope import RopeConfig

# Architecture tags. "llama" also covers Yi and SmolLM2 (LlamaForCausalLM);
# "glm" is transformers' GlmForCausalLM naming, "chatglm" the original
# THUDM naming of the same GLM-4 network.
ARCHITECTURES = ("llama", "qwen2", "phi3", "glm", "chatglm")
_MODEL_TYPES = {a: a for a in ARCHITECTURES}
_ARCH_CLASSES = {
    "LlamaForCausalLM": "llama",
    "Qwen2ForCausalLM": "qwen2",
    "Phi3ForCausalLM": "phi3",
    "GlmForCausalLM": "glm",
    "ChatGLMModel": "chatglm",
    "ChatGLMForConditionalGeneration": "chatglm",
}
_HF_CLASS = {
    "llama": "LlamaForCausalLM",
    "qwen2": "Qwen2ForCausalLM",
    "phi3": "Phi3ForCausalLM",
    "glm": "GlmForCausalLM",
}


def detect_architecture(cfg: Mapping[str, Any]) -> str:
  """The architecture tag of a config.json dict.

  Raises:
    ValueError: if neither model_type nor architectures is supported.
  """
  model_type = cfg.get("model_type")
  if model_type in _MODEL_TYPES:
    return _MODEL_TYPES[model_type]
  for cls in cfg.get("architectures") or ():
    if cls in _ARCH_CLASSES:
      return _ARCH_CLASSES[cls]
  raise ValueError(
      f"unknown architecture: model_type={model_type!r}, architectures="
      f"{cfg.get('architectures')!r}; supported model types: {ARCHITECTURES}")


def _eos_tuple(value: Any) -> tuple[int, ...]:
  if value is None:
    return ()
  if isinstance(value, (list, tuple)):
    return tuple(int(v) for v in value)
  return (int(value),)


@dataclasses.dataclass(frozen=True, kw_only=True)
class ModelConfig:
  """A decoder-only LM's geometry (frozen, hashable: a valid jit static arg).

  Attributes:
    arch: one of ARCHITECTURES (selects the weight-name table).
    vocab_size, hidden_size, intermediate_size: V, H and the MLP width I.
    num_layers: L decoder layers.
    num_heads, num_kv_heads, head_dim: N, K (N % K == 0) and D.
    rope: rotary embedding (frequencies, partial/interleaved layout).
    rms_norm_eps: RMSNorm epsilon.
    tie_word_embeddings: logits use the embedding matrix (no lm_head).
    attention_bias: q/k/v projections have biases (Qwen2, GLM).
    attention_out_bias: the output projection has a bias.
    mlp_bias: gate/up/down projections have biases.
    max_position_embeddings: the advertised context length.
    bos_token_id, eos_token_ids: special tokens (generation stops on EOS).
    name: a label (preset name or checkpoint).
  """

  arch: str
  vocab_size: int
  hidden_size: int
  intermediate_size: int
  num_layers: int
  num_heads: int
  num_kv_heads: int
  head_dim: int
  rope: RopeConfig
  rms_norm_eps: float = 1e-5
  tie_word_embeddings: bool = False
  attention_bias: bool = False
  attention_out_bias: bool = False
  mlp_bias: bool = False
  max_position_embeddings: int = 8192
  bos_token_id: int | None = None
  eos_token_ids: tuple[int, ...] = ()
  name: str = ""

  def __post_init__(self):
    if self.arch not in ARCHITECTURES:
      raise ValueError(f"arch {self.arch!r} is not one of {ARCHITECTURES}")
    for f in ("vocab_size", "hidden_size", "intermediate_size", "num_layers",
              "num_heads", "num_kv_heads", "head_dim"):
      if getattr(self, f) <= 0:
        raise ValueError(f"{f} must be positive, got {getattr(self, f)}")
    if self.num_heads % self.num_kv_heads:
      raise ValueError(f"num_heads={self.num_heads} is not a multiple of "
                       f"num_kv_heads={self.num_kv_heads}")
    if self.rope.rotary_dim > self.head_dim:
      raise ValueError(f"rope.rotary_dim={self.rope.rotary_dim} exceeds "
                       f"head_dim={self.head_dim}")
    if not isinstance(self.eos_token_ids, tuple):
      object.__setattr__(self, "eos_token_ids", tuple(self.eos_token_ids))

  @property
  def group_size(self) -> int:
    """G = N // K query heads per KV head."""
    return self.num_heads // self.num_kv_heads

  @property
  def q_dim(self) -> int:
    return self.num_heads * self.head_dim

  @property
  def kv_dim(self) -> int:
    return self.num_kv_heads * self.head_dim

  def num_params(self) -> int:
    """Parameter count (embeddings, lm_head unless tied, biases included)."""
    h, i = self.hidden_size, self.intermediate_size
    attn = h * self.q_dim + 2 * h * self.kv_dim + self.q_dim * h
    if self.attention_bias:
      attn += self.q_dim + 2 * self.kv_dim
    if self.attention_out_bias:
      attn += h
    mlp = 3 * h * i + ((2 * i + h) if self.mlp_bias else 0)
    per_layer = attn + mlp + 2 * h
    head = 0 if self.tie_word_embeddings else self.vocab_size * h
    return self.vocab_size * h + self.num_layers * per_layer + h + head

  def kv_bytes_per_token(self, dtype_bytes: int = 2) -> int:
    """KV-cache bytes per token over all layers (K and V)."""
    return 2 * self.num_layers * self.kv_dim * dtype_bytes

  # ---- HF config.json ----------------------------------------------------

  @classmethod
  def from_hf_config(cls, cfg: Mapping[str, Any]) -> "ModelConfig":
    """Parses a Hugging Face config.json dict.

    Args:
      cfg: the dict (LLaMA/Yi/SmolLM2, Qwen2, Phi-3, GLM in transformers
        naming, or original ChatGLM naming).

    Raises:
      ValueError: for an unknown architecture, a missing key or an
        unsupported variant (activation, sliding window, rope type).
    """
    arch = detect_architecture(cfg)
    if arch == "chatglm":
      return cls(**glm.chatglm_fields(cfg),
                 name=str(cfg.get("_name_or_path", "")))

    def need(key: str) -> Any:
      if key not in cfg or cfg[key] is None:
        raise ValueError(f"{arch} config.json lacks required key {key!r}")
      return cfg[key]

    act = cfg.get("hidden_act", "silu")
    if act not in ("silu", "swish"):
      raise ValueError(f"hidden_act={act!r} is not supported (only silu)")
    if arch == "qwen2" and cfg.get("use_sliding_window", False):
      raise ValueError("Qwen2 with use_sliding_window=true is not supported")
    hidden = int(need("hidden_size"))
    heads = int(need("num_attention_heads"))
    head_dim = int(cfg.get("head_dim") or hidden // heads)
    kv_heads = int(cfg.get("num_key_value_heads") or heads)
    rope = RopeConfig.from_hf(cfg, head_dim=head_dim,
                              interleaved=(arch == "glm"))
    if arch == "llama":
      qkv_bias = bool(cfg.get("attention_bias", False))
      biases = (qkv_bias, qkv_bias, bool(cfg.get("mlp_bias", False)))
    elif arch == "qwen2":
      biases = (True, False, False)
    elif arch == "glm":
      biases = (bool(cfg.get("attention_bias", True)), False, False)
    else:  # phi3
      biases = (False, False, False)
    return cls(
        arch=arch,
        vocab_size=int(need("vocab_size")),
        hidden_size=hidden,
        intermediate_size=int(need("intermediate_size")),
        num_layers=int(need("num_hidden_layers")),
        num_heads=heads,
        num_kv_heads=kv_heads,
        head_dim=head_dim,
        rope=rope,
        rms_norm_eps=float(cfg.get("rms_norm_eps", 1e-6)),
        tie_word_embeddings=bool(cfg.get("tie_word_embeddings", False)),
        attention_bias=biases[0],
        attention_out_bias=biases[1],
        mlp_bias=biases[2],
        max_position_embeddings=int(cfg.get("max_position_embeddings", 2048)),
        bos_token_id=cfg.get("bos_token_id"),
        eos_token_ids=_eos_tuple(cfg.get("eos_token_id")),
        name=str(cfg.get("_name_or_path", "")),
    )

  def to_hf_config(self) -> dict[str, Any]:
    """A config.json dict in the architecture's own naming.

    `ModelConfig.from_hf_config(c.to_hf_config())` equals `c` (up to name).
    """
    fields = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
    if self.arch == "chatglm":
      out = glm.chatglm_to_hf(fields)
    else:
      out = {
          "architectures": [_HF_CLASS[self.arch]],
          "model_type": self.arch,
          "vocab_size": self.vocab_size,
          "hidden_size": self.hidden_size,
          "intermediate_size": self.intermediate_size,
          "num_hidden_layers": self.num_layers,
          "num_attention_heads": self.num_heads,
          "num_key_value_heads": self.num_kv_heads,
          "head_dim": self.head_dim,
          "hidden_act": "silu",
          "rms_norm_eps": self.rms_norm_eps,
          "tie_word_embeddings": self.tie_word_embeddings,
          "max_position_embeddings": self.max_position_embeddings,
          **self.rope.to_hf(),
      }
      partial = self.rope.rotary_dim / self.head_dim
      if partial != 1.0:
        out["partial_rotary_factor"] = partial
      if self.arch == "llama":
        out["attention_bias"] = self.attention_bias
        out["mlp_bias"] = self.mlp_bias
      if self.arch == "glm":
        out["attention_bias"] = self.attention_bias
      if (self.arch == "phi3"
          and self.rope.original_max_position_embeddings is not None):
        out["original_max_position_embeddings"] = (
            self.rope.original_max_position_embeddings)
      if self.bos_token_id is not None:
        out["bos_token_id"] = self.bos_token_id
      eos = list(self.eos_token_ids)
      if eos:
        out["eos_token_id"] = eos[0] if len(eos) == 1 else eos
    if self.name:
      out["_name_or_path"] = self.name
    return out

  # ---- lossless JSON (used by checkpoints) -------------------------------

  def to_dict(self) -> dict[str, Any]:
    """All fields as JSON-friendly values (rope nested)."""
    d = dataclasses.asdict(self)
    d["eos_token_ids"] = list(self.eos_token_ids)
    return d

  @classmethod
  def from_dict(cls, d: Mapping[str, Any]) -> "ModelConfig":
    """Inverse of to_dict.

    Raises:
      ValueError: for unknown or missing fields.
    """
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = set(d) - known
    if unknown:
      raise ValueError(f"unknown ModelConfig fields: {sorted(unknown)}")
    d = dict(d)
    rope = dict(d.pop("rope"))
    for key in ("short_factor", "long_factor"):
      if rope.get(key) is not None:
        rope[key] = tuple(rope[key])
    return cls(rope=RopeConfig(**rope),
               eos_token_ids=tuple(d.pop("eos_token_ids", ())), **d)

  # ---- presets (public config.json facts; see docs/models.md) ------------

  @classmethod
  def preset(cls, name: str, **overrides: Any) -> "ModelConfig":
    """A named preset (see PRESETS) with field overrides.

    Raises:
      ValueError: for an unknown name.
    """
    if name not in PRESETS:
      raise ValueError(f"unknown preset {name!r}; known: {sorted(PRESETS)}")
    config = cls.from_hf_config(PRESETS[name])
    return dataclasses.replace(config, name=name, **overrides)

  @classmethod
  def llama3_8b(cls, **overrides: Any) -> "ModelConfig":
    return cls.preset("llama3_8b", **overrides)

  @classmethod
  def llama3_70b(cls, **overrides: Any) -> "ModelConfig":
    return cls.preset("llama3_70b", **overrides)

  @classmethod
  def llama3_8b_262k(cls, **overrides: Any) -> "ModelConfig":
    return cls.preset("llama3_8b_262k", **overrides)

  @classmethod
  def llama3_8b_1048k(cls, **overrides: Any) -> "ModelConfig":
    return cls.preset("llama3_8b_1048k", **overrides)

  @classmethod
  def llama31_8b(cls, **overrides: Any) -> "ModelConfig":
    return cls.preset("llama31_8b", **overrides)

  @classmethod
  def yi_9b_200k(cls, **overrides: Any) -> "ModelConfig":
    return cls.preset("yi_9b_200k", **overrides)

  @classmethod
  def qwen2_7b(cls, **overrides: Any) -> "ModelConfig":
    return cls.preset("qwen2_7b", **overrides)

  @classmethod
  def phi3_mini_128k(cls, **overrides: Any) -> "ModelConfig":
    return cls.preset("phi3_mini_128k", **overrides)

  @classmethod
  def glm4_9b_1m(cls, **overrides: Any) -> "ModelConfig":
    return cls.preset("glm4_9b_1m", **overrides)

  @classmethod
  def smollm2_135m(cls, **overrides: Any) -> "ModelConfig":
    return cls.preset("smollm2_135m", **overrides)

  @classmethod
  def tiny(cls, arch: str = "llama", **overrides: Any) -> "ModelConfig":
    """A 2-layer random-weight geometry for CPU tests (GQA 4/2, D=16).

    Each arch gets its characteristic features: qwen2 q/k/v biases and tied
    embeddings, phi3 longrope, glm/chatglm interleaved half rotary.
    """
    d = 16
    rope = RopeConfig(theta=10000.0, rotary_dim=d, max_position_embeddings=64)
    extra: dict[str, Any] = {}
    if arch == "qwen2":
      extra = dict(attention_bias=True, tie_word_embeddings=True)
    elif arch == "phi3":
      rope = RopeConfig(
          kind="longrope", theta=10000.0, rotary_dim=d,
          max_position_embeddings=64, original_max_position_embeddings=16,
          short_factor=(1.0, 1.1, 1.3, 1.6, 2.0, 2.5, 3.0, 3.5),
          long_factor=(1.0, 1.5, 2.0, 3.0, 4.5, 6.0, 8.0, 12.0))
    elif arch in ("glm", "chatglm"):
      rope = RopeConfig(theta=50000.0, rotary_dim=d // 2, interleaved=True,
                        max_position_embeddings=64)
      extra = dict(attention_bias=True)
    base = dict(arch=arch, vocab_size=96, hidden_size=64,
                intermediate_size=128, num_layers=2, num_heads=4,
                num_kv_heads=2, head_dim=d, rope=rope,
                max_position_embeddings=64, eos_token_ids=(2,),
                bos_token_id=1, name=f"tiny_{arch}", **extra)
    base.update(overrides)
    return cls(**base)


# The published config.json facts behind each preset (only the keys we use).
_LLAMA3_8B = {
    "architectures": ["LlamaForCausalLM"], "model_type": "llama",
    "vocab_size": 128256, "hidden_size": 4096, "intermediate_size": 14336,
    "num_hidden_layers": 32, "num_attention_heads": 32,
    "num_key_value_heads": 8, "rms_norm_eps": 1e-5, "rope_theta": 500000.0,
    "max_position_embeddings": 8192, "tie_word_embeddings": False,
    "bos_token_id": 128000, "eos_token_id": [128001, 128009],
}

# Phi-3-mini-128k-instruct's LongRoPE factors as first released (April
# 2024; the same lists ship with Phi-3-vision-128k). A later revision of the
# checkpoint changed them: load the checkpoint's own config.json for real
# weights.
_PHI3_LONG = (
    1.0299999713897705, 1.0499999523162842, 1.0499999523162842,
    1.0799999237060547, 1.2299998998641968, 1.2299998998641968,
    1.2999999523162842, 1.4499999284744263, 1.5999999046325684,
    1.6499998569488525, 1.8999998569488525, 2.859999895095825,
    3.68999981880188, 5.419999599456787, 5.489999771118164, 5.489999771118164,
    9.09000015258789, 11.579999923706055, 15.65999984741211,
    15.769999504089355, 15.789999961853027, 18.360000610351562,
    21.989999771118164, 23.079999923706055, 30.009998321533203,
    32.35000228881836, 32.590003967285156, 35.56000518798828,
    39.95000457763672, 53.840003967285156, 56.20000457763672,
    57.95000457763672, 59.29000473022461, 59.77000427246094,
    59.920005798339844, 61.190006256103516, 61.96000671386719,
    62.50000762939453, 63.3700065612793, 63.48000717163086, 63.48000717163086,
    63.66000747680664, 63.850006103515625, 64.08000946044922, 64.760009765625,
    64.80001068115234, 64.81001281738281, 64.81001281738281,
)
_PHI3_SHORT = (
    1.05, 1.05, 1.05, 1.1, 1.1, 1.1, 1.2500000000000002, 1.2500000000000002,
    1.4000000000000004, 1.4500000000000004, 1.5500000000000005,
    1.8500000000000008, 1.9000000000000008, *([2.000000000000001] * 19),
    2.1000000000000005, 2.1000000000000005, 2.2, 2.3499999999999996,
    2.3499999999999996, 2.3499999999999996, 2.3499999999999996,
    2.3999999999999995, 2.3999999999999995, 2.6499999999999986,
    2.6999999999999984, 2.8999999999999977, 2.9499999999999975,
    3.049999999999997, 3.049999999999997, 3.049999999999997,
)

PRESETS: dict[str, dict[str, Any]] = {
    # meta-llama/Meta-Llama-3-8B(-Instruct)
    "llama3_8b": _LLAMA3_8B,
    # meta-llama/Meta-Llama-3-70B(-Instruct)
    "llama3_70b": {**_LLAMA3_8B, "hidden_size": 8192,
                   "intermediate_size": 28672, "num_hidden_layers": 80,
                   "num_attention_heads": 64},
    # gradientai/Llama-3-8B-Instruct-262k
    "llama3_8b_262k": {**_LLAMA3_8B, "rope_theta": 283461213.0,
                       "max_position_embeddings": 262144},
    # gradientai/Llama-3-8B-Instruct-Gradient-1048k
    "llama3_8b_1048k": {**_LLAMA3_8B, "rope_theta": 3580165449.0,
                        "max_position_embeddings": 1048576},
    # meta-llama/Meta-Llama-3.1-8B-Instruct
    "llama31_8b": {**_LLAMA3_8B, "max_position_embeddings": 131072,
                   "eos_token_id": [128001, 128008, 128009],
                   "rope_scaling": {"rope_type": "llama3", "factor": 8.0,
                                    "low_freq_factor": 1.0,
                                    "high_freq_factor": 4.0,
                                    "original_max_position_embeddings": 8192}},
    # 01-ai/Yi-9B-200K (LlamaForCausalLM)
    "yi_9b_200k": {
        "architectures": ["LlamaForCausalLM"], "model_type": "llama",
        "vocab_size": 64000, "hidden_size": 4096, "intermediate_size": 11008,
        "num_hidden_layers": 48, "num_attention_heads": 32,
        "num_key_value_heads": 4, "rms_norm_eps": 1e-6,
        "rope_theta": 10000000.0, "max_position_embeddings": 262144,
        "tie_word_embeddings": False, "bos_token_id": 1, "eos_token_id": 2},
    # Qwen/Qwen2-7B-Instruct
    "qwen2_7b": {
        "architectures": ["Qwen2ForCausalLM"], "model_type": "qwen2",
        "vocab_size": 152064, "hidden_size": 3584, "intermediate_size": 18944,
        "num_hidden_layers": 28, "num_attention_heads": 28,
        "num_key_value_heads": 4, "rms_norm_eps": 1e-6,
        "rope_theta": 1000000.0, "max_position_embeddings": 32768,
        "tie_word_embeddings": False, "bos_token_id": 151643,
        "eos_token_id": 151645},
    # microsoft/Phi-3-mini-128k-instruct
    "phi3_mini_128k": {
        "architectures": ["Phi3ForCausalLM"], "model_type": "phi3",
        "vocab_size": 32064, "hidden_size": 3072, "intermediate_size": 8192,
        "num_hidden_layers": 32, "num_attention_heads": 32,
        "num_key_value_heads": 32, "rms_norm_eps": 1e-5, "rope_theta": 10000.0,
        "max_position_embeddings": 131072,
        "original_max_position_embeddings": 4096,
        "rope_scaling": {"type": "longrope", "long_factor": list(_PHI3_LONG),
                         "short_factor": list(_PHI3_SHORT)},
        "tie_word_embeddings": False, "bos_token_id": 1,
        "eos_token_id": 32000},
    # THUDM/glm-4-9b-chat-1m (original ChatGLM naming)
    "glm4_9b_1m": glm.GLM4_9B_CHAT_1M,
    # HuggingFaceTB/SmolLM2-135M(-Instruct)
    "smollm2_135m": {
        "architectures": ["LlamaForCausalLM"], "model_type": "llama",
        "vocab_size": 49152, "hidden_size": 576, "intermediate_size": 1536,
        "num_hidden_layers": 30, "num_attention_heads": 9,
        "num_key_value_heads": 3, "head_dim": 64, "rms_norm_eps": 1e-5,
        "rope_theta": 100000.0, "max_position_embeddings": 8192,
        "tie_word_embeddings": True, "bos_token_id": 1, "eos_token_id": 2},
}
