"""Density and attention recall per layer of an attention config on a real
prompt: where a config loses, these say which layers miss attention mass.

The model runs one eager dense prefill that records every layer's q and k;
each layer's patterns then get their index sets from MInference's online
estimates (`minference_jax.index`: Vertical-Slash from the last queries,
Block-Sparse from pooled blocks, A-shape static), and
`minference_jax.metrics` measures the fraction of the causal area computed
(density) and the dense softmax mass on it (recall), per head. Dense heads
count as density 1 and recall 1.
"""

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np

from minference_jax import AShape, BlockSparse, Dense, VerticalSlash
from minference_jax.attention import make_attention
from minference_jax.index import (
    a_shape_layout,
    block_sparse_indices,
    vertical_slash_indices,
    vertical_slash_layout,
)
from minference_jax.metrics import attention_recall_per_head, covered_counts
from models import CausalLM, forward


@dataclasses.dataclass(eq=False)
class _Recorder:
  """Eager-only attention that keeps each layer's (q, k)."""

  records: dict = dataclasses.field(default_factory=dict)
  # cuDNN on GPU, chunked XLA elsewhere: no [T, S] score matrix
  inner: object = dataclasses.field(
      default_factory=lambda: make_attention(None, backend="dense"))

  def __call__(self, q, k, v, *, layer_idx, q_offset=0):
    self.records[layer_idx] = (q, k)
    return self.inner(q, k, v, layer_idx=layer_idx, q_offset=q_offset)


@functools.partial(jax.jit, static_argnames=("config",))
def _record(params, ids, *, config):
  recorder = _Recorder()
  forward(params, ids, config=config, attention=recorder, logits_for="last")
  return [recorder.records[i] for i in sorted(recorder.records)]


def record_qk(model: CausalLM, tokens: np.ndarray) -> dict[int, tuple]:
  """Per layer (q [B,T,N,D], k [B,T,K,D]) of one dense prefill.

  One jitted forward whose attention keeps each layer's q and k and returns
  them as outputs (the logits are dead code).
  """
  qk = _record(model.params, jnp.asarray(tokens, jnp.int32),
               config=model.config)
  return dict(enumerate(qk))


@functools.partial(jax.jit, static_argnames=("kind", "budgets", "active"))
def _group_counts(q, k, *, kind, budgets, active):
  """(covered pairs per row block [B,N,Tb], recall per head [N])."""
  seq_len = q.shape[1]
  bounds = {}
  if kind == "vertical_slash":
    nv, ns, last_q = budgets
    layout = vertical_slash_layout(
        vertical_slash_indices(q, k, nv, ns, last_q, active=active),
        seq_len)
  elif kind == "block_sparse":
    layout = block_sparse_indices(q, k, budgets, active=active)
  else:
    init, local = budgets
    layout = a_shape_layout(init, local)
    bounds = {"max_init": max(init), "max_local": max(local)}
  counts = covered_counts(layout, seq_len)
  return counts, attention_recall_per_head(q, k, layout, **bounds)


def _group_stats(q, k, patterns, kind, seq_len):
  """(density [N], recall [N]) of the heads of one kind (others 0)."""
  mine = tuple(isinstance(p, kind) for p in patterns)
  if kind is VerticalSlash:
    last_q = next(p.last_q for p, m in zip(patterns, mine) if m)
    budgets = (tuple(p.n_vertical if m else 0
                     for p, m in zip(patterns, mine)),
               tuple(p.n_slash if m else 0 for p, m in zip(patterns, mine)),
               last_q)
    name = "vertical_slash"
  elif kind is BlockSparse:
    budgets = tuple(p.top_k if m else 0 for p, m in zip(patterns, mine))
    name = "block_sparse"
  else:
    budgets = (tuple(p.n_init if m else 0 for p, m in zip(patterns, mine)),
               tuple(p.n_local if m else 0 for p, m in zip(patterns, mine)))
    name = "a_shape"
  counts, recall = _group_counts(q, k, kind=name, budgets=budgets,
                                 active=mine)
  area = seq_len * (seq_len + 1) // 2
  density = np.asarray(counts).astype(np.int64).sum(-1).mean(0) / area
  return (np.where(mine, density, 0.0),
          np.where(mine, np.asarray(recall), 0.0))


def layer_stats(q, k, patterns) -> tuple[np.ndarray, np.ndarray]:
  """Per-head (density, recall) [N] of one layer's patterns on its q/k.

  Args:
    q: [B, T, N, D] queries (RoPE applied); k: [B, T, K, D] keys.
    patterns: N patterns, one per query head.
  """
  seq_len = q.shape[1]
  n = q.shape[2]
  if len(patterns) != n:
    raise ValueError(f"{len(patterns)} patterns for {n} query heads")
  density = np.array([1.0 if isinstance(p, Dense) else 0.0
                      for p in patterns])
  recall = density.copy()
  for kind in (VerticalSlash, BlockSparse, AShape):
    if any(isinstance(p, kind) for p in patterns):
      d, r = _group_stats(q, k, patterns, kind, seq_len)
      density += d
      recall += r
  return density, recall


def config_stats(records: dict[int, tuple], layer_patterns) -> dict:
  """Density and recall per layer (mean over heads) and overall.

  Args:
    records: layer -> (q, k) from `record_qk`.
    layer_patterns: layer -> per-head patterns.

  Returns:
    {"density": float, "recall": float, "layer_density": [L],
     "layer_recall": [L], "layer_min_recall": [L]}.
  """
  dens, rec, low = [], [], []
  for layer in sorted(records):
    q, k = records[layer]
    d, r = layer_stats(q, k, layer_patterns(layer))
    dens.append(float(d.mean()))
    rec.append(float(r.mean()))
    low.append(float(r.min()))
  return {"density": float(np.mean(dens)), "recall": float(np.mean(rec)),
          "layer_density": dens, "layer_recall": rec,
          "layer_min_recall": low}
