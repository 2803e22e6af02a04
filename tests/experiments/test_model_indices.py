"""Model slices and the real-head index sets of `model-indices` (CPU).

A tiny random llama stands in for SmolLM2: its slice must round-trip
(weights, config, compact token ids), and the Vertical-Slash and
Block-Sparse sets that `model_head_indices` records must equal the
builders' estimates computed from q/k of a plain `models.llama.forward` run
of the ORIGINAL (unsliced, full-vocabulary) weights on the original token
ids.
"""

import dataclasses
import importlib.util
import types

import jax.numpy as jnp
import numpy as np
import pytest

from experiments import index_sets
from experiments import model_indices as mi
from experiments import model_slice as ms
from minference_jax.attention import make_attention
from minference_jax.index import vertical_slash_indices
from models import gguf_io
from models.config import ModelConfig
from models.llama import forward
from models.weights import (
    params_from_state_dict,
    params_to_state_dict,
    random_params,
)
from paths import REPO_DIR

_SCRIPT = (REPO_DIR / "scripts"
           / "export_model_slice.py")
_spec = importlib.util.spec_from_file_location("export_model_slice", _SCRIPT)
export = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(export)

FULL_LAYERS, KEEP = 4, 3
T = 384
NV, NS, LAST_Q = 48, 160, 64  # 18 data-driven verticals, 60 slashes


@pytest.fixture(scope="module")
def tiny():
  """(full config, float32 state dict, original token ids [600])."""
  config = ModelConfig.tiny("llama", num_layers=FULL_LAYERS)
  # std 0.3 gives peaked attention, so the indices depend on q/k; bf16
  # params make every weight exactly representable in the "bf16" encoding.
  params = random_params(config, 7, dtype=jnp.bfloat16, std=0.3)
  state = {k: np.asarray(v, np.float32)
           for k, v in params_to_state_dict(config, params).items()}
  rng = np.random.default_rng(0)
  used = rng.choice(config.vocab_size, size=40, replace=False)
  ids = rng.choice(used, size=600).astype(np.int32)
  return config, state, ids


def _encode(state):
  return {n: ms.encode_float(a, "bf16" if a.ndim > 1 else "f32")
          for n, a in state.items()}


@pytest.fixture(scope="module")
def slice_path(tiny, tmp_path_factory):
  config, state, ids = tiny
  s = export.build_slice(config, _encode(state), ids, KEEP,
                         {"token_source": "random ids", "source_model": "t"})
  return ms.save_slice(tmp_path_factory.mktemp("slice") / "s.npz", s)


def test_slice_round_trip(tiny, slice_path):
  config, state, ids = tiny
  back = ms.load_slice(slice_path)
  c = back.config
  assert (c.num_layers, c.vocab_size) == (KEEP, len(np.unique(ids)))
  assert dataclasses.replace(
      c, num_layers=config.num_layers, vocab_size=config.vocab_size,
      bos_token_id=config.bos_token_id,
      eos_token_ids=config.eos_token_ids) == config
  assert back.tokens.dtype == np.uint16
  np.testing.assert_array_equal(back.vocab_ids, np.unique(ids))
  np.testing.assert_array_equal(back.original_tokens(), ids)
  assert back.meta["token_source"] == "random ids"
  assert back.meta["full_num_layers"] == FULL_LAYERS
  decoded = back.state_dict()
  want = {n for n in state if f"layers.{KEEP}." not in n}
  assert set(decoded) == want
  for name, value in decoded.items():
    ref = state[name]
    if name in ("model.embed_tokens.weight", "lm_head.weight"):
      ref = ref[back.vocab_ids]
    np.testing.assert_array_equal(value, ref, err_msg=name)
  with pytest.raises(ValueError, match="num_layers"):
    export.build_slice(config, _encode(state), ids, FULL_LAYERS + 1, {})


def test_bf16_encoding_rounds_to_nearest_even():
  x = np.asarray([1.0, 1.00390625, 1.01171875, -3.14159, 1e-40, np.inf],
                 np.float32)
  got = ms.encode_float(x).decode()
  want = np.asarray(jnp.asarray(x).astype(jnp.bfloat16).astype(jnp.float32))
  np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("kind", ["Q4_1", "Q8_0"])
def test_gguf_blocks_decode_bit_exact(kind):
  import gguf

  qtype = getattr(gguf.GGMLQuantizationType, kind)
  rows, cols = 12, 96
  nb = cols // 32
  rng = np.random.default_rng(1)
  scales = rng.normal(0, 0.05, (rows, nb, 2 if kind == "Q4_1" else 1))
  head = scales.astype(np.float16).view(np.uint8)  # [rows, nb, 2 or 4]
  body = rng.integers(0, 256, (rows, nb, 16 if kind == "Q4_1" else 32),
                      dtype=np.uint8)
  raw = np.concatenate([head, body], -1).reshape(rows, -1)
  tensor = types.SimpleNamespace(shape=np.asarray([cols, rows]),
                                 tensor_type=qtype, data=raw)
  enc = export.encode_gguf_tensor(tensor)
  want = gguf_io.dequantize(tensor)
  np.testing.assert_array_equal(enc.decode(), want)
  perm = enc.permute_rows(lambda a: gguf_io.unpermute_qk(a, 2)).decode()
  np.testing.assert_array_equal(perm, gguf_io.unpermute_qk(want, 2))
  np.testing.assert_array_equal(enc.take_rows(np.asarray([5, 0])).decode(),
                                want[[5, 0]])


def test_real_gguf_first_layer_exact():
  """Our stored blocks of the bundled SmolLM2 equal the loader's arrays."""
  from models import assets

  try:
    path = assets.smollm2_gguf_path()
  except FileNotFoundError as err:
    pytest.skip(f"SmolLM2 GGUF not installed: {err}")
  reader = gguf_io.read_gguf(path)
  config = {"num_attention_heads": 9, "num_key_value_heads": 3}
  for t in reader.tensors:
    if not t.name.startswith("blk.0."):
      continue
    name = gguf_io.hf_name(t.name)
    enc = export.gguf_tensors(types.SimpleNamespace(tensors=[t]), config)
    want = gguf_io.dequantize(t)
    if ".q_proj." in name:
      want = gguf_io.unpermute_qk(want, 9)
    elif ".k_proj." in name:
      want = gguf_io.unpermute_qk(want, 3)
    np.testing.assert_array_equal(enc[name].decode(), want, err_msg=name)


@dataclasses.dataclass(eq=False)
class _Record:
  inner: object
  qk: dict = dataclasses.field(default_factory=dict)

  def __call__(self, q, k, v, *, layer_idx, q_offset=0):
    self.qk[layer_idx] = (q, k)
    return self.inner(q, k, v, layer_idx=layer_idx, q_offset=q_offset)


N_BS, BS_TOP_K = 7, 3  # Block-Sparse sets of 7 benchmark heads, top 3


@pytest.fixture(scope="module")
def run(slice_path):
  s = ms.load_slice(slice_path)
  return mi.model_head_indices(
      s, T, n_vertical=NV, n_slash=NS, last_q=LAST_Q, backend="xla",
      dtype=jnp.float32, keep_qk=True, bs_heads=N_BS, bs_top_k=BS_TOP_K,
      log=None)


@pytest.fixture(scope="module")
def plain_qk(tiny):
  """{layer: (q, k)} of a plain forward of the unsliced weights."""
  config, state, ids = tiny
  ref_config = dataclasses.replace(config, num_layers=KEEP)
  ref_state = {n: a for n, a in state.items() if f"layers.{KEEP}." not in n}
  params = params_from_state_dict(ref_config, ref_state, jnp.float32)
  rec = _Record(make_attention(
      mi.vs_pattern_config(KEEP, config.num_heads, NV, NS, LAST_Q), "xla"))
  forward(params, jnp.asarray(ids[None, :T]), config=ref_config,
          attention=rec)
  return rec.qk


def test_indices_match_plain_forward(tiny, run, plain_qk):
  config, _, _ = tiny
  res, _, recorder = run
  assert res.vertical.shape[:2] == (KEEP, config.num_heads)
  assert res.meta["seq_len"] == T and res.meta["num_layers"] == KEEP
  for layer in range(KEEP):
    q, k = plain_qk[layer]
    q_last, k_rec = recorder.qk[layer]
    np.testing.assert_array_equal(q_last, np.asarray(q[:, -LAST_Q:]))
    np.testing.assert_array_equal(k_rec, np.asarray(k))
    want = vertical_slash_indices(q, k, NV, NS, LAST_Q)
    for f in ("vertical", "vertical_count", "slash", "slash_count"):
      np.testing.assert_array_equal(getattr(res, f)[layer],
                                    np.asarray(getattr(want, f))[0],
                                    err_msg=f"layer {layer} {f}")
  # The estimate depends on the layer's q/k (not only on the forced lines).
  assert (res.vertical[1] != res.vertical[2]).any()
  assert (res.slash[1] != res.slash[2]).any()


def test_load_model_head_indices(tiny, run, tmp_path):
  config, _, _ = tiny
  res, _, _ = run
  path = res.save(tmp_path / "idx.npz")
  n, b = 7, 2
  ind = index_sets.load_model_head_indices(path, n, batch=b,
                                           expect_seq_len=T)
  assert ind.vertical.shape == (b, n, NV) and ind.slash.shape == (b, n, NS)
  assert ind.vertical.dtype == jnp.int32
  picks = index_sets.select_heads(KEEP, config.num_heads,
                                  config.num_kv_heads, n)
  # Layers >= 1 round-robin; heads 0, G, 1, G + 1 (G = 2) per layer.
  assert picks == [(1, 0), (2, 0), (1, 2), (2, 2), (1, 1), (2, 1), (1, 3)]
  vertical, slash = np.asarray(ind.vertical), np.asarray(ind.slash)
  vc, sc = np.asarray(ind.vertical_count), np.asarray(ind.slash_count)
  for bi in range(b):
    for h, (layer, head) in enumerate(picks):
      assert vc[bi, h] == NV and sc[bi, h] == NS
      v, s = vertical[bi, h, :NV], slash[bi, h, :NS]
      np.testing.assert_array_equal(v, res.vertical[layer, head, :NV])
      np.testing.assert_array_equal(s, res.slash[layer, head, :NS])
      assert (np.diff(v) > 0).all() and 0 <= v[0] and v[-1] < T
      assert (np.diff(s) < 0).all() and s[-1] == 0 and s[0] < T
      np.testing.assert_array_equal(v[:30], np.arange(30))  # forced sinks
      assert (s >= 100).sum() == NS - 100  # forced offsets 0..99 kept
  with pytest.raises(ValueError, match="T=384"):
    index_sets.load_model_head_indices(path, n, expect_seq_len=T * 2)


def test_select_heads_smollm2_geometry():
  picks = index_sets.select_heads(15, 9, 3, 32)
  assert len(set(picks)) == 32 and all(layer >= 1 for layer, _ in picks)
  assert picks[:2] == [(1, 0), (2, 0)] and picks[14] == (1, 3)


def test_block_sparse_sets_match_plain_forward(tiny, run, plain_qk,
                                               tmp_path):
  """The Block-Sparse sets recorded in the same run are the builder's
  estimate on the q/k of a plain forward, for the heads `select_heads`
  picks, in that order; they round-trip through their file and become a
  [B, N', Tb, KB] benchmark layout."""
  from minference_jax.index import block_sparse_indices

  config, _, _ = tiny
  _, bs, _ = run
  picks = index_sets.select_heads(KEEP, config.num_heads,
                                  config.num_kv_heads, N_BS)
  assert bs.meta["heads"] == [list(p) for p in picks]
  assert bs.block_index.shape == (N_BS, T // 64, BS_TOP_K)
  for h, (layer, head) in enumerate(picks):
    want = block_sparse_indices(*plain_qk[layer], BS_TOP_K, 64)
    np.testing.assert_array_equal(bs.block_count[h],
                                  np.asarray(want.block_count[0, head]))
    np.testing.assert_array_equal(bs.block_index[h],
                                  np.asarray(want.block_index[0, head]))
  # Different picked heads select different blocks (not one head copied).
  assert (bs.block_index[0] != bs.block_index[1]).any()
  back = index_sets.BlockSparseHeads.load(bs.save(tmp_path / "bs.npz"))
  np.testing.assert_array_equal(back.block_index, bs.block_index)
  layout = back.layout(N_BS, batch=2)
  assert layout.block_index.shape == (2, N_BS, T // 64, BS_TOP_K)
  assert layout.block_size == 64
  np.testing.assert_array_equal(np.asarray(layout.block_count[1]),
                                bs.block_count)
  with pytest.raises(ValueError, match="holds 7 heads, not 8"):
    back.layout(8)
  vs_file = run[0].save(tmp_path / "vs.npz")
  with pytest.raises(ValueError, match="not a minference-jax/model-bs"):
    index_sets.BlockSparseHeads.load(vs_file)


def test_main_writes_results_and_skips_done_lengths(slice_path, tmp_path,
                                                    capsys):
  from experiments.config import load_config

  argv = [f"slice={slice_path}", "seq_lens=[128]", "backend=xla",
          "dtype=float32", "n_vertical=40", "n_slash=60", "bs_heads=3",
          "bs_top_k=2", f"out_dir={tmp_path}"]
  mi.main(argv)
  for t in (128,):
    res = index_sets.HeadIndices.load(index_sets.vs_indices_path(tmp_path,
                                                                 t))
    assert res.seq_len == t and res.vertical.shape == (KEEP, 4, 40)
    bs = index_sets.BlockSparseHeads.load(index_sets.bs_indices_path(
        tmp_path, t))
    assert bs.seq_len == t and bs.block_index.shape == (3, t // 64, 2)
    assert (tmp_path / f"model_head_indices_T{t}_summary.json").is_file()
  assert '"seq_len": 128' in capsys.readouterr().out
  saved = load_config(mi.ModelIndicesConfig,
                      tmp_path / "model_indices.config.yaml")
  assert saved.seq_lens == (128,) and saved.bs_heads == 3
  assert saved.slice == str(slice_path)
  mi.main(argv)  # a rerun skips the lengths whose files exist
  assert capsys.readouterr().err.count("exists, skipped") == 1


def test_bench_kernels_reads_the_recorded_sets(run, tmp_path):
  """bench-kernels' `:model` patterns time the kernels on exactly the sets
  `model-indices` wrote (and time the builder's estimate as index time)."""
  from experiments import bench_kernels
  from minference_jax.index import vertical_slash_layout

  res, bs, _ = run
  res.save(index_sets.vs_indices_path(tmp_path, T))
  bs.save(index_sets.bs_indices_path(tmp_path, T))
  cfg = bench_kernels.BenchConfig(
      seq_lens=(T,), kv_heads=(1,), num_heads=N_BS, head_dim=16,
      dtype="float32", vs_budget=(NV, NS), bs_top_k=BS_TOP_K,
      patterns=("vertical_slash:model", "block_sparse:model"),
      model_indices_dir=str(tmp_path), min_repeats=1, max_repeats=1,
      budget_s=0.01, interpret=True, inputs="gaussian")
  bench_kernels.check_model_files(cfg)
  (q, k, _), _ = bench_kernels.make_inputs(cfg, T, 1, 0)
  layout, timing, source = bench_kernels.build_layout(
      cfg, "block_sparse:model", q, k, T)
  assert source.startswith("model heads") and timing["median_ms"] > 0
  np.testing.assert_array_equal(np.asarray(layout.block_index[0]),
                                bs.block_index)
  layout, timing, _ = bench_kernels.build_layout(
      cfg, "vertical_slash:model", q, k, T)
  want = vertical_slash_layout(index_sets.load_model_head_indices(
      index_sets.vs_indices_path(tmp_path, T), N_BS), T)
  np.testing.assert_array_equal(np.asarray(layout.block_offset),
                                np.asarray(want.block_offset))
  np.testing.assert_array_equal(np.asarray(layout.column_index),
                                np.asarray(want.column_index))
  assert timing["median_ms"] > 0
