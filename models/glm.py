"""GLM-4 specifics: original ChatGLM config.json naming and GLM's rotary layout.

GLM-4 is a LLaMA-style decoder (RMSNorm, SwiGLU, GQA with q/k/v biases) whose
rotary embedding differs in two ways, shared by the original ChatGLM code and
transformers' `GlmForCausalLM`:
  * only the first half of each head's dims rotate (ChatGLM: rotary over
    kv_channels // 2; transformers: partial_rotary_factor = 0.5);
  * rotated pairs are adjacent dims (2i, 2i+1), not (i, i + R/2);
and the base is 10000 * rope_ratio (transformers stores it as rope_theta).
The forward pass itself is the shared one in models/llama.py.
"""

from collections.abc import Mapping
from typing import Any

from models.rope import RopeConfig

# ChatGLM's RotaryEmbedding multiplies this base by rope_ratio.
CHATGLM_BASE_THETA = 10000.0


def _require(cfg: Mapping[str, Any], key: str) -> Any:
  if key not in cfg:
    raise ValueError(f"ChatGLM config.json lacks required key {key!r}")
  return cfg[key]


def _eos_tuple(value: Any) -> tuple[int, ...]:
  if value is None:
    return ()
  if isinstance(value, (list, tuple)):
    return tuple(int(v) for v in value)
  return (int(value),)


def chatglm_fields(cfg: Mapping[str, Any]) -> dict[str, Any]:
  """ModelConfig fields from an original ChatGLM (glm-4-*-chat) config.json.

  Args:
    cfg: the config.json dict (model_type "chatglm").

  Returns:
    Keyword arguments for ModelConfig (arch "chatglm").

  Raises:
    ValueError: for a missing key or a variant we do not implement
      (LayerNorm instead of RMSNorm, no final norm, post-norm residuals).
  """
  if not cfg.get("rmsnorm", True):
    raise ValueError("ChatGLM with rmsnorm=false (LayerNorm) is not supported")
  if not cfg.get("post_layer_norm", True):
    raise ValueError("ChatGLM with post_layer_norm=false is not supported")
  if cfg.get("apply_residual_connection_post_layernorm", False):
    raise ValueError("ChatGLM with apply_residual_connection_post_layernorm="
                     "true is not supported")
  hidden = int(_require(cfg, "hidden_size"))
  heads = int(_require(cfg, "num_attention_heads"))
  head_dim = int(cfg.get("kv_channels") or hidden // heads)
  kv_heads = heads
  if cfg.get("multi_query_attention", False):
    kv_heads = int(_require(cfg, "multi_query_group_num"))
  layers = cfg.get("num_layers", cfg.get("num_hidden_layers"))
  if layers is None:
    raise ValueError("ChatGLM config.json lacks required key 'num_layers'")
  max_pos = int(cfg.get("seq_length", 2048))
  rope_ratio = float(cfg.get("rope_ratio", 1.0))
  rope = RopeConfig(
      kind="default",
      theta=CHATGLM_BASE_THETA * rope_ratio,
      rotary_dim=head_dim // 2,
      interleaved=True,
      max_position_embeddings=max_pos,
  )
  linear_bias = bool(cfg.get("add_bias_linear", False))
  return dict(
      arch="chatglm",
      vocab_size=int(cfg.get("padded_vocab_size", cfg.get("vocab_size", 0))),
      hidden_size=hidden,
      intermediate_size=int(_require(cfg, "ffn_hidden_size")),
      num_layers=int(layers),
      num_heads=heads,
      num_kv_heads=kv_heads,
      head_dim=head_dim,
      rope=rope,
      rms_norm_eps=float(cfg.get("layernorm_epsilon", 1e-5)),
      tie_word_embeddings=bool(cfg.get("tie_word_embeddings", False)),
      attention_bias=bool(cfg.get("add_qkv_bias", False)),
      attention_out_bias=linear_bias,
      mlp_bias=linear_bias,
      max_position_embeddings=max_pos,
      bos_token_id=cfg.get("bos_token_id"),
      eos_token_ids=_eos_tuple(cfg.get("eos_token_id")),
  )


def chatglm_to_hf(fields: Mapping[str, Any]) -> dict[str, Any]:
  """An original-ChatGLM config.json dict; inverse of chatglm_fields.

  Args:
    fields: ModelConfig fields (dataclasses.asdict-like, `rope` a
      RopeConfig) of an arch "chatglm" config.

  Raises:
    ValueError: when the rope cannot be written in ChatGLM's terms.
  """
  rope: RopeConfig = fields["rope"]
  if (rope.kind != "default" or not rope.interleaved
      or rope.rotary_dim != fields["head_dim"] // 2):
    raise ValueError("a ChatGLM config needs default, interleaved rope over "
                     f"head_dim // 2 dims, got {rope}")
  if fields["attention_out_bias"] != fields["mlp_bias"]:
    raise ValueError("ChatGLM has one add_bias_linear flag for the output "
                     "and MLP projections; they differ here")
  multi_query = fields["num_kv_heads"] != fields["num_heads"]
  eos = list(fields["eos_token_ids"])
  out = {
      "architectures": ["ChatGLMModel"],
      "model_type": "chatglm",
      "padded_vocab_size": fields["vocab_size"],
      "hidden_size": fields["hidden_size"],
      "ffn_hidden_size": fields["intermediate_size"],
      "num_layers": fields["num_layers"],
      "num_attention_heads": fields["num_heads"],
      "kv_channels": fields["head_dim"],
      "multi_query_attention": multi_query,
      "multi_query_group_num": fields["num_kv_heads"],
      "seq_length": fields["max_position_embeddings"],
      "rope_ratio": rope.theta / CHATGLM_BASE_THETA,
      "layernorm_epsilon": fields["rms_norm_eps"],
      "add_qkv_bias": fields["attention_bias"],
      "add_bias_linear": fields["attention_out_bias"],
      "rmsnorm": True,
      "post_layer_norm": True,
      "apply_residual_connection_post_layernorm": False,
      "original_rope": True,
      "tie_word_embeddings": fields["tie_word_embeddings"],
      "eos_token_id": eos[0] if len(eos) == 1 else eos,
  }
  if fields.get("bos_token_id") is not None:
    out["bos_token_id"] = fields["bos_token_id"]
  return out


# glm-4-9b-chat-1m's published config.json (THUDM), the model MInference
# evaluates as GLM-4-9B-1M.
GLM4_9B_CHAT_1M = {
    "architectures": ["ChatGLMModel"],
    "model_type": "chatglm",
    "padded_vocab_size": 151552,
    "hidden_size": 4096,
    "ffn_hidden_size": 13696,
    "num_layers": 40,
    "num_attention_heads": 32,
    "kv_channels": 128,
    "multi_query_attention": True,
    "multi_query_group_num": 4,
    "seq_length": 1048576,
    "rope_ratio": 10000,
    "layernorm_epsilon": 1.5625e-07,
    "add_qkv_bias": True,
    "add_bias_linear": False,
    "rmsnorm": True,
    "post_layer_norm": True,
    "apply_residual_connection_post_layernorm": False,
    "original_rope": True,
    "tie_word_embeddings": False,
    "eos_token_id": [151329, 151336, 151338],
}
