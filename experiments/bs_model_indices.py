"""Block-Sparse kernels on a real model's index sets at long context.

The Vertical-Slash counterpart is `experiments.model_head_indices` (index
sets recorded to files, benchmarked by `gpu_vs_chain --model-indices`).
Block-Sparse index sets are [Tb, 100] block ids per head (0.2 GB for 32
heads at 1M tokens), too large to keep in the repo, so this script records
them and benchmarks them in one run:

1. Runs the model slice (`scripts/export_model_slice.py`, SmolLM2-135M-
   Instruct's first layers on real text) over the first T tokens exactly as
   `model_head_indices` does (Vertical-Slash attention on every head, the
   deployment setting), with a wrapper that computes MInference's
   Block-Sparse estimate (`minference_jax.index.block_sparse_indices`, top
   100 blocks of 64) from each layer's q/k after RoPE and keeps the heads
   `model_head_indices.select_heads` picks for a 32-head benchmark.
2. Benchmarks, side by side in the same process, on synthetic q/k/v with
   N=32, K=8, D=128, bf16: cuDNN dense causal attention, the index build on
   those q/k (the builder's own time), and the Block-Sparse kernels on the
   model's index sets and on the builder's (synthetic q/k) index sets.
   Effective TFLOP/s count 4 D FLOPs per pair of every selected 64 x 64
   block; the layer speedup is cuDNN / (index build + kernel).
3. Describes both index sets (`layout_stats`): density, the share of
   selected blocks within 4096 tokens of the diagonal and in the first 128
   tokens, the mean length of runs of consecutive selected blocks, and how
   much two heads of a KV group share at the same query block
   (`head_pair_union`; heads 2p and 2p + 1 are in one group of the
   builder's N=32, K=8 sets, not of the model's picked heads).

`--layouts builder` skips the model run (step 1).

Usage (GPU; the slice carried under .device_cache/):
  PYTHONPATH=. python3 -m experiments.bs_model_indices \
      --seq-len 131072 1048576 --out DIR [--impls mosaic_gpu triton] \
      [--layouts model builder]
"""

import argparse
import dataclasses
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from experiments import bench_common as bc
from experiments.model_head_indices import (DEFAULT_SLICE, ModelSlice,
                                            load_slice, select_heads,
                                            slice_vs_attention)
from minference_jax.index import block_sparse_indices
from minference_jax.patterns import VS_LAST_Q
from models.llama import forward
from pallas_kernels.layouts import BlockSparseLayout

BLOCK = 64
NEAR_TOKENS = 4096  # "local": key block within this many tokens of the row
SINK_TOKENS = 128  # "sink": key block in the first tokens


@dataclasses.dataclass(frozen=True)
class _Timing:  # the fields `bench_common.time_with` reads
  warmup: int = 1
  min_repeats: int = 2
  max_repeats: int = 10
  budget_s: float = 1.0


@dataclasses.dataclass(eq=False)
class BlockSparseRecorder:
  """An attention wrapper that keeps chosen heads' Block-Sparse estimates.

  Eager only. On each call, if `heads` names any head of this layer, it
  computes `block_sparse_indices(q, k, top_k, BLOCK)` from the q/k going
  into attention and keeps those heads' (block_count [Tb], block_index
  [Tb, KB]) as numpy; then runs `inner`.

  Attributes:
    inner: the attention callable that computes the layer's output.
    top_k: blocks per query block.
    heads: {layer: [head, ...]} to keep.
    kept: {(layer, head): (block_count, block_index)}.
    log: progress sink (one line per layer), or None.
  """

  inner: Callable[..., jax.Array]
  top_k: int
  heads: dict
  kept: dict = dataclasses.field(default_factory=dict)
  log: Callable[[str], None] | None = None

  def __call__(self, q, k, v, *, layer_idx, q_offset=0):
    begin = time.perf_counter()
    wanted = self.heads.get(layer_idx, ())
    if wanted:
      lay = block_sparse_indices(q, k, self.top_k, BLOCK)
      count = np.asarray(lay.block_count[0])  # [N, Tb]
      index = np.asarray(lay.block_index[0])  # [N, Tb, KB]
      for h in wanted:
        self.kept[(layer_idx, h)] = (count[h], index[h])
    o = jax.block_until_ready(
        self.inner(q, k, v, layer_idx=layer_idx, q_offset=q_offset))
    if self.log is not None:
      self.log(f"  layer {layer_idx}: {time.perf_counter() - begin:.2f} s,"
               f" kept heads {list(wanted)}")
    return o


def model_bs_layout(model_slice: ModelSlice, seq_len: int, num_heads: int,
                    *, top_k: int = 100, n_vertical: int = 1000,
                    n_slash: int = 6096, last_q: int = VS_LAST_Q,
                    backend: str = "auto",
                    dense_threshold: int | None = None, dtype=jnp.bfloat16,
                    chunk_size: int | None = 262144, interpret: bool = False,
                    log: Callable[[str], None] | None = None,
                    ) -> BlockSparseLayout:
  """The model's Block-Sparse index sets as a [1, num_heads] layout.

  Heads are `select_heads(L, N, K, num_heads)` of the slice (round-robin
  over layers >= 1), in that order. The forward runs Vertical-Slash
  attention (`vs_pattern_config`) on every head, as `model_head_indices`.

  Raises:
    ValueError: seq_len outside [1, len(tokens)].
  """
  attention = slice_vs_attention(
      model_slice, seq_len, n_vertical=n_vertical, n_slash=n_slash,
      last_q=last_q, backend=backend, dense_threshold=dense_threshold,
      interpret=interpret)
  config = model_slice.config
  picks = select_heads(config.num_layers, config.num_heads,
                       config.num_kv_heads, num_heads)
  heads: dict = {}
  for layer, head in picks:
    heads.setdefault(layer, [])
    if head not in heads[layer]:
      heads[layer].append(head)
  recorder = BlockSparseRecorder(attention, top_k, heads, log=log)
  tokens = jnp.asarray(model_slice.tokens[None, :seq_len], jnp.int32)
  logits, _ = forward(model_slice.params(dtype), tokens, config=config,
                      attention=recorder, logits_for="last",
                      chunk_size=chunk_size)
  jax.block_until_ready(logits)
  count = np.stack([recorder.kept[p][0] for p in picks])  # [N', Tb]
  index = np.stack([recorder.kept[p][1] for p in picks])  # [N', Tb, KB]
  return BlockSparseLayout(jnp.asarray(count[None], jnp.int32),
                           jnp.asarray(index[None], jnp.int32), BLOCK)


def layout_stats(layout: BlockSparseLayout, seq_len: int) -> dict:
  """Where a Block-Sparse layout's selected blocks lie (all heads, B = 1).

  Returns:
    density (selected block area / causal area), near_share (blocks with
    (m - j) * 64 < NEAR_TOKENS), sink_share (j * 64 < SINK_TOKENS),
    run_mean (mean length of runs of consecutive block ids in a row),
    pair_union (`head_pair_union`).
  """
  count = np.asarray(layout.block_count[0])  # [N, Tb]
  index = np.asarray(layout.block_index[0]).astype(np.int64)  # [N, Tb, KB]
  n, tb, kb = index.shape
  valid = np.arange(kb)[None, None, :] < count[..., None]
  rows = np.arange(tb)[None, :, None]
  kept = int(valid.sum())
  starts_run = valid & ~(
      np.pad(index[..., :-1] + 1 == index[..., 1:], ((0, 0), (0, 0), (1, 0)))
      & np.pad(valid[..., :-1], ((0, 0), (0, 0), (1, 0))))
  causal = n * seq_len * (seq_len + 1) / 2
  return dict(
      density=round(kept * BLOCK * BLOCK / causal, 5),
      near_share=round(float(((rows - index) * BLOCK < NEAR_TOKENS)[valid]
                             .mean()), 4),
      sink_share=round(float((index * BLOCK < SINK_TOKENS)[valid].mean()), 4),
      run_mean=round(kept / max(int(starts_run.sum()), 1), 2),
      pair_union=head_pair_union(count, index),
  )


def head_pair_union(count: np.ndarray, index: np.ndarray) -> float | None:
  """Blocks the head-pair kernel loads over blocks it computes: for heads
  2p and 2p + 1 at the same query block, |union| / (|A| + |B|) summed over
  all (pair, block) (0.5: identical sets, 1: disjoint). None for odd N.

  count [N, Tb], index [N, Tb, KB] (int64; first count entries distinct).
  """
  n, tb, kb = index.shape
  total = int(count.sum())
  if n % 2 or not total:
    return None
  valid = np.arange(kb)[None, :] < count[..., None]  # [N, Tb, KB]
  shared = 0
  for p in range(0, n, 2):  # one pair at a time: [Tb, 2 KB] ids
    # Invalid entries get distinct negative ids, so they never pair up.
    ids = np.concatenate(
        [np.where(valid[p + w], index[p + w], -1 - np.arange(kb) - w * kb)
         for w in range(2)], axis=-1)
    ids.sort(axis=-1)
    shared += int((ids[:, 1:] == ids[:, :-1]).sum())
  return round((total - shared) / total, 4)


def _kernel_fn(impl: str):
  if impl == "triton":
    from pallas_kernels.block_sparse import block_sparse_attention
    return block_sparse_attention
  from pallas_kernels.block_sparse.pallas_mosaic_gpu import (
      block_sparse_attention_mgpu)
  return block_sparse_attention_mgpu


def _cudnn(q, k, v):
  return jax.nn.dot_product_attention(q, k, v, is_causal=True,
                                      implementation="cudnn")


def bench_length(args, model_slice: ModelSlice | None, t: int
                 ) -> list[dict]:
  """The rows of one T (module docstring, steps 1-3)."""
  log = lambda msg: print(msg, file=sys.stderr, flush=True)
  model_layout = None
  if "model" in args.layouts:
    begin = time.perf_counter()
    model_layout = model_bs_layout(model_slice, t, args.num_heads,
                                   top_k=args.top_k, log=log)
    log(f"T={t}: model index sets in {time.perf_counter() - begin:.1f} s")
  rows = []
  base = dict(T=t, N=args.num_heads, K=args.kv_heads, D=args.head_dim)
  from experiments import synthetic
  s = synthetic.synthetic_qkv(args.seed, batch=1, seq_len=t,
                              num_heads=args.num_heads,
                              num_kv_heads=args.kv_heads,
                              head_dim=args.head_dim, dtype=jnp.bfloat16)
  q, k, v = jax.block_until_ready((s.q, s.k, s.v))
  timer = _Timing(budget_s=args.budget_s)
  dense_ms = None
  if t <= args.dense_max_len:
    tm = bc.time_with(timer, _cudnn, (q, k, v))
    dense_ms = tm["median_ms"]
    rows.append(base | dict(kernel="cudnn_dense", layout="dense",
                            ms=dense_ms, density=1.0, tflops=round(
                                bc.attention_flops(args.num_heads *
                                                   bc.causal_pairs(t),
                                                   args.head_dim)
                                / dense_ms / 1e9, 1)))
  build = lambda q, k: block_sparse_indices(q, k, args.top_k, BLOCK)
  tm = bc.time_with(timer, build, (q, k), keep_output=True)
  builder_layout, index_ms = tm.pop("output"), tm["median_ms"]
  rows.append(base | dict(kernel="bs_index_build", layout="builder",
                          ms=index_ms, compile_s=round(tm["compile_s"], 2)))
  layouts = dict(model=model_layout, builder=builder_layout)
  for name in args.layouts:
    layout = layouts[name]
    stats = layout_stats(layout, t)
    pairs = bc.bs_tile_pairs(layout)
    for impl in args.impls:
      tm = bc.time_with(timer, _kernel_fn(impl), (q, k, v, layout))
      ms = tm["median_ms"]
      rows.append(base | stats | dict(
          kernel=f"block_sparse@{impl}", layout=name, ms=ms,
          compile_s=round(tm["compile_s"], 2),
          tflops=round(bc.attention_flops(pairs, args.head_dim) / ms / 1e9,
                       1),
          x_cudnn=round(dense_ms / ms, 2) if dense_ms else None,
          layer_x_cudnn=(round(dense_ms / (index_ms + ms), 2) if dense_ms
                         else None)))
      print(rows[-1], flush=True)
  return rows


COLUMNS = [("T", "T"), ("kernel", "kernel"), ("layout", "index sets"),
           ("ms", "ms"), ("tflops", "TF/s"), ("density", "density"),
           ("near_share", "near 4K"), ("sink_share", "sink"),
           ("run_mean", "run"), ("pair_union", "pair union"),
           ("x_cudnn", "x cuDNN"),
           ("layer_x_cudnn", "layer x cuDNN"), ("compile_s", "compile s")]


def _parse(argv):
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--slice", type=Path, default=DEFAULT_SLICE)
  p.add_argument("--seq-len", type=int, nargs="+", default=[131072])
  p.add_argument("--out", default="outputs")
  p.add_argument("--name", default="bs_model_indices")
  p.add_argument("--impls", nargs="+", default=["mosaic_gpu", "triton"],
                 choices=("mosaic_gpu", "triton"))
  p.add_argument("--layouts", nargs="+", default=["model", "builder"],
                 choices=("model", "builder"),
                 help="index sets to benchmark (model: recorded from the"
                 " slice's heads; builder: the estimate on synthetic q/k)")
  p.add_argument("--num-heads", type=int, default=32)
  p.add_argument("--kv-heads", type=int, default=8)
  p.add_argument("--head-dim", type=int, default=128)
  p.add_argument("--top-k", type=int, default=100)
  p.add_argument("--budget-s", type=float, default=1.0)
  p.add_argument("--dense-max-len", type=int, default=1 << 20)
  p.add_argument("--seed", type=int, default=0)
  return p.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> None:
  args = _parse(argv)
  model_slice = load_slice(args.slice) if "model" in args.layouts else None
  rows = []
  for t in args.seq_len:
    rows += bench_length(args, model_slice, t)
  meta = bc.environment() | dict(top_k=args.top_k, layouts=args.layouts)
  if model_slice is not None:
    meta |= dict(slice=args.slice.name,
                 source_model=model_slice.meta.get("source_model", ""))
  paths = bc.write_results(args.out, args.name, meta, rows, COLUMNS)
  print("wrote", *paths, flush=True)


if __name__ == "__main__":
  main()
