"""`minference-jax model-indices`: sparse index sets of a real model's
heads at long context.

Runs a model slice (`experiments/model_slice.py`: SmolLM2-135M-Instruct's
first layers and >= 1M tokens of real text, made by
`scripts/export_model_slice.py`) over the first T tokens with
`models.llama.forward` (eager, so a Python wrapper around the attention
sees concrete arrays). Attention is MInference's deployment setting:
`make_attention(PatternConfig of VerticalSlash(n_vertical, n_slash) on
every head, backend)` (dense below the 128K threshold, the Pallas kernels
on GPU above it). The wrapper computes, per layer, the online estimate
`vertical_slash_indices(q, k, n_vertical, n_slash)` from the q/k that
enter attention (after RoPE) and keeps only the index sets, so no [T, T]
array and no full q is kept; for the `bs_heads` heads a benchmark of that
many heads uses (`index_sets.select_heads`) it also keeps MInference's
Block-Sparse estimate (top `bs_top_k` blocks of 64).

Writes per T under `out_dir` (formats in `experiments/index_sets.py`):
`model_head_indices_T<T>.npz` (Vertical-Slash, every layer and head),
`model_bs_indices_T<T>.npz` (Block-Sparse, the picked heads),
`model_head_indices_T<T>_summary.json` (statistics of the Vertical-Slash
sets, per-layer seconds), and `model_indices.config.yaml` (the resolved
config). A T whose files exist is skipped. `minference-jax bench-kernels`
times the kernels on these sets (`vertical_slash:model`,
`block_sparse:model`, `model_indices_dir`).

  minference-jax model-indices [--config configs/experiments/model_indices.yaml]
      [seq_lens=[131072]] [key=value ...]
"""

import dataclasses
import json
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

import jax
import jax.numpy as jnp
import numpy as np

from experiments.config import (
    CONFIGS_DIR,
    ConfigError,
    command,
    parse_cli,
    save_resolved,
)
from experiments.index_sets import (
    BlockSparseHeads,
    HeadIndices,
    bs_indices_path,
    select_heads,
    summarize,
    vs_indices_path,
)
from experiments.model_context import check_context, with_rope_scaling
from experiments.model_slice import (
    DEFAULT_SLICE,
    ModelSlice,
    load_slice,
    slice_header,
)
from minference_jax.attention import make_attention
from minference_jax.index import block_sparse_indices, vertical_slash_indices
from minference_jax.pattern_config import PatternConfig
from minference_jax.patterns import VS_LAST_Q, VerticalSlash
from models.llama import forward
from models.weights import Params

DEFAULT_CONFIG = CONFIGS_DIR / "experiments" / "model_indices.yaml"
BLOCK = 64  # the Block-Sparse estimate's block (MInference's)


# ------------------------------------------------------- index recording
@dataclasses.dataclass(eq=False)
class IndexRecorder:
  """An attention wrapper that records each layer's sparse-index estimates.

  Eager only (the forward must run with concrete arrays). On each call it
  computes `vertical_slash_indices(q, k, n_vertical, n_slash, last_q)` from
  the q/k going into attention (RoPE applied), keeps the indices as numpy
  (and, with keep_qk, q[:, -last_q:] and k); for the heads `bs_heads` names
  in this layer it also keeps MInference's Block-Sparse estimate
  `block_sparse_indices(q, k, bs_top_k, 64)`; then it runs `inner`.

  Attributes:
    inner: the attention callable that computes the layer's output.
    n_vertical, n_slash, last_q: the estimate's budgets.
    keep_qk: also keep q[:, -last_q:] [B, L, N, D] and k [B, T, K, D].
    log: progress sink (one line per layer), or None.
    indices: {layer: VerticalSlashIndices of numpy arrays}.
    qk: {layer: (q_last, k)} when keep_qk.
    bs_top_k: Block-Sparse key blocks per query block.
    bs_heads: {layer: [head, ...]} whose Block-Sparse sets to keep.
    bs_kept: {(layer, head): (block_count [Tb], block_index [Tb, KB])}.
    seconds: {layer: wall seconds of the layer (projections of this layer,
      MLP of the previous one, estimates and attention)}.
  """

  inner: Callable[..., jax.Array]
  n_vertical: int
  n_slash: int
  last_q: int = VS_LAST_Q
  keep_qk: bool = False
  log: Callable[[str], None] | None = None
  indices: dict = dataclasses.field(default_factory=dict)
  qk: dict = dataclasses.field(default_factory=dict)
  bs_top_k: int = 100
  bs_heads: Mapping[int, Sequence[int]] = dataclasses.field(
      default_factory=dict)
  bs_kept: dict = dataclasses.field(default_factory=dict)
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
    wanted = self.bs_heads.get(layer_idx, ())
    if wanted:
      bs = block_sparse_indices(q, k, self.bs_top_k, BLOCK)
      count = np.asarray(bs.block_count[0])  # [N, Tb]
      index = np.asarray(bs.block_index[0])  # [N, Tb, KB]
      for h in wanted:
        self.bs_kept[(layer_idx, h)] = (count[h], index[h])
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
    bs_heads: int = 0,
    bs_top_k: int = 100,
    log: Callable[[str], None] | None = _stderr,
) -> tuple[HeadIndices, BlockSparseHeads | None, IndexRecorder]:
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
    bs_heads: N' > 0 also records the Block-Sparse estimate (top
      `bs_top_k` blocks of 64) of the N' heads `select_heads` picks, in
      that order; 0 records none.
    bs_top_k: Block-Sparse key blocks per query block.
    log: progress sink (stderr by default), or None.

  Returns:
    (HeadIndices, BlockSparseHeads or None, the recorder).

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
  picks = (select_heads(config.num_layers, config.num_heads,
                        config.num_kv_heads, bs_heads) if bs_heads else [])
  wanted = {}
  for layer, head in picks:
    wanted.setdefault(layer, []).append(head)
  recorder = IndexRecorder(attention, n_vertical, n_slash, last_q,
                           keep_qk=keep_qk, log=log, bs_top_k=bs_top_k,
                           bs_heads=wanted)
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
  block_sparse = None
  if picks:
    kept = [recorder.bs_kept[p] for p in picks]
    block_sparse = BlockSparseHeads(
        block_count=np.stack([c for c, _ in kept]).astype(np.int32),
        block_index=np.stack([i for _, i in kept]).astype(np.int32),
        meta={"seq_len": int(seq_len), "top_k": bs_top_k,
              "block_size": BLOCK, "heads": [list(p) for p in picks],
              "source_model": meta["source_model"],
              "token_source": meta["token_source"]})
  return result, block_sparse, recorder


# ---------------------------------------------------------------- command
@dataclasses.dataclass(frozen=True)
class ModelIndicesConfig:
  """The command's settings (YAML keys; `key=value` on the command line).

  Attributes:
    slice: the model slice npz (scripts/export_model_slice.py).
    seq_lens: T values (files per T).
    out_dir: folder for the index files, summaries and the config.
    n_vertical, n_slash, last_q: Vertical-Slash budgets (the attention and
      the recorded estimate).
    backend: make_attention backend ("auto": Pallas on GPU).
    dense_threshold: make_attention's dense threshold (None: its default).
    dtype: parameter and activation dtype.
    chunk_size: tokens per chunk for norms/projections/MLP (None: off).
    interpret: Pallas interpret mode.
    bs_heads: heads whose Block-Sparse sets to keep (0: none).
    bs_top_k: Block-Sparse key blocks per query block.
    rope_scaling: an HF `rope_scaling` mapping applied to the slice's model
      (None: its own RoPE).
    beyond_context: record at lengths past the model's context with its
      own RoPE (the index-set studies do; said so at the start); otherwise
      such lengths are refused.
  """

  slice: str = str(DEFAULT_SLICE)
  seq_lens: tuple[int, ...] = (131072, 1048576)
  out_dir: str = "outputs/model_indices"
  n_vertical: int = 1000
  n_slash: int = 6096
  last_q: int = VS_LAST_Q
  backend: Literal["auto", "pallas", "xla", "dense"] = "auto"
  dense_threshold: int | None = None
  dtype: Literal["bfloat16", "float32"] = "bfloat16"
  chunk_size: int | None = 262144
  interpret: bool = False
  bs_heads: int = 32
  bs_top_k: int = 100
  rope_scaling: dict[str, Any] | None = None
  beyond_context: bool = False

  def __post_init__(self):
    if not self.seq_lens or min(self.seq_lens) < 1:
      raise ValueError(f"seq_lens must be >= 1, got {list(self.seq_lens)}")
    for name in ("n_vertical", "n_slash", "last_q", "bs_top_k"):
      if getattr(self, name) < 1:
        raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
    if self.bs_heads < 0:
      raise ValueError(f"bs_heads must be >= 0, got {self.bs_heads}")
    if self.chunk_size is not None and self.chunk_size < 1:
      raise ValueError(f"chunk_size must be >= 1, got {self.chunk_size}")


def run(cfg: ModelIndicesConfig) -> list[dict]:
  """Records and writes the index sets (module docstring).

  Returns:
    One summary per T (without the per-layer rows).

  Raises:
    ConfigError: a missing slice or a T longer than its text stream.
  """
  if not Path(cfg.slice).is_file():
    raise ConfigError(f"slice: {cfg.slice} does not exist; make it with "
                      "`python scripts/export_model_slice.py` (needs the "
                      "SmolLM2 GGUF)")
  config, total = slice_header(cfg.slice)
  if max(cfg.seq_lens) > total:
    raise ConfigError(f"seq_lens: {max(cfg.seq_lens)} is longer than the "
                      f"slice's text ({total} tokens)")
  config = with_rope_scaling(config, cfg.rope_scaling)
  check_context(config, max(cfg.seq_lens),
                what=f"seq_lens up to {max(cfg.seq_lens)}",
                allow_key="beyond_context", allowed=cfg.beyond_context)
  out = Path(cfg.out_dir)
  save_resolved(cfg, out / "model_indices.config.yaml")
  begin = time.perf_counter()
  model_slice = load_slice(cfg.slice)
  model_slice = dataclasses.replace(
      model_slice, config=with_rope_scaling(model_slice.config,
                                            cfg.rope_scaling))
  dtype = jnp.dtype(cfg.dtype)
  params = model_slice.params(dtype)
  c = model_slice.config
  _stderr(f"slice {Path(cfg.slice).name}: {c.num_layers} layers of "
          f"{model_slice.meta.get('source_model', c.name)}, {total} tokens "
          f"({model_slice.token_source}); loaded in "
          f"{time.perf_counter() - begin:.1f} s")
  summaries = []
  for t in cfg.seq_lens:
    vs_path, bs_path = vs_indices_path(out, t), bs_indices_path(out, t)
    summary_path = out / f"model_head_indices_T{t}_summary.json"
    if summary_path.is_file() and vs_path.is_file() and (
        not cfg.bs_heads or bs_path.is_file()):
      _stderr(f"T={t}: {vs_path} exists, skipped")
      summary = json.loads(summary_path.read_text())
      summaries.append({k: v for k, v in summary.items()
                        if k != "per_layer"})
      continue
    res, bs, _ = model_head_indices(
        model_slice, t, n_vertical=cfg.n_vertical, n_slash=cfg.n_slash,
        last_q=cfg.last_q, backend=cfg.backend,
        dense_threshold=cfg.dense_threshold, dtype=dtype,
        chunk_size=cfg.chunk_size, interpret=cfg.interpret, params=params,
        bs_heads=cfg.bs_heads, bs_top_k=cfg.bs_top_k)
    res.save(vs_path)
    if bs is not None:
      bs.save(bs_path)
    summary = summarize(res)
    summary_path.write_text(json.dumps(
        {**summary, "layer_seconds": res.meta["layer_seconds"]}, indent=1))
    _stderr(f"wrote {vs_path}" + (f" and {bs_path}" if bs else ""))
    brief = {k: summary[k] for k in summary if k != "per_layer"}
    print(json.dumps(brief), flush=True)
    summaries.append(brief)
  return summaries


@command
def main(argv: Sequence[str] | None = None) -> None:
  cfg, _ = parse_cli(ModelIndicesConfig,
                     sys.argv[1:] if argv is None else argv, DEFAULT_CONFIG)
  run(cfg)


if __name__ == "__main__":
  main()
