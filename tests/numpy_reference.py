"""Plain sequential NumPy references for the online index builders.

Written straight from MInference 1.0's description (one head, one row block at
a time, float64), independent of `minference_jax`: tests compare the
vectorised JAX builders against these.
"""

import math

import numpy as np

SINK_COLUMNS = 30  # vertical columns 0..29 always kept
LOCAL_OFFSETS = 100  # slash offsets 0..99 always kept
MIN_VERTICAL, MIN_SLASH = 30, 50


def _per_head(value, n):
  return list(value) if isinstance(value, (list, tuple)) else [value] * n


def _active(active, n):
  return [True] * n if active is None else list(active)


def vs_scores(q_head, k_head, last_q, force=True):
  """Vertical and slash scores of one head (float64, forced entries = inf).

  Args:
    q_head: [T, D] queries of one head; k_head: [T, D] its KV head's keys.
    last_q: queries used for the estimate (clamped to T).
    force: set the sink columns and local offsets to +inf.

  Returns:
    (vertical [T] indexed by column, slash [T] indexed by offset row - col).
  """
  t, d = q_head.shape
  last = min(last_q, t)
  qs = q_head[t - last :].astype(np.float64)
  logits = qs @ k_head.astype(np.float64).T / math.sqrt(d)  # [L, T]
  vertical = np.zeros(t)
  slash = np.zeros(t)
  for i in range(last):
    row = t - last + i  # absolute position of this query
    z = logits[i, : row + 1]
    p = np.exp(z - z.max())
    p /= p.sum()  # causal softmax over keys 0..row
    vertical[: row + 1] += p
    slash[: row + 1] += p[::-1]  # key j has offset row - j
  if force:
    vertical[:SINK_COLUMNS] = np.inf
    slash[:LOCAL_OFFSETS] = np.inf
  return vertical, slash


def _top(score, count):
  """Top `count` positions by score; ties to the lower position."""
  order = np.argsort(-score, kind="stable")
  return order[:count]


def vs_indices_reference(q, k, n_vertical, n_slash, last_q=64, active=None):
  """Per (batch, head): selected lines and the scores that ranked them.

  Returns:
    A dict with, per key (b, n): "vertical" (ascending), "slash"
    (descending), "vertical_score", "slash_score" (float64 arrays).
  """
  b, t, n, _ = q.shape
  g = n // k.shape[2]
  nvs, nss, on = _per_head(n_vertical, n), _per_head(n_slash, n), _active(
      active, n
  )
  out = {}
  for bi in range(b):
    for h in range(n):
      if not on[h]:
        out[bi, h] = dict(
            vertical=np.zeros(0, int),
            slash=np.zeros(0, int),
            vertical_score=None,
            slash_score=None,
        )
        continue
      kv_count = min(t, max(nvs[h], MIN_VERTICAL))
      ks_count = min(t, max(nss[h], MIN_SLASH))
      vs, ss = vs_scores(q[bi, :, h], k[bi, :, h // g], last_q)
      out[bi, h] = dict(
          vertical=np.sort(_top(vs, kv_count)),
          slash=np.sort(_top(ss, ks_count))[::-1],
          vertical_score=vs,
          slash_score=ss,
      )
  return out


def merge_row_block(vertical, slash, start_m, end_m, bs):
  """MInference's point/range two-way merge for one row block.

  Args:
    vertical: ascending key columns; slash: descending offsets.
    start_m, end_m: rows of the block (end_m = min(start_m + bs, T)).
    bs: block size.

  Returns:
    (window starts, single columns), both lists in emission order.
  """
  blocks, columns = [], []
  s = 0
  while s < len(slash) and slash[s] >= end_m:
    s += 1  # this diagonal misses the row block
  if s == len(slash):
    return blocks, columns
  edge = max(end_m - slash[s], bs)
  s += 1
  lo, hi = edge - bs, edge  # current range [lo, hi)
  v = 0
  while True:
    if v < len(vertical) and vertical[v] < hi:
      if vertical[v] < lo:
        columns.append(int(vertical[v]))  # left of the range: a column
      v += 1  # else already inside the range
    elif s < len(slash):
      edge = max(end_m - slash[s], bs)
      s += 1
      if edge > hi + bs:  # a gap: close the range, open a new one
        blocks.extend(range(lo, hi, bs))
        lo, hi = edge - bs, edge
      elif edge > hi:  # sticks out by at most bs: grow by one window
        hi += bs
    else:
      blocks.extend(range(lo, hi, bs))
      return blocks, columns


def vs_layout_reference(vertical, vertical_count, slash, slash_count, seq_len,
                        bs=64):
  """Sequential layout for all (b, n, row block); lists of Python ints.

  Returns:
    dict (b, n, m) -> (window starts, columns).
  """
  b, n = vertical_count.shape
  out = {}
  for bi in range(b):
    for h in range(n):
      verts = vertical[bi, h, : vertical_count[bi, h]]
      slashes = slash[bi, h, : slash_count[bi, h]]
      for m in range(-(-seq_len // bs)):
        start = m * bs
        end = min(start + bs, seq_len)
        out[bi, h, m] = merge_row_block(verts, slashes, start, end, bs)
  return out


def vs_exact_mask(vertical_sets, slash_sets, b, n, t):
  """The exact causal Vertical-Slash mask [B, N, T, T] from line sets."""
  rows = np.arange(t)[:, None]
  cols = np.arange(t)[None, :]
  mask = np.zeros((b, n, t, t), bool)
  for bi in range(b):
    for h in range(n):
      v = np.isin(cols, vertical_sets[bi, h])
      s = np.isin(rows - cols, slash_sets[bi, h])
      mask[bi, h] = (v | s) & (cols <= rows)
  return mask


def bs_reference(q, k, top_k, block=64, active=None):
  """Block-Sparse selection per (b, n, m) and the pooled block scores.

  Returns:
    dict (b, n) -> (list over row blocks of ascending block-id arrays,
    score matrix [Tb, Sb] float64 with -inf above the block diagonal).
  """
  b, t, n, d = q.shape
  g = n // k.shape[2]
  nb = -(-t // block)
  ks, on = _per_head(top_k, n), _active(active, n)

  def pool(x):
    padded = np.zeros((nb * block, d))
    padded[:t] = x
    return padded.reshape(nb, block, d).sum(1) / block  # zeros count

  out = {}
  for bi in range(b):
    for h in range(n):
      qp = pool(q[bi, :, h].astype(np.float64))
      kp = pool(k[bi, :, h // g].astype(np.float64))
      scores = qp @ kp.T  # [Tb, Sb], no scaling
      scores[np.triu_indices(nb, 1)] = -np.inf
      budget = min(ks[h], nb) if on[h] else 0
      rows = []
      for m in range(nb):
        count = min(m + 1, budget)
        rows.append(np.sort(_top(scores[m, : m + 1], count)))
      out[bi, h] = (rows, scores)
  return out
