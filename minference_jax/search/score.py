"""Streamed scoring of candidate key sets against dense attention.

For every (sample, candidate, head) at once: the attention recall (softmax
mass of dense attention on the key set, MInference's public search metric)
and the relative error of the attention output against dense attention,
V included (the paper's objective, Jiang et al., 2024, Alg. 1), without a
T x T matrix: query tiles stream over key chunks up to the diagonal with a
running maximum (online softmax, Milakov & Gimelshein 2018) shared by dense
attention and every candidate. The candidate sums use the dense maximum:
their keys are a subset, so every term is <= 1.
"""

import dataclasses
import functools

import jax
import jax.numpy as jnp
from jaxtyping import Array, Float

from minference_jax.search.keysets import KeySets
from minference_jax.search.space import TILE

PRECISIONS = {"highest": jax.lax.Precision.HIGHEST,
              "default": jax.lax.Precision.DEFAULT}


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class Scores:
  """Per (sample, candidate, head) quality of a key set.

  Fields:
    recall:       Float[B, C, N], mean over scored rows of the dense softmax
                  mass on the key set.
    output_error: Float[B, C, N], ||o_c - o|| / ||o|| over scored rows and
                  head dims (o_c: attention restricted to the key set); NaN
                  when not computed.
    covered:      Float[B, C, N], causal (query, key) pairs in the key set
                  over all rows (density = covered / (T (T + 1) / 2)).
  """

  recall: Float[Array, "B C N"]
  output_error: Float[Array, "B C N"]
  covered: Float[Array, "B C N"]


def _window_cover(starts, counts, n_keys: int):
  """[..., W] window starts (valid: slot < counts [...]) -> [..., n_keys]
  bool cover of the 64-wide windows (a +1/-1 scatter, then a prefix sum)."""
  lead = starts.shape[:-1]
  w = starts.shape[-1]
  flat = starts.reshape(-1, w)
  valid = (jnp.arange(w) < counts.reshape(-1, 1)).astype(jnp.int32)
  rows = jax.lax.broadcasted_iota(jnp.int32, flat.shape, 0)
  diff = jnp.zeros((flat.shape[0], n_keys + TILE), jnp.int32)
  diff = diff.at[rows, flat].add(valid).at[rows, flat + TILE].add(-valid)
  cover = jnp.cumsum(diff, axis=-1)[:, :n_keys] > 0
  return cover.reshape(*lead, n_keys)


def _tile_key_mask(keysets: KeySets, m0, r: int, n_keys: int):
  """Row-block key masks [B, C, N, R, n_keys] of query blocks m0..m0+R-1
  (everything but the A-shape window, which depends on the row)."""
  ws = jax.lax.dynamic_slice_in_dim(keysets.window_start, m0, r, axis=3)
  wc = jax.lax.dynamic_slice_in_dim(keysets.window_count, m0, r, axis=3)
  mask = _window_cover(ws, wc, n_keys)  # [B, C, N, R, S]
  t = keysets.vertical.shape[-1]
  vertical = jnp.pad(keysets.vertical, ((0, 0),) * 3 + ((0, n_keys - t),))
  mask |= vertical[:, :, :, None, :]
  blocks = jax.lax.dynamic_slice_in_dim(keysets.block, m0, r, axis=3)
  key_block = jnp.minimum(jnp.arange(n_keys) // TILE, blocks.shape[-1] - 1)
  mask |= jnp.take(blocks, key_block, axis=-1)  # [B, C, N, R, S]
  sink = jnp.arange(n_keys) < keysets.n_init[..., None]  # [C, N, S]
  return mask | sink[None, :, :, None, :]


@functools.partial(
    jax.jit,
    static_argnames=("output", "row_blocks", "key_chunk", "precision",
                     "first_row"))
def score_keysets(
    q: Float[Array, "B T N D"],
    k: Float[Array, "B T K D"],
    v: Float[Array, "B T K D"] | None,
    keysets: KeySets,
    *,
    output: bool = True,
    row_blocks: int = 1,
    key_chunk: int = 512,
    precision: str = "highest",
    first_row: int = 0,
) -> tuple[Scores, Float[Array, "B T N D"]]:
  """Scores every key set of `keysets` against dense causal attention.

  Args:
    q: [B, T, N, D] queries; k, v: [B, T, K, D] (query head n reads KV head
      n // G); v None: recall and covered pairs only (needs output=False;
      no dense output either).
    keysets: KeySets for the same B, T, N with C candidates.
    output: also compute the output error (one extra [.., 64 R, chunk] x
      [chunk, D] product per candidate and step).
    row_blocks: R, 64-row query blocks per step.
    key_chunk: keys per inner step (a multiple of 64).
    precision: "highest" (f32 products) or "default" (the platform's fast
      f32 matmul, e.g. TF32 on NVIDIA GPUs) for the q k^T and p v products.
    first_row: rows < first_row are left out of recall and output error
      (MInference's public search skips its first 2500 rows).

  Returns:
    (Scores, dense attention output [B, T, N, D] in q's dtype, or None
    without v).

  Raises:
    ValueError: output=True without v.
  """
  if v is None and output:
    raise ValueError("the output error needs v (pass output=False)")
  b, t, n, d = q.shape
  kv = k.shape[2]
  g = n // kv
  c = keysets.n_init.shape[0]
  rq = TILE * row_blocks
  n_tiles = -(-t // rq)
  n_keys = -(-t // key_chunk) * key_chunk
  prec = PRECISIONS[precision]
  # Layouts with the dot products' batch axes (B, K) in front, so the
  # products need no transposes: q [tiles, B, K, G * Rq, D], k/v [B, K, S, D].
  qf = jnp.pad(q.astype(jnp.float32) * d**-0.5,
               ((0, 0), (0, n_tiles * rq - t), (0, 0), (0, 0)))
  qf = qf.reshape(b, n_tiles, rq, kv, g, d).transpose(1, 0, 3, 4, 2, 5)
  qf = qf.reshape(n_tiles, b, kv, g * rq, d)
  pad_k = ((0, 0), (0, n_keys - t), (0, 0), (0, 0))
  kf = jnp.pad(k.astype(jnp.float32), pad_k).transpose(0, 2, 1, 3)
  vf = (None if v is None
        else jnp.pad(v.astype(jnp.float32), pad_k).transpose(0, 2, 1, 3))
  # Keysets cover ceil(T / 64) query blocks; pad them to whole tiles.
  tb_pad = n_tiles * row_blocks - keysets.window_count.shape[-1]
  pad_rows = ((0, 0),) * 3 + ((0, tb_pad),)
  keysets = dataclasses.replace(
      keysets,
      window_start=jnp.pad(keysets.window_start, pad_rows + ((0, 0),)),
      window_count=jnp.pad(keysets.window_count, pad_rows),
      block=jnp.pad(keysets.block, pad_rows + ((0, 0),)),
  )
  # Candidate axes as [K, C, G]: query head n = k * G + g.
  n_local = keysets.n_local.reshape(c, kv, g).transpose(1, 0, 2)

  def one_tile(i):
    q_tile = qf[i]  # [B, K, G * Rq, D]
    rows = i * rq + jnp.arange(rq)  # [Rq]
    key_mask = _tile_key_mask(keysets, i * row_blocks, row_blocks, n_keys)
    key_mask = key_mask.reshape(b, c, kv, g, row_blocks, n_keys).transpose(
        0, 2, 1, 3, 4, 5)  # [B, K, C, G, R, S']
    n_chunks = (jnp.minimum((i + 1) * rq, t) + key_chunk - 1) // key_chunk

    def step(j, carry):
      m, l, acc, lc, accc, cov = carry
      start = j * key_chunk
      kc = jax.lax.dynamic_slice_in_dim(kf, start, key_chunk, axis=2)
      cols = start + jnp.arange(key_chunk)  # [S]
      causal = (cols[None, :] <= rows[:, None]) & (cols[None, :] < t)
      logits = jnp.einsum("bkqd,bksd->bkqs", q_tile, kc, precision=prec)
      logits = logits.reshape(b, kv, g, rq, key_chunk)
      m_new = jnp.maximum(
          m, jnp.max(jnp.where(causal, logits, -jnp.inf), axis=-1))
      alpha = jnp.exp(m - m_new)  # [B, K, G, Rq]
      p = jnp.where(causal, jnp.exp(logits - m_new[..., None]), 0.0)
      l = l * alpha + jnp.sum(p, axis=-1)
      if vf is not None:
        vc = jax.lax.dynamic_slice_in_dim(vf, start, key_chunk, axis=2)
        pv = jnp.einsum("bkqs,bksd->bkqd", p.reshape(b, kv, g * rq,
                                                     key_chunk), vc,
                        precision=prec)
        acc = acc * alpha[..., None] + pv.reshape(b, kv, g, rq, d)
      # Candidate masks of this chunk, rows grouped by query block:
      # [B, K, C, G, R, 64, S].
      km = jax.lax.dynamic_slice_in_dim(key_mask, start, key_chunk, axis=-1)
      rel = (rows[:, None] - cols[None, :]).reshape(row_blocks, TILE,
                                                     key_chunk)
      local = rel < n_local[..., None, None, None]  # [K, C, G, R, 64, S]
      mask = ((km[..., None, :] | local[None])
              & causal.reshape(row_blocks, TILE, key_chunk))
      mask = mask.reshape(b, kv, c, g, rq, key_chunk)
      pc = jnp.where(mask, p[:, :, None], 0.0)  # [B, K, C, G, Rq, S]
      a_c = alpha[:, :, None]  # [B, K, 1, G, Rq]
      lc = lc * a_c + jnp.sum(pc, axis=-1)
      if output:
        pcv = jnp.einsum("bkqs,bksd->bkqd", pc.reshape(
            b, kv, c * g * rq, key_chunk), vc, precision=prec)
        accc = accc * a_c[..., None] + pcv.reshape(b, kv, c, g, rq, d)
      row_ok = (rows < t)[:, None]
      cov = cov + jnp.sum(mask & row_ok, axis=(-2, -1), dtype=jnp.int32)
      return m_new, l, acc, lc, accc, cov

    init = (
        jnp.full((b, kv, g, rq), -jnp.inf, jnp.float32),
        jnp.zeros((b, kv, g, rq), jnp.float32),
        jnp.zeros((b, kv, g, rq, d) if vf is not None else (1,),
                  jnp.float32),
        jnp.zeros((b, kv, c, g, rq), jnp.float32),
        jnp.zeros((b, kv, c, g, rq, d) if output else (1,), jnp.float32),
        jnp.zeros((b, kv, c, g), jnp.int32),
    )
    _, l, acc, lc, accc, cov = jax.lax.fori_loop(0, n_chunks, step, init)
    scored = ((rows < t) & (rows >= first_row)).astype(jnp.float32)  # [Rq]
    recall = jnp.sum(lc / l[:, :, None] * scored, axis=-1)  # [B, K, C, G]
    if vf is None:
      zeros = jnp.zeros((b, kv, c, g), jnp.float32)
      return recall, zeros, zeros[:, :, 0], cov.astype(jnp.float32), None
    out = acc / l[..., None]  # [B, K, G, Rq, D]
    if output:
      out_c = accc / jnp.where(lc > 0, lc, 1.0)[..., None]
      err = jnp.sum(jnp.sum((out_c - out[:, :, None]) ** 2, axis=-1)
                    * scored, axis=-1)  # [B, K, C, G]
    else:
      err = jnp.zeros((b, kv, c, g), jnp.float32)
    ref = jnp.sum(jnp.sum(out**2, axis=-1) * scored, axis=-1)  # [B, K, G]
    return recall, err, ref, cov.astype(jnp.float32), out

  recall, err, ref, cov, out = jax.lax.map(one_tile, jnp.arange(n_tiles))

  def per_head(x):  # [tiles, B, K, C, G] -> [B, C, N]
    return jnp.sum(x, axis=0).transpose(0, 2, 1, 3).reshape(b, c, n)

  n_scored = max(t - first_row, 1)
  ref_sum = jnp.sum(ref, axis=0).reshape(b, 1, n)
  err_sum = per_head(err)
  error = jnp.where(ref_sum > 0, jnp.sqrt(err_sum / jnp.where(
      ref_sum > 0, ref_sum, 1.0)), jnp.where(err_sum > 0, jnp.inf, 0.0))
  scores = Scores(
      recall=per_head(recall) / n_scored,
      output_error=error if output else jnp.full_like(error, jnp.nan),
      covered=per_head(cov),
  )
  if out is None:
    return scores, None
  # [tiles, B, K, G, Rq, D] -> [B, T, N, D]
  out = out.transpose(1, 0, 4, 2, 3, 5).reshape(b, n_tiles * rq, n, d)
  return scores, out[:, :t].astype(q.dtype)


@functools.partial(jax.jit, static_argnames=("seq_len",))
def tile_share(keysets: KeySets, seq_len: int) -> Float[Array, "B C N Tb Tb"]:
  """Share of each 64x64 tile's causal (query, key) pairs in the key sets.

  What a picture of a pattern over a block-level attention map shows: 1
  where the kernels compute the whole tile, 0 where they skip it, between
  for partly computed tiles (Vertical-Slash columns, A-shape window edges,
  the diagonal). Query blocks one at a time (memory [B, C, N, 64, T]).

  Args:
    keysets: KeySets of B samples, C candidates, N heads at length T.
    seq_len: static T.

  Returns:
    [B, C, N, Tb, Tb] f32 in [0, 1]; 0 above the diagonal.
  """
  tb = -(-seq_len // TILE)
  n_keys = tb * TILE
  cols = jnp.arange(n_keys)

  def one_block(m):
    mask = _tile_key_mask(keysets, m, 1, n_keys)[:, :, :, 0]  # [B, C, N, S]
    rows = m * TILE + jnp.arange(TILE)  # [64]
    rel = rows[:, None] - cols[None, :]  # [64, S]
    causal = (rel >= 0) & (rows[:, None] < seq_len)  # [64, S]
    local = rel < keysets.n_local[..., None, None]  # [C, N, 64, S]
    chosen = (mask[:, :, :, None, :] | local[None]) & causal
    count = jnp.sum(chosen.reshape(*chosen.shape[:3], TILE, tb, TILE),
                    axis=(3, 5), dtype=jnp.int32)  # [B, C, N, Tb]
    total = jnp.sum(causal.reshape(TILE, tb, TILE), axis=(0, 2),
                    dtype=jnp.int32)  # [Tb]
    return count / jnp.maximum(total, 1)

  share = jax.lax.map(one_block, jnp.arange(tb))  # [Tb, B, C, N, Tb]
  return jnp.moveaxis(share, 0, 3)
