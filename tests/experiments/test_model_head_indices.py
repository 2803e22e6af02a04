"""Model slices and the real-head Vertical-Slash index sets (CPU).

A tiny random llama stands in for SmolLM2: its slice must round-trip
(weights, config, compact token ids), and the indices that
`model_head_indices` records must equal `vertical_slash_indices` computed
from q/k of a plain `models.llama.forward` run of the ORIGINAL (unsliced,
full-vocabulary) weights on the original token ids.
"""

import dataclasses
import importlib.util
import types
from pathlib import Path

import jax.numpy as jnp
import numpy as np
import pytest

from experiments import model_head_indices as mhi
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
  return {n: mhi.encode_float(a, "bf16" if a.ndim > 1 else "f32")
          for n, a in state.items()}


@pytest.fixture(scope="module")
def slice_path(tiny, tmp_path_factory):
  config, state, ids = tiny
  s = export.build_slice(config, _encode(state), ids, KEEP,
                         {"token_source": "random ids", "source_model": "t"})
  return mhi.save_slice(tmp_path_factory.mktemp("slice") / "s.npz", s)


def test_slice_round_trip(tiny, slice_path):
  config, state, ids = tiny
  back = mhi.load_slice(slice_path)
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
  got = mhi.encode_float(x).decode()
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


@pytest.fixture(scope="module")
def run(slice_path):
  s = mhi.load_slice(slice_path)
  return mhi.model_head_indices(
      s, T, n_vertical=NV, n_slash=NS, last_q=LAST_Q, backend="xla",
      dtype=jnp.float32, keep_qk=True, log=None)


def test_indices_match_plain_forward(tiny, run):
  config, state, ids = tiny
  res, recorder = run
  # The reference: the unsliced weights (first KEEP layers, full vocab) and
  # the original ids through models.llama.forward, same attention.
  ref_config = dataclasses.replace(config, num_layers=KEEP)
  ref_state = {n: a for n, a in state.items() if f"layers.{KEEP}." not in n}
  params = params_from_state_dict(ref_config, ref_state, jnp.float32)
  rec = _Record(make_attention(
      mhi.vs_pattern_config(KEEP, config.num_heads, NV, NS, LAST_Q), "xla"))
  forward(params, jnp.asarray(ids[None, :T]), config=ref_config,
          attention=rec)
  assert res.vertical.shape[:2] == (KEEP, config.num_heads)
  assert res.meta["seq_len"] == T and res.meta["num_layers"] == KEEP
  for layer in range(KEEP):
    q, k = rec.qk[layer]
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
  res, _ = run
  path = res.save(tmp_path / "idx.npz")
  n, b = 7, 2
  ind = mhi.load_model_head_indices(path, n, batch=b, expect_seq_len=T)
  assert ind.vertical.shape == (b, n, NV) and ind.slash.shape == (b, n, NS)
  assert ind.vertical.dtype == jnp.int32
  picks = mhi.select_heads(KEEP, config.num_heads, config.num_kv_heads, n)
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
    mhi.load_model_head_indices(path, n, expect_seq_len=T * 2)


def test_select_heads_smollm2_geometry():
  picks = mhi.select_heads(15, 9, 3, 32)
  assert len(set(picks)) == 32 and all(layer >= 1 for layer, _ in picks)
  assert picks[:2] == [(1, 0), (2, 0)] and picks[14] == (1, 3)


def test_main_writes_results(slice_path, tmp_path, capsys):
  mhi.main(["--slice", str(slice_path), "--seq-len", "128", "256",
            "--backend", "xla", "--dtype", "float32", "--n-vertical", "40",
            "--n-slash", "60", "--out", str(tmp_path)])
  for t in (128, 256):
    res = mhi.HeadIndices.load(tmp_path / f"model_head_indices_T{t}.npz")
    assert res.seq_len == t and res.vertical.shape == (KEEP, 4, 40)
    assert (tmp_path / f"model_head_indices_T{t}_summary.json").is_file()
  assert '"seq_len": 256' in capsys.readouterr().out


def test_bs_model_layout_matches_plain_forward(tiny, slice_path):
  """The Block-Sparse index sets `bs_model_indices` keeps are the builder's
  estimate on the q/k of a plain forward, for the heads `select_heads`
  picks, in that order."""
  from experiments import bs_model_indices as bsi
  from minference_jax.index import block_sparse_indices

  config, state, ids = tiny
  n_bench, top_k = 7, 3
  layout = bsi.model_bs_layout(
      mhi.load_slice(slice_path), T, n_bench, top_k=top_k, n_vertical=NV,
      n_slash=NS, last_q=LAST_Q, backend="xla", dtype=jnp.float32)
  ref_config = dataclasses.replace(config, num_layers=KEEP)
  ref_state = {n: a for n, a in state.items() if f"layers.{KEEP}." not in n}
  rec = _Record(make_attention(
      mhi.vs_pattern_config(KEEP, config.num_heads, NV, NS, LAST_Q), "xla"))
  forward(params_from_state_dict(ref_config, ref_state, jnp.float32),
          jnp.asarray(ids[None, :T]), config=ref_config, attention=rec)
  picks = mhi.select_heads(KEEP, config.num_heads, config.num_kv_heads,
                           n_bench)
  assert layout.block_index.shape == (1, n_bench, T // 64, top_k)
  for h, (layer, head) in enumerate(picks):
    want = block_sparse_indices(*rec.qk[layer], top_k, 64)
    np.testing.assert_array_equal(np.asarray(layout.block_count[0, h]),
                                  np.asarray(want.block_count[0, head]))
    np.testing.assert_array_equal(np.asarray(layout.block_index[0, h]),
                                  np.asarray(want.block_index[0, head]))
  # Different picked heads select different blocks (not one head copied).
  idx = np.asarray(layout.block_index[0])
  assert (idx[0] != idx[1]).any() and (idx[0] != idx[2]).any()


def test_bs_layout_stats_by_hand():
  from experiments import bs_model_indices as bsi
  from pallas_kernels.layouts import BlockSparseLayout

  # T = 256 (4 blocks), KB = 3; rows: [0], [0, 1], [0, 2], [1, 2, 3].
  index = np.array([[0, 0, 0], [0, 1, 1], [0, 2, 2], [1, 2, 3]])
  layout = BlockSparseLayout(jnp.asarray([[[1, 2, 2, 3]]], jnp.int32),
                             jnp.asarray(index[None, None], jnp.int32), 64)
  stats = bsi.layout_stats(layout, 256)
  assert stats["density"] == round(8 * 64 * 64 / (256 * 257 / 2), 5)
  assert stats["near_share"] == 1.0
  assert stats["sink_share"] == 5 / 8  # blocks 0 and 1 (tokens < 128)
  assert stats["run_mean"] == 8 / 5  # runs [0] [0,1] [0] [2] [1,2,3]
  assert stats["pair_union"] is None  # one head: no pairs


def test_head_pair_union_against_sets():
  """`head_pair_union` equals |A u B| / (|A| + |B|) computed with Python
  sets, on random lists with padding entries that repeat kept ids."""
  from experiments import bs_model_indices as bsi

  rng = np.random.default_rng()
  n, tb, kb = 6, 9, 5
  count = np.zeros((n, tb), np.int64)
  index = np.zeros((n, tb, kb), np.int64)
  for h in range(n):
    for m in range(tb):
      c = int(rng.integers(0, min(m + 1, kb) + 1))
      count[h, m] = c
      index[h, m, :c] = np.sort(rng.choice(m + 1, c, replace=False))
      index[h, m, c:] = rng.integers(0, m + 1, kb - c)  # padding
  kept = lambda h, m: set(index[h, m, :count[h, m]].tolist())
  union = sum(len(kept(h, m) | kept(h + 1, m))
              for h in range(0, n, 2) for m in range(tb))
  assert bsi.head_pair_union(count, index) == round(union / count.sum(), 4)
  assert bsi.head_pair_union(count[:5], index[:5]) is None  # odd N
