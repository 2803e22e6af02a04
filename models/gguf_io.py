"""Reads GGUF checkpoints into an HF-style config and HF-named state dict."""

# Facts used here (GGUF v3 / llama.cpp's HF -> GGUF converter):
# - tensor names: token_embd, output_norm, output, blk.N.{attn_norm, attn_q,
#   attn_k, attn_v, attn_output, ffn_norm, ffn_gate, ffn_up, ffn_down};
# - a tensor's GGUF shape lists dimensions fastest-first, so a matrix stored as
#   [in, out] reads in NumPy as [out, in], i.e. the HF nn.Linear layout;
# - for the llama architecture the converter permutes the rows of attn_q and
#   attn_k per head (attn_k grouped by the KV head count) from HF's
#   rotate-half RoPE layout into GGML's interleaved-pair layout: within each
#   head of D rows, row j * D/2 + i moves to row 2 * i + j (j in {0, 1}).
#   `unpermute_qk` undoes that so HF-style RoPE applies.

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import gguf
import numpy as np
from jaxtyping import Float, Shaped

GGUF_MAGIC = b"GGUF"
SUPPORTED_ARCHITECTURES = ("llama",)

_GLOBAL_NAMES = {
  "token_embd.weight": "model.embed_tokens.weight",
  "output_norm.weight": "model.norm.weight",
  "output.weight": "lm_head.weight",
}
_BLOCK_NAMES = {
  "attn_norm.weight": "input_layernorm.weight",
  "attn_q.weight": "self_attn.q_proj.weight",
  "attn_k.weight": "self_attn.k_proj.weight",
  "attn_v.weight": "self_attn.v_proj.weight",
  "attn_output.weight": "self_attn.o_proj.weight",
  "attn_q.bias": "self_attn.q_proj.bias",
  "attn_k.bias": "self_attn.k_proj.bias",
  "attn_v.bias": "self_attn.v_proj.bias",
  "ffn_norm.weight": "post_attention_layernorm.weight",
  "ffn_gate.weight": "mlp.gate_proj.weight",
  "ffn_up.weight": "mlp.up_proj.weight",
  "ffn_down.weight": "mlp.down_proj.weight",
}
_FLOAT_TYPES = {
  gguf.GGMLQuantizationType.F32: np.float32,
  gguf.GGMLQuantizationType.F16: np.float16,
}


def read_gguf(path: str | Path) -> gguf.GGUFReader:
  """Opens a GGUF file (memory-mapped) after checking it is whole.

  Args:
    path: the .gguf file.

  Returns:
    A `gguf.GGUFReader` whose tensors all lie inside the file.

  Raises:
    FileNotFoundError: `path` does not exist.
    ValueError: not a GGUF file, or a corrupt or truncated one.
  """
  path = Path(path)
  if not path.is_file():
    raise FileNotFoundError(f"GGUF file not found: {path}")
  size = path.stat().st_size
  with path.open("rb") as f:
    magic = f.read(4)
  if magic != GGUF_MAGIC:
    raise ValueError(f"{path} is not a GGUF file (magic {magic!r})")
  try:
    reader = gguf.GGUFReader(path)
    tensors = reader.tensors
  except (ValueError, IndexError, KeyError, OverflowError, EOFError) as err:
    raise ValueError(
      f"{path} ({size} bytes) is truncated or corrupt: {err}"
    ) from err
  for t in tensors:
    end = int(t.data_offset) + int(t.n_bytes)
    if end > size or t.data.nbytes != int(t.n_bytes):
      raise ValueError(
        f"{path} is truncated: tensor {t.name!r} ends at byte {end}, file has"
        f" {size}"
      )
  return reader


def gguf_metadata(
  reader: gguf.GGUFReader, *, skip_large_arrays: bool = False
) -> dict[str, Any]:
  """All metadata fields as plain Python values (str, int, float, list).

  Args:
    reader: an open GGUF reader.
    skip_large_arrays: leave out arrays of more than 1024 entries (the
      tokenizer's tokens, merges and token types), which take seconds to
      convert.

  Returns:
    {key: value}, without the GGUF.* header fields.
  """
  meta = {}
  for key, field in reader.fields.items():
    if key.startswith("GGUF."):
      continue
    if skip_large_arrays and len(field.data) > 1024:
      continue
    meta[key] = field.contents()
  return meta


def _require(meta: dict[str, Any], key: str) -> Any:
  if key not in meta:
    raise ValueError(f"GGUF metadata lacks the required key {key!r}")
  return meta[key]


def config_from_gguf(
  meta: dict[str, Any], tensor_names: set[str] | None = None
) -> dict[str, Any]:
  """GGUF metadata -> a config dict in transformers' config.json form.

  Args:
    meta: output of `gguf_metadata`.
    tensor_names: names of the file's tensors; the embeddings are tied when
      there is no "output.weight". None assumes untied.

  Returns:
    {"architectures": ["LlamaForCausalLM"], "model_type": "llama",
    "vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers",
    "num_attention_heads", "num_key_value_heads", "head_dim", "rope_theta",
    "rope_scaling", "rms_norm_eps", "max_position_embeddings",
    "tie_word_embeddings", "bos_token_id", "eos_token_id", ...}.

  Raises:
    ValueError: unknown architecture, missing keys, or a partial rotary
      dimension (not a llama-family checkpoint).
  """
  arch = _require(meta, "general.architecture")
  if arch not in SUPPORTED_ARCHITECTURES:
    raise ValueError(
      f"unsupported GGUF architecture {arch!r}; supported: "
      f"{SUPPORTED_ARCHITECTURES}"
    )
  hidden = int(_require(meta, f"{arch}.embedding_length"))
  heads = int(_require(meta, f"{arch}.attention.head_count"))
  kv_heads = int(meta.get(f"{arch}.attention.head_count_kv", heads))
  head_dim = int(meta.get(f"{arch}.attention.key_length", hidden // heads))
  rot = int(meta.get(f"{arch}.rope.dimension_count", head_dim))
  if rot != head_dim:
    raise ValueError(
      f"rope.dimension_count={rot} != head_dim={head_dim}: partial rotary is"
      " not supported for the llama architecture"
    )
  if heads % kv_heads:
    raise ValueError(f"head_count={heads} not a multiple of {kv_heads=}")
  vocab = meta.get(f"{arch}.vocab_size")
  if vocab is None and "tokenizer.ggml.tokens" in meta:
    vocab = len(meta["tokenizer.ggml.tokens"])
  if vocab is None:
    raise ValueError(
      f"GGUF metadata gives no vocabulary size ({arch}.vocab_size)"
    )
  config = {
    "architectures": ["LlamaForCausalLM"],
    "model_type": "llama",
    "vocab_size": int(vocab),
    "hidden_size": hidden,
    "intermediate_size": int(_require(meta, f"{arch}.feed_forward_length")),
    "num_hidden_layers": int(_require(meta, f"{arch}.block_count")),
    "num_attention_heads": heads,
    "num_key_value_heads": kv_heads,
    "head_dim": head_dim,
    "rope_theta": float(meta.get(f"{arch}.rope.freq_base", 10000.0)),
    "rope_scaling": _rope_scaling(meta, arch),
    "rms_norm_eps": float(
      _require(meta, f"{arch}.attention.layer_norm_rms_epsilon")
    ),
    "max_position_embeddings": int(_require(meta, f"{arch}.context_length")),
    "tie_word_embeddings": (
      tensor_names is not None and "output.weight" not in tensor_names
    ),
    "hidden_act": "silu",
    "attention_bias": False,
    "mlp_bias": False,
    "torch_dtype": "float32",
  }
  for key in ("bos_token_id", "eos_token_id", "padding_token_id"):
    value = meta.get(f"tokenizer.ggml.{key}")
    if value is not None:
      config[key.replace("padding", "pad")] = int(value)
  return config


def _rope_scaling(meta: dict[str, Any], arch: str) -> dict[str, Any] | None:
  kind = meta.get(f"{arch}.rope.scaling.type", "none")
  if kind == "none":
    return None
  factor = float(_require(meta, f"{arch}.rope.scaling.factor"))
  if kind == "linear":
    return {"rope_type": "linear", "factor": factor}
  if kind == "yarn":
    return {
      "rope_type": "yarn",
      "factor": factor,
      "original_max_position_embeddings": int(
        _require(meta, f"{arch}.rope.scaling.original_context_length")
      ),
    }
  raise ValueError(f"unsupported GGUF rope scaling type {kind!r}")


def permute_qk(
  w: Shaped[np.ndarray, "R ..."], n_heads: int
) -> Shaped[np.ndarray, "R ..."]:
  """HF rotate-half row order -> GGML interleaved-pair order (llama.cpp's).

  Args:
    w: [n_heads * D, ...] rows of q_proj/k_proj (weight or bias).
    n_heads: query heads for q, KV heads for k.

  Returns:
    Array like `w` with rows permuted within each head.
  """
  rows = w.shape[0]
  _check_heads(rows, n_heads)
  half = rows // n_heads // 2
  x = w.reshape(n_heads, 2, half, *w.shape[1:])  # [H, 2, D/2, ...]
  return np.ascontiguousarray(np.swapaxes(x, 1, 2).reshape(w.shape))


def unpermute_qk(
  w: Shaped[np.ndarray, "R ..."], n_heads: int
) -> Shaped[np.ndarray, "R ..."]:
  """Inverse of `permute_qk`: GGML interleaved rows -> HF rotate-half rows.

  Args:
    w: [n_heads * D, ...] rows of attn_q/attn_k as stored in the GGUF.
    n_heads: query heads for attn_q, KV heads for attn_k.

  Returns:
    Array like `w` in the HF layout.

  Raises:
    ValueError: the row count is not a multiple of 2 * n_heads.
  """
  rows = w.shape[0]
  _check_heads(rows, n_heads)
  half = rows // n_heads // 2
  x = w.reshape(n_heads, half, 2, *w.shape[1:])  # [H, D/2, 2, ...]
  return np.ascontiguousarray(np.swapaxes(x, 1, 2).reshape(w.shape))


def _check_heads(rows: int, n_heads: int) -> None:
  if n_heads <= 0 or rows % (2 * n_heads):
    raise ValueError(
      f"cannot split {rows} rows into {n_heads} heads of an even head_dim"
    )


def hf_name(gguf_name: str) -> str:
  """Maps a llama GGUF tensor name to the transformers state-dict name.

  Raises:
    ValueError: a tensor this loader does not know (e.g. rope_freqs.weight,
      llama-3.1-style RoPE factors, which are not supported).
  """
  if gguf_name in _GLOBAL_NAMES:
    return _GLOBAL_NAMES[gguf_name]
  blk, layer, leaf = (gguf_name.split(".", 2) + ["", ""])[:3]
  if blk == "blk" and layer.isdigit() and leaf in _BLOCK_NAMES:
    return f"model.layers.{int(layer)}.{_BLOCK_NAMES[leaf]}"
  raise ValueError(f"unsupported GGUF tensor {gguf_name!r}")


def _expected_shape(name: str, config: dict[str, Any]) -> tuple[int, ...]:
  h, d = config["hidden_size"], config["head_dim"]
  n, k = config["num_attention_heads"], config["num_key_value_heads"]
  f, v = config["intermediate_size"], config["vocab_size"]
  leaf = name.split(".", 3)[-1] if name.startswith("model.layers.") else name
  shapes = {
    "model.embed_tokens.weight": (v, h),
    "lm_head.weight": (v, h),
    "model.norm.weight": (h,),
    "input_layernorm.weight": (h,),
    "post_attention_layernorm.weight": (h,),
    "self_attn.q_proj.weight": (n * d, h),
    "self_attn.k_proj.weight": (k * d, h),
    "self_attn.v_proj.weight": (k * d, h),
    "self_attn.o_proj.weight": (h, n * d),
    "self_attn.q_proj.bias": (n * d,),
    "self_attn.k_proj.bias": (k * d,),
    "self_attn.v_proj.bias": (k * d,),
    "mlp.gate_proj.weight": (f, h),
    "mlp.up_proj.weight": (f, h),
    "mlp.down_proj.weight": (h, f),
  }
  return shapes[leaf]


def dequantize(tensor: Any) -> Float[np.ndarray, "..."]:
  """One GGUF tensor -> a float32 array in NumPy (row-major) order.

  Args:
    tensor: a `gguf.ReaderTensor`.

  Returns:
    float32 array of shape reversed(tensor.shape), owning its memory.
  """
  shape = tuple(int(s) for s in reversed(tensor.shape.tolist()))
  kind = tensor.tensor_type
  if kind in _FLOAT_TYPES:
    arr = np.asarray(tensor.data).view(_FLOAT_TYPES[kind])
  else:
    arr = gguf.quants.dequantize(tensor.data, kind)
  return np.array(arr, dtype=np.float32).reshape(shape)


def iter_gguf_state_dict(
  reader: gguf.GGUFReader, config: dict[str, Any]
) -> Iterator[tuple[str, np.ndarray]]:
  """Yields (HF name, float32 array) one tensor at a time.

  Q and K rows are un-permuted (per head; K by the KV head count).

  Args:
    reader: an open reader (see `read_gguf`).
    config: the dict from `config_from_gguf`.

  Yields:
    ("model.layers.N.self_attn.q_proj.weight", [out, in] float32), ...

  Raises:
    ValueError: an unknown tensor or a shape that disagrees with `config`.
  """
  for t in reader.tensors:
    name = hf_name(t.name)
    arr = dequantize(t)
    want = _expected_shape(name, config)
    if arr.shape != want:
      raise ValueError(
        f"GGUF tensor {t.name!r} ({name}) has shape {arr.shape}, the config "
        f"implies {want}"
      )
    if ".q_proj." in name:
      arr = unpermute_qk(arr, config["num_attention_heads"])
    elif ".k_proj." in name:
      arr = unpermute_qk(arr, config["num_key_value_heads"])
    yield name, arr


def load_gguf(
  path: str | Path | gguf.GGUFReader,
) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
  """Reads a llama-architecture GGUF into (config dict, HF-named state dict).

  Args:
    path: the .gguf file, or a reader from `read_gguf` (opening one takes a
      few seconds for a 49k-token vocabulary, so callers may share it).

  Returns:
    (config, {name: float32 np.ndarray}); weights dequantised, Q/K rows in
    the HF rotate-half order; no "lm_head.weight" when embeddings are tied.

  Raises:
    FileNotFoundError: missing file.
    ValueError: corrupt/truncated file, unknown architecture or tensor.
  """
  reader = path if isinstance(path, gguf.GGUFReader) else read_gguf(path)
  meta = gguf_metadata(reader, skip_large_arrays=True)
  tensors = {t.name: t for t in reader.tensors}
  arch = meta.get("general.architecture")
  if f"{arch}.vocab_size" not in meta and "token_embd.weight" in tensors:
    # The token list was skipped above; the embedding has one row per token.
    meta[f"{arch}.vocab_size"] = int(tensors["token_embd.weight"].shape[-1])
  config = config_from_gguf(meta, set(tensors))
  state = dict(iter_gguf_state_dict(reader, config))
  missing = _missing(config, state)
  if missing:
    raise ValueError(f"tensors missing from the GGUF: {missing[:5]}")
  return config, state


def _missing(config: dict[str, Any], state: dict[str, np.ndarray]) -> list[str]:
  want = ["model.embed_tokens.weight", "model.norm.weight"]
  if not config["tie_word_embeddings"]:
    want.append("lm_head.weight")
  for i in range(config["num_hidden_layers"]):
    want += [
      f"model.layers.{i}.{leaf}"
      for leaf in _BLOCK_NAMES.values()
      if not leaf.endswith(".bias")
    ]
  return [w for w in want if w not in state]
