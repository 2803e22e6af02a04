"""Vertical-Slash index sets of a real model's heads at long context.

A *model slice* (written by `scripts/export_model_slice.py`) holds the first
L decoder layers of a checkpoint (SmolLM2-135M-Instruct by default), the
embedding rows of the tokens that occur in a stream of real text, and that
stream (>= 1,048,576 tokens). It is small enough to carry to the GPU machine,
which has no `gguf` package.

`model_head_indices` runs the slice's L layers on the first T tokens of the
stream with `models.llama.forward` (eager, so a Python wrapper around the
attention callable sees concrete arrays). Attention is MInference's
deployment setting: `make_attention(PatternConfig of VerticalSlash(1000,
6096) on every head, backend="auto")` (dense below the 128K threshold, the
Pallas kernels on GPU above it). The wrapper computes, per layer, the online
estimate `minference_jax.index.vertical_slash_indices(q, k, 1000, 6096)` from
the q/k that enter attention (after RoPE) and keeps only the resulting index
sets, so no [T, T] array and no full q is ever kept.

`load_model_head_indices(path, num_heads)` turns a result file into a
`VerticalSlashIndices` [batch, num_heads, ...] of real heads for kernel
benchmarks (synthetic q/k/v, real index sets).

Usage (GPU; the slice carried under .device_cache/):
  PYTHONPATH=. python3 -m experiments.model_head_indices \
      --seq-len 32768 131072 524288 1048576 --out outputs/head_indices

Slice file format (npz, `SLICE_FORMAT`):
  meta:       0-d str, JSON: format, config (ModelConfig.to_dict() of the
              slice: num_layers = L, vocab_size = V' compact ids), tensors
              ({HF name: {"encoding", "shape"}}), source_model,
              full_num_layers, full_vocab_size, token_source, text_sha256.
  tokens:     uint16 [T_total] compact token ids (the text stream).
  vocab_ids:  int32 [V'] original token id of each compact id (ascending).
  t/<HF name>/<part>: the tensors, stored as `encoding` says:
    "f32":  data float32.
    "bf16": data uint16 (bfloat16 bit patterns).
    "q4_1": GGUF Q4_1 blocks of 32 along the last axis, exact: scale and
            min float16 [R, nb], codes uint8 [R, nb, 16] (low nibble =
            element i, high nibble = element i + 16); w = scale * q + min.
    "q8_0": GGUF Q8_0 blocks of 32, exact: scale float16 [R, nb], codes
            int8 [R, nb, 32]; w = scale * q.
  All decode (numpy only) to float32 [R, C] in HF layout ([out, in]).

Result file format (npz, `INDICES_FORMAT`), for one T:
  meta:           0-d str, JSON: format, seq_len, num_layers, num_heads,
                  num_kv_heads, n_vertical, n_slash, last_q, backend, dtype,
                  token_source, source_model, layer_seconds.
  vertical:       int32 [L, N, NV], ascending (entries past the count pad).
  vertical_count: int32 [L, N].
  slash:          int32 [L, N, NS], descending (entries past the count pad).
  slash_count:    int32 [L, N].
"""

import argparse
import dataclasses
import json
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from minference_jax.attention import make_attention
from minference_jax.index import VerticalSlashIndices, vertical_slash_indices
from minference_jax.pattern_config import PatternConfig
from minference_jax.patterns import VS_LAST_Q, VerticalSlash
from models.config import ModelConfig
from models.llama import forward
from models.weights import Params, params_from_state_dict

SLICE_FORMAT = "minference-jax/model-slice/v1"
INDICES_FORMAT = "minference-jax/model-head-indices/v1"
DEFAULT_SLICE = Path(".device_cache") / "smollm2_slice.npz"
ENCODINGS = ("f32", "bf16", "q4_1", "q8_0")
QUANT_BLOCK = 32  # GGUF Q4_1 / Q8_0 block length


# ---------------------------------------------------------- tensor format
@dataclasses.dataclass(frozen=True, eq=False)
class EncodedTensor:
  """One stored tensor: an encoding, its decoded shape and its parts.

  Attributes:
    encoding: one of ENCODINGS (see the module docstring).
    shape: the decoded float32 shape, HF layout ([out, in] for matrices).
    parts: {part name: numpy array}; every part has the rows (axis 0).
  """

  encoding: str
  shape: tuple[int, ...]
  parts: Mapping[str, np.ndarray]

  def __post_init__(self):
    if self.encoding not in ENCODINGS:
      raise ValueError(
          f"unknown encoding {self.encoding!r}; known: {ENCODINGS}"
      )
    want = {"f32": {"data"}, "bf16": {"data"}, "q4_1": {"scale", "min",
            "codes"}, "q8_0": {"scale", "codes"}}[self.encoding]
    if set(self.parts) != want:
      raise ValueError(
          f"{self.encoding} needs parts {sorted(want)}, got"
          f" {sorted(self.parts)}"
      )
    object.__setattr__(self, "shape", tuple(int(s) for s in self.shape))

  @property
  def nbytes(self) -> int:
    return sum(int(p.nbytes) for p in self.parts.values())

  def take_rows(self, rows: np.ndarray) -> "EncodedTensor":
    """The tensor restricted to `rows` (axis 0), e.g. embedding rows."""
    rows = np.asarray(rows)
    parts = {k: np.ascontiguousarray(v[rows]) for k, v in self.parts.items()}
    return EncodedTensor(self.encoding, (len(rows), *self.shape[1:]), parts)

  def permute_rows(self, fn: Callable[[np.ndarray], np.ndarray]):
    """Applies a row permutation `fn` (e.g. gguf_io.unpermute_qk) to parts."""
    parts = {k: fn(v) for k, v in self.parts.items()}
    return EncodedTensor(self.encoding, self.shape, parts)

  def decode(self) -> np.ndarray:
    """float32 array of `shape` (bit-exact GGUF dequantisation)."""
    p = self.parts
    if self.encoding == "f32":
      out = np.asarray(p["data"], np.float32)
    elif self.encoding == "bf16":
      bits = np.asarray(p["data"], np.uint16).astype(np.uint32) << 16
      out = bits.view(np.float32)
    elif self.encoding == "q4_1":
      codes = np.asarray(p["codes"], np.uint8)  # [R, nb, 16]
      q = np.concatenate([codes & 0x0F, codes >> 4], axis=-1)  # [R, nb, 32]
      d = p["scale"].astype(np.float32)[..., None]  # [R, nb, 1]
      m = p["min"].astype(np.float32)[..., None]
      out = (d * q) + m  # the order of gguf.quants (bit-exact)
    else:  # q8_0
      d = p["scale"].astype(np.float32)[..., None]  # [R, nb, 1]
      out = d * np.asarray(p["codes"], np.int8)  # [R, nb, 32]
    return np.ascontiguousarray(out, np.float32).reshape(self.shape)


def encode_float(x: np.ndarray, encoding: str = "bf16") -> EncodedTensor:
  """Stores a float array as "bf16" (round to nearest even) or "f32".

  Raises:
    ValueError: for another encoding.
  """
  x = np.asarray(x, np.float32)
  if encoding == "f32":
    return EncodedTensor("f32", x.shape, {"data": np.ascontiguousarray(x)})
  if encoding != "bf16":
    raise ValueError(f"encode_float stores 'bf16' or 'f32', not {encoding!r}")
  bits = np.ascontiguousarray(x).view(np.uint32).astype(np.uint64)
  rounded = (bits + 0x7FFF + ((bits >> 16) & 1)) >> 16  # nearest even
  nan = np.isnan(x)
  data = np.where(nan, 0x7FC0, rounded).astype(np.uint16)
  return EncodedTensor("bf16", x.shape, {"data": data})


# ------------------------------------------------------------- the slice
@dataclasses.dataclass(frozen=True, eq=False)
class ModelSlice:
  """The first layers of a model plus a real-text token stream.

  Attributes:
    config: the slice's geometry: num_layers = L kept layers, vocab_size =
      V' compact ids (ids of the stream remapped to 0..V'-1).
    tensors: {HF name: EncodedTensor} for exactly those layers, the
      compact embedding rows (and lm_head rows when untied), the final norm.
    tokens: uint16 [T_total] compact ids.
    vocab_ids: int32 [V'] original id of each compact id, ascending.
    meta: the rest of the file's metadata (source_model, full_num_layers,
      full_vocab_size, token_source, text_sha256, ...).
  """

  config: ModelConfig
  tensors: Mapping[str, EncodedTensor]
  tokens: np.ndarray
  vocab_ids: np.ndarray
  meta: Mapping[str, Any]

  @property
  def token_source(self) -> str:
    return str(self.meta.get("token_source", ""))

  def original_tokens(self, length: int | None = None) -> np.ndarray:
    """The stream in the original vocabulary (int32), first `length`."""
    return self.vocab_ids[self.tokens[:length].astype(np.int64)]

  def state_dict(self) -> dict[str, np.ndarray]:
    """{HF name: float32 array} (decoded)."""
    return {name: t.decode() for name, t in self.tensors.items()}

  def params(self, dtype: Any = jnp.bfloat16) -> Params:
    """The params pytree of the slice (models/weights.py layout)."""
    return params_from_state_dict(self.config, self.state_dict(), dtype)

  @property
  def nbytes(self) -> int:
    return (sum(t.nbytes for t in self.tensors.values())
            + self.tokens.nbytes + self.vocab_ids.nbytes)


def save_slice(path: str | Path, model_slice: ModelSlice,
               compress: bool = True) -> Path:
  """Writes a ModelSlice npz (format: module docstring).

  Returns:
    The path written.

  Raises:
    ValueError: a token id outside the compact vocabulary or > uint16.
  """
  s = model_slice
  tokens = np.asarray(s.tokens)
  if s.config.vocab_size > 65536 or len(s.vocab_ids) != s.config.vocab_size:
    raise ValueError(
        f"compact vocabulary of {len(s.vocab_ids)} ids (config says"
        f" {s.config.vocab_size}) does not fit uint16 ids"
    )
  if tokens.size and int(tokens.max()) >= s.config.vocab_size:
    raise ValueError("tokens hold ids outside the compact vocabulary")
  meta = {
      **s.meta,
      "format": SLICE_FORMAT,
      "config": s.config.to_dict(),
      "tensors": {n: {"encoding": t.encoding, "shape": list(t.shape)}
                  for n, t in s.tensors.items()},
  }
  arrays = {
      "meta": np.asarray(json.dumps(meta, sort_keys=True)),
      "tokens": tokens.astype(np.uint16),
      "vocab_ids": np.asarray(s.vocab_ids, np.int32),
  }
  for name, t in s.tensors.items():
    for part, value in t.parts.items():
      arrays[f"t/{name}/{part}"] = value
  path = Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  with open(path, "wb") as f:  # a file object: no ".npz" suffix is added
    (np.savez_compressed if compress else np.savez)(f, **arrays)
  return path


def load_slice(path: str | Path) -> ModelSlice:
  """Reads a ModelSlice npz (numpy only; no gguf needed).

  Raises:
    FileNotFoundError: no such file (the message says how to make one).
    ValueError: not a model slice of this format version.
  """
  path = Path(path)
  if not path.is_file():
    raise FileNotFoundError(
        f"model slice {path} not found; make it with `python"
        " scripts/export_model_slice.py` (needs the SmolLM2 GGUF)"
    )
  with np.load(path, allow_pickle=False) as z:
    meta = json.loads(str(z["meta"]))
    if meta.get("format") != SLICE_FORMAT:
      raise ValueError(
          f"{path} is not a {SLICE_FORMAT} file (format"
          f" {meta.get('format')!r})"
      )
    tensors = {}
    for name, info in meta.pop("tensors").items():
      prefix = f"t/{name}/"
      parts = {k[len(prefix):]: z[k] for k in z.files if k.startswith(prefix)}
      tensors[name] = EncodedTensor(info["encoding"], tuple(info["shape"]),
                                    parts)
    tokens = z["tokens"]
    vocab_ids = z["vocab_ids"]
  config = ModelConfig.from_dict(meta.pop("config"))
  meta.pop("format")
  return ModelSlice(config, tensors, tokens, vocab_ids, meta)


# ------------------------------------------------------- index recording
@dataclasses.dataclass(eq=False)
class IndexRecorder:
  """An attention wrapper that records each layer's Vertical-Slash estimate.

  Eager only (the forward must run with concrete arrays). On each call it
  computes `vertical_slash_indices(q, k, n_vertical, n_slash, last_q)` from
  the q/k going into attention (RoPE applied), keeps the indices as numpy
  (and, with keep_qk, q[:, -last_q:] and k), then runs `inner`.

  Attributes:
    inner: the attention callable that computes the layer's output.
    n_vertical, n_slash, last_q: the estimate's budgets.
    keep_qk: also keep q[:, -last_q:] [B, L, N, D] and k [B, T, K, D].
    log: progress sink (one line per layer), or None.
    indices: {layer: VerticalSlashIndices of numpy arrays}.
    qk: {layer: (q_last, k)} when keep_qk.
    seconds: {layer: wall seconds of the layer (projections of this layer,
      MLP of the previous one, estimate and attention)}.
  """

  inner: Callable[..., jax.Array]
  n_vertical: int
  n_slash: int
  last_q: int = VS_LAST_Q
  keep_qk: bool = False
  log: Callable[[str], None] | None = None
  indices: dict = dataclasses.field(default_factory=dict)
  qk: dict = dataclasses.field(default_factory=dict)
  seconds: dict = dataclasses.field(default_factory=dict)
  _clock: float = dataclasses.field(default_factory=time.perf_counter)

  def start_clock(self) -> None:
    """Starts timing layer 0 (call right before the forward)."""
    self._clock = time.perf_counter()

  def __call__(self, q, k, v, *, layer_idx, q_offset=0):
    jax.block_until_ready((q, k, v))
    begin = time.perf_counter()
    ind = vertical_slash_indices(q, k, self.n_vertical, self.n_slash,
                                 self.last_q)
    self.indices[layer_idx] = jax.tree.map(np.asarray, ind)
    estimate = time.perf_counter() - begin
    if self.keep_qk:
      self.qk[layer_idx] = (np.asarray(q[:, -self.last_q:]), np.asarray(k))
    o = jax.block_until_ready(
        self.inner(q, k, v, layer_idx=layer_idx, q_offset=q_offset))
    now = time.perf_counter()
    self.seconds[layer_idx] = now - self._clock
    if self.log is not None:
      self.log(f"  layer {layer_idx}: {now - self._clock:.2f} s (estimate "
               f"{estimate:.2f} s, attention {now - begin - estimate:.2f} s)")
    self._clock = now
    return o


@dataclasses.dataclass(frozen=True, eq=False)
class HeadIndices:
  """Per (layer, head) index sets of one run (numpy; B = 1 squeezed).

  Attributes:
    vertical: int32 [L, N, NV] ascending; vertical_count int32 [L, N].
    slash: int32 [L, N, NS] descending; slash_count int32 [L, N].
    meta: seq_len, budgets, geometry and provenance (module docstring).
  """

  vertical: np.ndarray
  vertical_count: np.ndarray
  slash: np.ndarray
  slash_count: np.ndarray
  meta: Mapping[str, Any]

  @property
  def seq_len(self) -> int:
    return int(self.meta["seq_len"])

  @property
  def num_layers(self) -> int:
    return self.vertical.shape[0]

  @property
  def num_heads(self) -> int:
    return self.vertical.shape[1]

  def save(self, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    meta = {**self.meta, "format": INDICES_FORMAT}
    with open(path, "wb") as f:
      np.savez_compressed(
          f, meta=np.asarray(json.dumps(meta, sort_keys=True)),
          vertical=self.vertical, vertical_count=self.vertical_count,
          slash=self.slash, slash_count=self.slash_count)
    return path

  @classmethod
  def load(cls, path: str | Path) -> "HeadIndices":
    """Reads a result file.

    Raises:
      ValueError: not a result file of this format version.
    """
    with np.load(path, allow_pickle=False) as z:
      meta = json.loads(str(z["meta"]))
      if meta.get("format") != INDICES_FORMAT:
        raise ValueError(f"{path} is not a {INDICES_FORMAT} file")
      return cls(z["vertical"], z["vertical_count"], z["slash"],
                 z["slash_count"], meta)


def _stderr(msg: str) -> None:
  print(msg, file=sys.stderr, flush=True)


def vs_pattern_config(num_layers: int, num_heads: int, n_vertical: int,
                      n_slash: int, last_q: int = VS_LAST_Q) -> PatternConfig:
  """VerticalSlash(n_vertical, n_slash, last_q) on every (layer, head)."""
  pattern = VerticalSlash(n_vertical, n_slash, last_q)
  return PatternConfig(layers=((pattern,) * num_heads,) * num_layers)


def slice_vs_attention(model_slice: ModelSlice, seq_len: int, *,
                       n_vertical: int, n_slash: int, last_q: int,
                       backend: str, dense_threshold: int | None,
                       interpret: bool):
  """The attention of a run over the slice's first `seq_len` tokens:
  `make_attention(vs_pattern_config(...), backend, ...)` for the slice's
  config (Vertical-Slash on every head, the deployment setting).

  Raises:
    ValueError: seq_len outside [1, len(tokens)].
  """
  total = len(model_slice.tokens)
  if not 1 <= seq_len <= total:
    raise ValueError(f"seq_len={seq_len} outside [1, {total}] (the stream)")
  config = model_slice.config
  return make_attention(
      vs_pattern_config(config.num_layers, config.num_heads, n_vertical,
                        n_slash, last_q),
      backend, dense_threshold=dense_threshold, interpret=interpret)


def model_head_indices(
    model_slice: ModelSlice,
    seq_len: int,
    *,
    n_vertical: int = 1000,
    n_slash: int = 6096,
    last_q: int = VS_LAST_Q,
    backend: str = "auto",
    dense_threshold: int | None = None,
    dtype: Any = jnp.bfloat16,
    chunk_size: int | None = 262144,
    interpret: bool = False,
    params: Params | None = None,
    keep_qk: bool = False,
    log: Callable[[str], None] | None = _stderr,
) -> tuple[HeadIndices, IndexRecorder]:
  """Runs the slice on the first `seq_len` tokens and records the indices.

  The forward is `models.llama.forward` (eager) with the slice's config and
  params; every layer's attention is `make_attention(vs_pattern_config(...),
  backend, dense_threshold=...)` wrapped by an IndexRecorder.

  Args:
    model_slice: from `load_slice`.
    seq_len: T, at most len(model_slice.tokens).
    n_vertical, n_slash, last_q: the Vertical-Slash budgets, used both by
      the attention and for the recorded estimate.
    backend: make_attention backend ("auto" on GPU: Pallas above the dense
      threshold; "xla" for CPU tests).
    dense_threshold: passed to make_attention (None: its default).
    dtype: parameter and activation dtype.
    chunk_size: tokens per chunk for norms/projections/MLP.
    interpret: Pallas interpret mode.
    params: the slice's params in `dtype` (built when None).
    keep_qk: keep each layer's q[:, -last_q:] and k on the recorder.
    log: progress sink (stderr by default), or None.

  Returns:
    (HeadIndices, the recorder).

  Raises:
    ValueError: seq_len outside [1, len(tokens)].
  """
  attention = slice_vs_attention(
      model_slice, seq_len, n_vertical=n_vertical, n_slash=n_slash,
      last_q=last_q, backend=backend, dense_threshold=dense_threshold,
      interpret=interpret)
  config = model_slice.config
  if params is None:
    params = model_slice.params(dtype)
  recorder = IndexRecorder(attention, n_vertical, n_slash, last_q,
                           keep_qk=keep_qk, log=log)
  tokens = jnp.asarray(model_slice.tokens[None, :seq_len], jnp.int32)
  if log is not None:
    log(f"T={seq_len}: {config.num_layers} layers x {config.num_heads} heads, "
        f"VerticalSlash({n_vertical}, {n_slash}, last_q={last_q}), "
        f"backend {backend!r} on {jax.default_backend()}, "
        f"{jnp.dtype(dtype).name}")
  start = time.perf_counter()
  recorder.start_clock()
  logits, _ = forward(params, tokens, config=config, attention=recorder,
                      logits_for="last", chunk_size=chunk_size)
  jax.block_until_ready(logits)
  if log is not None:
    log(f"T={seq_len}: done in {time.perf_counter() - start:.1f} s")
  layers = range(config.num_layers)
  stack = {
      f: np.stack([getattr(recorder.indices[i], f)[0] for i in layers])
      for f in ("vertical", "vertical_count", "slash", "slash_count")
  }
  meta = {
      "seq_len": int(seq_len),
      "num_layers": config.num_layers,
      "num_heads": config.num_heads,
      "num_kv_heads": config.num_kv_heads,
      "head_dim": config.head_dim,
      "n_vertical": n_vertical,
      "n_slash": n_slash,
      "last_q": last_q,
      "backend": backend,
      "platform": jax.default_backend(),
      "dtype": jnp.dtype(dtype).name,
      "source_model": model_slice.meta.get("source_model", config.name),
      "token_source": model_slice.token_source,
      "layer_seconds": [round(recorder.seconds[i], 3) for i in layers],
  }
  result = HeadIndices(
      **{f: a.astype(np.int32) for f, a in stack.items()}, meta=meta)
  return result, recorder


# ------------------------------------------------------- benchmark input
def select_heads(num_layers: int, num_heads: int, num_kv_heads: int,
                 count: int) -> list[tuple[int, int]]:
  """`count` (layer, head) pairs, round-robin over layers >= 1.

  Pick i takes layer 1 + i mod (L - 1) and the (i // (L - 1))-th head of
  that layer's order h = kv * G + j for j in 0..G-1, kv in 0..K-1 (0, G, 2G,
  ..., 1, G + 1, ...), so consecutive picks from one layer read different
  KV heads. After (L - 1) * N picks the sequence repeats. Layer 0 is left
  out (its attention reads the raw embeddings) unless it is the only one.

  Raises:
    ValueError: count < 1.
  """
  if count < 1:
    raise ValueError(f"count must be >= 1, got {count}")
  layers = list(range(1, num_layers)) or [0]
  g = num_heads // num_kv_heads
  order = [kv * g + j for j in range(g) for kv in range(num_kv_heads)]
  return [(layers[i % len(layers)], order[(i // len(layers)) % num_heads])
          for i in range(count)]


def load_model_head_indices(
    path: str | Path,
    num_heads: int,
    batch: int = 1,
    *,
    expect_seq_len: int | None = None,
) -> VerticalSlashIndices:
  """Real heads' index sets as a benchmark input [batch, num_heads, ...].

  Heads are picked by `select_heads` (round-robin over layers >= 1: layer
  1, 2, ..., L-1, then the next head of each layer, in KV-head-diverse
  order 0, G, 2G, ..., 1, G + 1, ...; repeating after (L - 1) * N heads).
  Every batch row gets the same heads. The indices are valid for
  T = S = the file's seq_len only.

  Args:
    path: a result file of `model_head_indices` (`HeadIndices.save`).
    num_heads: query heads wanted (e.g. 32).
    batch: batch size B.
    expect_seq_len: if given, the file's seq_len must equal it.

  Returns:
    VerticalSlashIndices with int32 vertical [B, num_heads, NV] ascending,
    vertical_count [B, num_heads], slash [B, num_heads, NS] descending,
    slash_count [B, num_heads].

  Raises:
    ValueError: a seq_len mismatch, or batch / num_heads < 1.
  """
  if batch < 1:
    raise ValueError(f"batch must be >= 1, got {batch}")
  res = HeadIndices.load(path)
  if expect_seq_len is not None and res.seq_len != expect_seq_len:
    raise ValueError(
        f"{path} holds indices for T={res.seq_len}, not {expect_seq_len}"
    )
  picks = select_heads(res.num_layers, res.num_heads,
                       int(res.meta["num_kv_heads"]), num_heads)
  li = np.asarray([p[0] for p in picks])
  hi = np.asarray([p[1] for p in picks])

  def take(a):  # [L, N, ...] -> [B, num_heads, ...]
    sel = a[li, hi]
    return jnp.asarray(np.broadcast_to(sel, (batch, *sel.shape)), jnp.int32)

  return VerticalSlashIndices(
      vertical=take(res.vertical), vertical_count=take(res.vertical_count),
      slash=take(res.slash), slash_count=take(res.slash_count))


# ------------------------------------------------------------- summaries
def summarize(res: HeadIndices, near: int = 4096) -> dict[str, Any]:
  """Quick statistics of the index sets (layers >= 1 and per layer).

  Returns:
    {"per_layer": [{layer, slash_near, slash_median, vertical_distinct,
    vertical_beyond_sinks}], "slash_near", "vertical_distinct", ...}:
    slash_near = fraction of kept slash offsets < `near`; vertical_distinct
    = distinct vertical key positions over the layer's heads;
    vertical_beyond_sinks = fraction of kept verticals >= 1024.
  """

  def valid(a, counts):
    return [a[h, : counts[h]] for h in range(a.shape[0])]

  rows, all_s, all_v = [], [], []
  for layer in range(res.num_layers):
    s = np.concatenate(valid(res.slash[layer], res.slash_count[layer]))
    v = np.concatenate(valid(res.vertical[layer], res.vertical_count[layer]))
    if layer >= 1 or res.num_layers == 1:
      all_s.append(s)
      all_v.append(v)
    rows.append({
        "layer": layer,
        "slash_near": round(float(np.mean(s < near)), 4),
        "slash_median": int(np.median(s)),
        "vertical_distinct": int(np.unique(v).size),
        "vertical_beyond_sinks": round(float(np.mean(v >= 1024)), 4),
    })
  s, v = np.concatenate(all_s), np.concatenate(all_v)
  return {
      "seq_len": res.seq_len,
      "near": near,
      "slash_near": round(float(np.mean(s < near)), 4),
      "slash_median": int(np.median(s)),
      "vertical_distinct": int(np.unique(v).size),
      "vertical_beyond_sinks": round(float(np.mean(v >= 1024)), 4),
      "per_layer": rows,
  }


def _parse(argv):
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--slice", type=Path, default=DEFAULT_SLICE,
                 help="model slice npz (scripts/export_model_slice.py)")
  p.add_argument("--seq-len", type=int, nargs="+", default=[131072],
                 help="T values (one result file each)")
  p.add_argument("--out", type=Path, default=Path("outputs/head_indices"),
                 help="output folder (model_head_indices_T<T>.npz)")
  p.add_argument("--n-vertical", type=int, default=1000)
  p.add_argument("--n-slash", type=int, default=6096)
  p.add_argument("--last-q", type=int, default=VS_LAST_Q)
  p.add_argument("--backend", default="auto",
                 help="make_attention backend (auto | pallas | xla | dense)")
  p.add_argument("--dense-threshold", type=int, default=None,
                 help="make_attention dense threshold (default: its own)")
  p.add_argument("--dtype", choices=("bfloat16", "float32"),
                 default="bfloat16")
  p.add_argument("--chunk-size", type=int, default=262144,
                 help="tokens per chunk for norms/projections/MLP")
  p.add_argument("--interpret", action="store_true",
                 help="Pallas interpret mode")
  return p.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> None:
  args = _parse(argv)
  begin = time.perf_counter()
  model_slice = load_slice(args.slice)
  dtype = jnp.dtype(args.dtype)
  params = model_slice.params(dtype)
  c = model_slice.config
  _stderr(f"slice {args.slice.name}: {c.num_layers} layers of "
          f"{model_slice.meta.get('source_model', c.name)}, "
          f"{len(model_slice.tokens)} tokens ({model_slice.token_source}); "
          f"loaded in {time.perf_counter() - begin:.1f} s")
  for t in args.seq_len:
    res, _ = model_head_indices(
        model_slice, t, n_vertical=args.n_vertical, n_slash=args.n_slash,
        last_q=args.last_q, backend=args.backend,
        dense_threshold=args.dense_threshold, dtype=dtype,
        chunk_size=args.chunk_size, interpret=args.interpret, params=params)
    path = res.save(args.out / f"model_head_indices_T{t}.npz")
    summary = summarize(res)
    (args.out / f"model_head_indices_T{t}_summary.json").write_text(
        json.dumps({**summary, "layer_seconds": res.meta["layer_seconds"]},
                   indent=1))
    _stderr(f"wrote {path}")
    print(json.dumps({k: summary[k] for k in summary if k != "per_layer"}),
          flush=True)


if __name__ == "__main__":
  main()
