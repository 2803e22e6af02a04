"""Per-head density and recall of a layer with mixed patterns: dense heads
count 1, the A-shape head's density equals a direct count of its mask, and
every sparse head's recall is a fraction of the dense softmax mass."""

import jax
import numpy as np

from experiments.eval.diagnostics import layer_stats
from minference_jax import AShape, BlockSparse, Dense, VerticalSlash


def test_mixed_layer_density_and_recall():
  seed = 7
  t, n, kv, d = 256, 4, 2, 16
  kq, kk = jax.random.split(jax.random.key(seed))
  q = jax.random.normal(kq, (1, t, n, d))
  k = jax.random.normal(kk, (1, t, kv, d))
  patterns = (Dense(), AShape(4, 64), VerticalSlash(30, 50), BlockSparse(2))
  density, recall = layer_stats(q, k, patterns)
  rows, cols = np.tril_indices(t)
  kept = (cols < 4) | (rows - cols < 64)
  assert density[0] == 1.0 and recall[0] == 1.0, f"seed {seed}"
  assert abs(density[1] - kept.sum() / rows.size) < 1e-9, f"seed {seed}"
  assert np.all((density[2:] > 0) & (density[2:] < 1)), (seed, density)
  assert np.all((recall[1:] > 0) & (recall[1:] <= 1 + 1e-6)), (seed, recall)
  # The A-shape head's recall, directly: dense softmax mass on its mask.
  qh = np.asarray(q[0, :, 1], np.float64)  # query head 1 reads KV head 0
  kh = np.asarray(k[0, :, 0], np.float64)
  logits = qh @ kh.T / np.sqrt(d)
  logits[np.triu_indices(t, 1)] = -np.inf
  probs = np.exp(logits - logits.max(-1, keepdims=True))
  probs /= probs.sum(-1, keepdims=True)
  mask = np.zeros((t, t), bool)
  mask[rows[kept], cols[kept]] = True
  direct = (probs * mask).sum(-1).mean()
  assert abs(recall[1] - direct) < 1e-4, (seed, recall[1], direct)
