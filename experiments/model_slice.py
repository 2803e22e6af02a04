"""Model slices: the first layers of a checkpoint plus a real-text stream.

A *model slice* (written by `scripts/export_model_slice.py`) holds the first
L decoder layers of a checkpoint (SmolLM2-135M-Instruct by default), the
embedding rows of the tokens that occur in a stream of real text, and that
stream (>= 1,048,576 tokens). It is small enough to carry to a GPU machine
without the `gguf` package; `minference-jax model-indices` runs it to
record a real model's sparse index sets at long context.

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
"""

import dataclasses
import json
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import jax.numpy as jnp
import numpy as np

from models.config import ModelConfig
from models.weights import Params, params_from_state_dict

SLICE_FORMAT = "minference-jax/model-slice/v1"
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


def _existing_slice(path: str | Path) -> Path:
  """`path` as a Path; FileNotFoundError (saying how to make one) if absent."""
  path = Path(path)
  if not path.is_file():
    raise FileNotFoundError(
        f"model slice {path} not found; make it with `python"
        " scripts/export_model_slice.py` (needs the SmolLM2 GGUF)"
    )
  return path


def _slice_meta(path: Path, z) -> dict:
  """The metadata of an open slice npz; ValueError for another format."""
  meta = json.loads(str(z["meta"]))
  if meta.get("format") != SLICE_FORMAT:
    raise ValueError(
        f"{path} is not a {SLICE_FORMAT} file (format"
        f" {meta.get('format')!r})"
    )
  return meta


def slice_header(path: str | Path) -> tuple[ModelConfig, int]:
  """(the slice's config, its token count) without reading its weights.

  Raises:
    FileNotFoundError, ValueError: as `load_slice`.
  """
  path = _existing_slice(path)
  with np.load(path, allow_pickle=False) as z:
    meta = _slice_meta(path, z)
    n_tokens = int(z["tokens"].shape[0])
  return ModelConfig.from_dict(meta["config"]), n_tokens


def load_slice(path: str | Path) -> ModelSlice:
  """Reads a ModelSlice npz (numpy only; no gguf needed).

  Raises:
    FileNotFoundError: no such file (the message says how to make one).
    ValueError: not a model slice of this format version.
  """
  path = _existing_slice(path)
  with np.load(path, allow_pickle=False) as z:
    meta = _slice_meta(path, z)
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
