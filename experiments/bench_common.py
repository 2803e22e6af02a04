"""Shared pieces of the kernel benchmark and the GPU checks.

Timing (ahead-of-time compile apart from the timed runs), environment facts
for result files, computed-area / FLOP counting, row-sampled reference
checks, generators of clustered sparse layouts (realistic layouts without
an estimate) and the JSON + markdown result writer.
"""

import json
import math
import os
import platform
import shlex
import statistics
import subprocess
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from experiments import config
from pallas_kernels.layouts import (
    AShapeLayout,
    BlockSparseLayout,
    VerticalSlashLayout,
)
from pallas_kernels.reference import masked_attention_reference


parse_cli = config.parse_cli


# ------------------------------------------------------------ environment


def git_sha() -> str:
  """The checkout's commit (+ '-dirty'), or $GIT_SHA, or 'unknown'."""
  if os.environ.get("GIT_SHA"):
    return os.environ["GIT_SHA"]
  try:
    sha = subprocess.run(
        ["git", "rev-parse", "HEAD"], capture_output=True, text=True,
        check=True, timeout=10,
    ).stdout.strip()
    dirty = subprocess.run(
        ["git", "status", "--porcelain"], capture_output=True, text=True,
        check=True, timeout=10,
    ).stdout.strip()
    return sha + ("-dirty" if dirty else "")
  except (OSError, subprocess.SubprocessError):
    return "unknown"


def environment() -> dict:
  dev = jax.devices()[0]
  return dict(
      device=dev.device_kind,
      platform=dev.platform,
      jax=jax.__version__,
      jaxlib=jax.lib.__version__ if hasattr(jax.lib, "__version__") else "",
      python=platform.python_version(),
      git_sha=git_sha(),
      command=" ".join(shlex.quote(a) for a in [
          os.path.relpath(sys.argv[0]) if sys.argv else ""] + sys.argv[1:]),
      date=time.strftime("%Y-%m-%d %H:%M:%S %Z"),
  )


# ----------------------------------------------------------------- timing


def block(x):
  return jax.tree_util.tree_map(
      lambda a: a.block_until_ready() if hasattr(a, "block_until_ready")
      else a, x,
  )


def time_jitted(fn, args, *, warmup: int = 1, min_repeats: int = 3,
                max_repeats: int = 10, budget_s: float = 10.0,
                keep_output: bool = False) -> dict:
  """Compiles `jax.jit(fn)` ahead of time, warms up, times repeats.

  Returns:
    dict(compile_s, median_ms, min_ms, max_ms, repeats, times_ms, output):
    compile time is lower+compile (separate from runs); the number of timed
    repeats fits `budget_s` after the warm-up estimate, within [min, max];
    `output` is the last result if `keep_output`, else None.
  """
  t0 = time.perf_counter()
  compiled = jax.jit(fn).lower(*args).compile()
  compile_s = time.perf_counter() - t0
  est = None
  out = None
  for _ in range(max(warmup, 1)):
    out = None
    t0 = time.perf_counter()
    out = block(compiled(*args))
    est = time.perf_counter() - t0
  if est >= budget_s:
    # One run already exceeds the budget (e.g. dense attention at 1M): the
    # first run after compilation is the measurement.
    return dict(compile_s=compile_s, median_ms=est * 1e3, min_ms=est * 1e3,
                max_ms=est * 1e3, repeats=1, times_ms=[est * 1e3],
                output=out if keep_output else None)
  reps = int(min(max_repeats, max(min_repeats, budget_s // max(est, 1e-6))))
  times = []
  out = None
  for _ in range(reps):
    out = None  # free the previous result before the next run
    t0 = time.perf_counter()
    out = block(compiled(*args))
    times.append((time.perf_counter() - t0) * 1e3)
  return dict(
      compile_s=compile_s, median_ms=statistics.median(times),
      min_ms=min(times), max_ms=max(times), repeats=reps, times_ms=times,
      output=out if keep_output else None,
  )


def time_with(cfg, fn, args, keep_output: bool = False) -> dict:
  """`time_jitted` with a benchmark config's warmup / min_repeats /
  max_repeats / budget_s fields."""
  return time_jitted(fn, args, warmup=cfg.warmup,
                     min_repeats=cfg.min_repeats,
                     max_repeats=cfg.max_repeats, budget_s=cfg.budget_s,
                     keep_output=keep_output)


# ---------------------------------------------------------------- inputs


def gaussian_qkv(key, b: int, t: int, n: int, kv: int, d: int, dtype):
  """Standard-normal q [B, T, N, D], k / v [B, T, K, D]."""
  kq, kk, kv_ = jax.random.split(key, 3)
  return (jax.random.normal(kq, (b, t, n, d), dtype),
          jax.random.normal(kk, (b, t, kv, d), dtype),
          jax.random.normal(kv_, (b, t, kv, d), dtype))


# ------------------------------------------------------- area and FLOPs


def causal_pairs(t: int) -> int:
  return t * (t + 1) // 2


def attention_flops(pairs: float, d: int) -> float:
  """4 * D FLOPs per computed (query, key) pair: QK^T and PV, 2 each."""
  return 4.0 * d * pairs


def vs_tile_pairs(layout: VerticalSlashLayout) -> float:
  """q-k pairs in the tiles a VS kernel computes: bs x bs per window plus
  bs per gathered column, summed over batch, heads and row blocks."""
  bs = layout.block_size
  windows = float(jnp.sum(layout.block_count, dtype=jnp.float32))
  columns = float(jnp.sum(layout.column_count, dtype=jnp.float32))
  return windows * bs * bs + columns * bs


def bs_tile_pairs(layout: BlockSparseLayout) -> float:
  bs = layout.block_size
  return float(jnp.sum(layout.block_count, dtype=jnp.float32)) * bs * bs


def a_shape_tile_pairs(layout: AShapeLayout, t: int, b: int, block_q: int,
                       block_k: int) -> float:
  """q-k pairs in the tiles the A-shape kernel visits (its loop bounds)."""
  r0 = np.arange(0, t, block_q, dtype=np.int64)  # [Q]
  r_end = np.minimum(r0 + block_q, t)
  total = 0.0
  for n_init, n_local in zip(np.asarray(layout.n_init),
                             np.asarray(layout.n_local)):
    n_init, n_local = int(n_init), int(n_local)
    sink_end = np.maximum(np.minimum(n_init, r_end - n_local), 0)
    sink_tiles = -(-sink_end // block_k)
    lo = np.maximum(r0 + 1 - n_local, 0) // block_k
    hi = np.where(n_local > 0, -(-r_end // block_k), lo)
    total += float(np.sum(sink_tiles + hi - lo)) * block_q * block_k
  return total * b


# ------------------------------------------- row-sampled reference checks


def vs_rows_mask(layout: VerticalSlashLayout, rows: np.ndarray, t: int,
                 heads: slice = slice(None)):
  """[B, n, R, S] bool: the VS kernel's key set for the given query rows of
  the heads `heads` (rows within one row block share their key set)."""
  bs = layout.block_size
  blocks, inverse = np.unique(rows // bs, return_inverse=True)
  m = jnp.asarray(blocks)
  cnt = layout.block_count[:, heads][:, :, m]  # [B, n, Rb]
  off = layout.block_offset[:, heads][:, :, m]  # [B, n, Rb, NS]
  ccnt = layout.column_count[:, heads][:, :, m]
  cidx = layout.column_index[:, heads][:, :, m]  # [B, n, Rb, NV]
  ns, nv = off.shape[-1], cidx.shape[-1]

  def one(count, offsets, col_count, col_index):
    valid = jnp.arange(ns) < count
    starts = jnp.where(valid, offsets, t)
    ends = jnp.where(valid, jnp.minimum(offsets + bs, t), t)
    delta = jnp.zeros((t + 1,), jnp.int32)
    delta = delta.at[starts].add(1).at[ends].add(-1)
    win = jnp.cumsum(delta)[:t] > 0
    vcol = jnp.arange(nv) < col_count
    colm = jnp.zeros((t,), bool).at[jnp.where(vcol, col_index, t)].set(
        True, mode="drop")
    return win | colm  # [S]

  keep = jax.vmap(jax.vmap(jax.vmap(one)))(cnt, off, ccnt, cidx)
  keep = keep[:, :, jnp.asarray(inverse)]  # [B, n, R, S]
  causal = jnp.arange(t)[None, :] <= jnp.asarray(rows)[:, None]
  return keep & causal[None, None]


def bs_rows_mask(layout: BlockSparseLayout, rows: np.ndarray, t: int,
                 heads: slice = slice(None)):
  """[B, n, R, S] bool: the Block-Sparse kernel's key set for `rows`."""
  bs = layout.block_size
  m = jnp.asarray(rows // bs)
  cnt = layout.block_count[:, heads][:, :, m]
  idx = layout.block_index[:, heads][:, :, m]
  kb = idx.shape[-1]
  sb = -(-t // bs)

  def one(count, index):
    valid = jnp.arange(kb) < count
    return jnp.zeros((sb,), bool).at[jnp.where(valid, index, sb)].set(
        True, mode="drop")

  chosen = jax.vmap(jax.vmap(jax.vmap(one)))(cnt, idx)  # [B, n, R, Sb]
  keep = chosen[..., jnp.arange(t) // bs]
  causal = jnp.arange(t)[None, :] <= jnp.asarray(rows)[:, None]
  return keep & causal[None, None]


def a_shape_rows_mask(layout: AShapeLayout, rows: np.ndarray, t: int,
                      heads: slice = slice(None)):
  """[1, n, R, S] bool: the A-shape key set for `rows`."""
  r = jnp.asarray(rows)[:, None]
  c = jnp.arange(t)[None, :]
  n_init = layout.n_init[heads][:, None, None]
  n_local = layout.n_local[heads][:, None, None]
  keep = (c[None] < n_init) | (r[None] - c[None] < n_local)
  return (keep & (c <= r)[None])[None]


def causal_rows_mask(rows: np.ndarray, t: int, heads: slice = slice(None)):
  del heads
  return (jnp.arange(t)[None, :] <= jnp.asarray(rows)[:, None])[None, None]


def rows_relative_error(out, q, k, v, rows, mask_fn, heads_per_chunk=8):
  """||out - ref|| / ||ref|| over the given query rows (f32 reference).

  The reference runs in head chunks so that [B, heads, R, S] logits fit;
  `mask_fn(heads: slice)` gives the [B or 1, heads, R, S] key set.
  Returns (relative error, max abs error, all outputs finite).
  """
  n = q.shape[2]
  g = n // k.shape[2]
  heads_per_chunk = max(g, (heads_per_chunk // g) * g)
  rows_j = jnp.asarray(rows)
  num = den = 0.0
  max_abs = 0.0
  for h0 in range(0, n, heads_per_chunk):
    h1 = min(n, h0 + heads_per_chunk)
    qs = q[:, rows_j, h0:h1].astype(jnp.float32)
    ks = k[:, :, h0 // g:(h1 - 1) // g + 1].astype(jnp.float32)
    vs = v[:, :, h0 // g:(h1 - 1) // g + 1].astype(jnp.float32)
    ref = masked_attention_reference(qs, ks, vs, mask_fn(slice(h0, h1)))
    got = out[:, rows_j, h0:h1].astype(jnp.float32)
    num += float(jnp.sum((got - ref) ** 2))
    den += float(jnp.sum(ref**2))
    max_abs = max(max_abs, float(jnp.max(jnp.abs(got - ref))))
  finite = bool(jnp.all(jnp.isfinite(out.astype(jnp.float32))))
  return math.sqrt(num / max(den, 1e-30)), max_abs, finite


# ------------------------------------------------ fallback layout builders


def _clustered_lines(key, b, n, t, n_vertical, n_slash, local_scale, n_far,
                     far_spread):
  """Unsorted slash offsets [B, N, NS] and verticals [B, N, NV] (see
  `clustered_vs_layout`); both may hold duplicates."""
  kn, kf, kc, kv, kw, kx = jax.random.split(key, 6)
  shape = (b, n, n_slash)
  near = 100 + jnp.floor(jax.random.exponential(kn, shape) * local_scale)
  lo, hi = math.log(4096), math.log(max(t // 2, 8192))
  centres = jnp.exp(jax.random.uniform(kf, (b, n, n_far), minval=lo,
                                       maxval=hi))
  pick = jax.random.randint(kc, shape, 0, n_far)
  far = jnp.take_along_axis(centres, pick, axis=-1) + jax.random.randint(
      kw, shape, -far_spread, far_spread)
  is_far = jax.random.uniform(kx, shape) < 0.1
  offs = jnp.where(is_far, far, near).astype(jnp.int32)
  offs = jnp.where(jnp.arange(n_slash) < 100, jnp.arange(n_slash), offs)
  vert = jax.random.randint(kv, (b, n, n_vertical), 30, t)
  vert = jnp.where(jnp.arange(n_vertical) < 30, jnp.arange(n_vertical), vert)
  return jnp.clip(offs, 0, t - 1), vert


def clustered_vs_layout(
    key, b: int, n: int, t: int, n_vertical: int, n_slash: int, bs: int = 64,
    *, local_scale: float = 1500.0, n_far: int = 4, far_spread: int = 256,
) -> VerticalSlashLayout:
  """A realistic-looking Vertical-Slash layout without an estimate.

  Slash offsets: 0..99 always, most of the rest within a few thousand of the
  diagonal (exponential, scale `local_scale`), 10% in `n_far` far clusters
  (log-uniform centres, +-far_spread). Verticals: 0..29 plus random columns.
  In row block m (end e_m) slash o covers columns [e_m - o - bs, e_m - o),
  the same pattern in distance space for every row block. The slashes are
  merged (ascending offset) into disjoint bs-wide windows, a superset cover as
  in MInference's merge; verticals not inside a window and left of the row
  block become columns.
  """
  n_slash = min(n_slash, t)
  n_vertical = min(n_vertical, t)
  offs, vert = _clustered_lines(key, b, n, t, n_vertical, n_slash,
                                local_scale, n_far, far_spread)
  offs = jnp.sort(offs, axis=-1)  # [B, N, NS]

  # Windows in distance space: delta covers distances (delta, delta + bs].
  def merge(carry, o):  # o: [B, N], ascending along the scan
    end, count, deltas = carry
    fresh = o + bs > end  # not yet covered
    d = jnp.where(o >= end, o, end)  # new tile at o, or right after the last
    slot = jnp.where(fresh, count, n_slash)
    deltas = jax.vmap(jax.vmap(
        lambda row, s, v: row.at[s].set(v, mode="drop")))(deltas, slot, d)
    return (jnp.where(fresh, d + bs, end), count + fresh, deltas), None

  init = (jnp.full((b, n), -bs, jnp.int32), jnp.zeros((b, n), jnp.int32),
          jnp.full((b, n, n_slash), 1 << 30, jnp.int32))
  (_, _, delta), _ = jax.lax.scan(merge, init, jnp.moveaxis(offs, -1, 0))
  # Row block m: window j at e_m - bs - delta_j if that is >= 0. Ascending
  # starts = descending delta; the valid ones are delta <= e_m - bs.
  tb = -(-t // bs)
  e = jnp.minimum((jnp.arange(tb) + 1) * bs, t).astype(jnp.int32)  # [Tb]
  per_head = lambda f: jax.vmap(jax.vmap(f))
  n_ok = per_head(lambda dl: jnp.searchsorted(dl, e - bs, side="right"))(
      delta).astype(jnp.int32)  # [B, N, Tb]
  slots = jnp.arange(n_slash, dtype=jnp.int32)
  block_offset = per_head(lambda dl, ok: jax.vmap(
      lambda okm, em: jnp.where(
          slots < okm, em - bs - dl[jnp.maximum(okm - 1 - slots, 0)], 0)
  )(ok, e))(delta, n_ok)  # [B, N, Tb, NS]
  # Verticals: 30 sinks + distinct random columns, ascending.
  vert = jnp.sort(vert, axis=-1)
  dup = jnp.concatenate([jnp.zeros((b, n, 1), bool),
                         vert[..., 1:] == vert[..., :-1]], -1)
  vert = jnp.sort(jnp.where(dup, t, vert), axis=-1)  # duplicates dropped

  def columns(dl, ok, vt):  # one head: delta [NS], n_ok [Tb], vert [NV]
    def one_block(okm, em):
      dist = em - vt  # [NV]
      pos = jnp.searchsorted(dl, dist, side="left") - 1
      dpos = dl[jnp.maximum(pos, 0)]
      covered = (pos >= 0) & (pos < okm) & (dist <= dpos + bs)
      # em - bs <= the block's first row (equal except in a partial block).
      is_col = (vt < em - bs) & ~covered & (vt < t)
      slot = jnp.where(is_col, jnp.cumsum(is_col) - 1, n_vertical)
      idx = jnp.zeros((n_vertical,), jnp.int32).at[slot].set(vt, mode="drop")
      return jnp.sum(is_col, dtype=jnp.int32), idx
    return jax.vmap(one_block)(ok, e)

  column_count, column_index = per_head(columns)(delta, n_ok, vert)
  return VerticalSlashLayout(
      block_count=n_ok, block_offset=block_offset.astype(jnp.int32),
      column_count=column_count, column_index=column_index, block_size=bs,
  )


def clustered_bs_layout(key, b: int, n: int, t: int, top_k: int,
                        bs: int = 64, n_local: int = 40) -> BlockSparseLayout:
  """Block 0, the `n_local` blocks up to the diagonal, the rest stratified
  random over the blocks in between (sorted, distinct); rows m < top_k dense.
  """
  tb = -(-t // bs)
  n_local = min(n_local, top_k - 1)
  n_mid = top_k - 1 - n_local
  m = jnp.arange(tb)[:, None]  # [Tb, 1]
  # Distinct sorted picks from blocks 1 .. span: 1 + i + (sorted extras).
  u = jnp.sort(jax.random.uniform(key, (b, n, tb, n_mid)), axis=-1)
  span = jnp.maximum(m - n_local - 1, n_mid)  # [Tb, 1]
  mid = 1 + jnp.arange(n_mid) + jnp.floor(u * (span - n_mid + 1) * 0.999)
  local = m - n_local + 1 + jnp.arange(n_local)  # [Tb, n_local]
  sparse = jnp.concatenate([
      jnp.zeros((b, n, tb, 1)), mid,
      jnp.broadcast_to(local, (b, n, tb, n_local)),
  ], -1)  # [B, N, Tb, KB]
  dense = jnp.minimum(jnp.arange(top_k)[None, :], m)  # [Tb, KB]
  index = jnp.where(m < top_k, dense, sparse)  # [B, N, Tb, KB]
  count = jnp.minimum(jnp.arange(tb) + 1, top_k)
  return BlockSparseLayout(
      block_count=jnp.broadcast_to(count, (b, n, tb)).astype(jnp.int32),
      block_index=index.astype(jnp.int32),
      block_size=bs,
  )


# ---------------------------------------------------------------- results


def write_results(out_dir: str, name: str, meta: dict, rows: list[dict],
                  columns: list[tuple[str, str]]) -> tuple[Path, Path]:
  """Writes `<name>.json` (meta + rows) and `<name>.md` (a table)."""
  out = Path(out_dir)
  out.mkdir(parents=True, exist_ok=True)
  json_path = out / f"{name}.json"
  json_path.write_text(json.dumps(dict(meta=meta, rows=rows), indent=1,
                                  default=str))
  md = [f"# {name}", ""]
  md += [f"- {k}: `{v}`" for k, v in meta.items() if not isinstance(v, dict)]
  md += ["", "| " + " | ".join(h for _, h in columns) + " |",
         "|" + "---|" * len(columns)]
  for r in rows:
    cells = []
    for key, _ in columns:
      v = r.get(key, "")
      v = "" if v is None else v
      cells.append(f"{v:.4g}" if isinstance(v, float) else str(v))
    md.append("| " + " | ".join(cells) + " |")
  md_path = out / f"{name}.md"
  md_path.write_text("\n".join(md) + "\n")
  return json_path, md_path
