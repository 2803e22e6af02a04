"""Vertical-Slash online estimate: MInference 1.0's line scores and top-k.

MInference (Jiang et al., 2024), section 3.2 and appendix C.4.2 (reference
implementation `vertical_and_slash_kernel`): the softmax of the last
`last_q` queries against all keys; column sums rank the vertical lines,
diagonal sums the slash lines; the top budgets per head are kept. The
layouts the kernels read are built from these indices by
`index_vs_layout`.
"""

import dataclasses
import functools
from collections.abc import Sequence

import jax
import jax.numpy as jnp
from beartype import beartype
from jaxtyping import Array, Float, Int, jaxtyped

from minference_jax.index_checks import (
    check_counts_fit,
    check_int,
    check_prefill_qk,
    per_head_active,
    per_head_array,
    per_head_ints,
    vs_estimate_finite,
)
from minference_jax.patterns import (
    VS_FORCED_SLASH_OFFSETS,
    VS_LAST_Q,
    VS_MIN_SLASH,
    VS_MIN_VERTICAL,
)
from minference_jax.topk import top_sorted_positions
from minference_jax.types import DEFAULT_MASK_VALUE
from pallas_kernels.vs_estimate import vs_line_scores

_HIGHEST = jax.lax.Precision.HIGHEST


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class VerticalSlashIndices:
  """Per (batch, query head): the selected vertical and slash lines.

  Heads with different budgets share one structure padded to the layer's
  largest budget; entries past a count are padding (vertical: S - 1, slash:
  0, chosen so the arrays stay monotone) and must not be read as data.

  Fields:
    vertical:       Int[B, N, NV], key columns in [0, S), ascending.
    vertical_count: Int[B, N], values in [0, NV].
    slash:          Int[B, N, NS], diagonal offsets (row - column) in
                    [0, S), strictly descending.
    slash_count:    Int[B, N], values in [0, NS].
    seq_len:        static S the lines were selected for (None when
                    unknown, e.g. indices built by hand); the layout
                    builders refuse another seq_len.
  """

  vertical: Int[Array, "B N NV"]
  vertical_count: Int[Array, "B N"]
  slash: Int[Array, "B N NS"]
  slash_count: Int[Array, "B N"]
  seq_len: int | None = dataclasses.field(
      default=None, metadata=dict(static=True))


def _diagonal_sums(probs: jax.Array) -> jax.Array:
  """Sums a [..., L, S] matrix of the last L rows along its diagonals.

  Row i sits at absolute position S - L + i. Entry o of the result is
  sum_i probs[i, S - L + i - o] (terms with a negative column are 0): the
  mass on the slash line with offset o = row - column.

  A skew by reshape instead of a loop: reverse the columns, pad each row with
  L zeros, flatten and re-read with a row stride one shorter, which shifts row
  i right by i; column L - 1 + o then holds the offset-o element of every row.
  Reverse, pad, reshapes and slices are index arithmetic that XLA fuses into
  the reduction, so an elementwise `probs` is not materialised.
  """
  *lead, l, s = probs.shape
  rev = probs[..., ::-1]  # [..., L, S]; rev[i, r] = probs[i, S - 1 - r]
  pad = [(0, 0)] * len(lead) + [(0, 0), (0, l)]
  padded = jnp.pad(rev, pad)  # [..., L, S + L]
  flat = padded.reshape(*lead, l * (s + l))[..., : l * (s + l - 1)]
  skew = flat.reshape(*lead, l, s + l - 1)  # skew[i, c] = padded[i, c - i]
  return skew[..., l - 1 : l - 1 + s].sum(axis=-2)  # [..., S]


def _masked_f32(logits: jax.Array, visible: jax.Array) -> jax.Array:
  return jnp.where(visible, logits.astype(jnp.float32), DEFAULT_MASK_VALUE)


def _softmax_stats(logits, visible) -> tuple[jax.Array, jax.Array]:
  """Row max m and sum z = sum_j exp(l_j - m) of [..., L, S] logits.

  One variadic reduction carrying (max, rescaled sum) pairs (the online
  softmax of Milakov & Gimelshein 2018), so the logits are read once instead
  of twice. `visible` [L, S] is the causal mask. Returns f32 [..., L].
  """
  logits = _masked_f32(logits, visible)

  def combine(a, b):
    (m_a, z_a), (m_b, z_b) = a, b
    m = jnp.maximum(m_a, m_b)
    return m, z_a * jnp.exp(m_a - m) + z_b * jnp.exp(m_b - m)

  init = (jnp.float32(DEFAULT_MASK_VALUE), jnp.float32(0.0))
  return jax.lax.reduce(
      (logits, jnp.ones_like(logits)), init, combine, (logits.ndim - 1,)
  )


def _line_scores(logits, visible, m, z):
  """Vertical (column) and slash (diagonal) sums of softmax(logits).

  Args:
    logits: [..., L, S] logits of the last L query rows.
    visible: [L, S] causal mask.
    m: [..., L] row maxima; z: [..., L] row sums of exp(logits - m).

  Returns:
    vertical [..., S] (column sums) and slash [..., S] (`_diagonal_sums`),
    f32. The probabilities are an elementwise expression of the logits that
    both reductions recompute, so they are never stored.
  """
  probs = jnp.exp(_masked_f32(logits, visible) - m[..., None]) / z[..., None]
  return jnp.sum(probs, axis=-2), _diagonal_sums(probs)




def last_q_logits(q, k, last_q: int):
  """Logits of the last `last_q` queries against all keys, and their mask.

  In the input dtype, as MInference computes them (f32 inputs at HIGHEST
  precision); GQA through the einsum's K axis, K is never repeated.

  Returns:
    logits [B, N, L, S] (unmasked) and visible [L, S], the causal mask of
    the L x L corner (row i sits at absolute position S - L + i).
  """
  b, t, n, d = q.shape
  kv_heads = k.shape[2]
  q_last = q[:, t - last_q :].reshape(b, last_q, kv_heads, n // kv_heads, d)
  rows = t - last_q + jnp.arange(last_q)  # [L] absolute query positions
  visible = jnp.arange(t)[None, :] <= rows[:, None]  # [L, S]
  precision = (_HIGHEST if q.dtype == jnp.float32
               else jax.lax.Precision.DEFAULT)
  logits = jnp.einsum(
      "blkgd,bskd->bkgls", q_last, k, precision=precision,
      preferred_element_type=jnp.float32,
  ) * (d**-0.5)  # [B, K, G, L, S]
  return logits.astype(q.dtype).reshape(b, n, last_q, t), visible


def line_scores_xla(q, k, last_q: int):
  """Vertical and slash scores [B, N, S] f32 of the last `last_q` queries
  (nothing forced): the plain-JAX form, and the reference of the fused
  Pallas kernel `pallas_kernels.vs_estimate.vs_line_scores`."""
  logits, visible = last_q_logits(q, k, last_q)  # [B, N, L, S], [L, S]
  m, z = _softmax_stats(logits, visible)  # [B, N, L]
  return _line_scores(logits, visible, m, z)


# Largest last_q the fused Pallas scores take (its rows are one register tile).
PALLAS_SCORES_MAX_LAST_Q = 128


def _line_scores_with(scores: str, interpret: bool):
  if scores == "pallas":
    return functools.partial(vs_line_scores, interpret=interpret)
  return line_scores_xla


@functools.partial(
    jax.jit,
    static_argnames=("width_vertical", "width_slash", "last_q", "scores",
                     "interpret"),
)
def _vs_indices_jit(q, k, v_cnt, s_cnt, width_vertical, width_slash, last_q,
                    scores, interpret):
  t = q.shape[1]
  vertical, slash = _line_scores_with(scores, interpret)(
      q, k, last_q)  # [B, N, S] f32 each
  cols = jnp.arange(t)  # [S]
  vertical = jnp.where(cols < VS_MIN_VERTICAL, jnp.inf, vertical)
  slash = jnp.where(cols < VS_FORCED_SLASH_OFFSETS, jnp.inf, slash)
  # A head whose estimate read a NaN or inf gets no lines (counts 0, which
  # no finite estimate of an active head gives), never lines ranked by NaN.
  ok = vs_estimate_finite(q, k, last_q)  # [B, N]
  keep = lambda x, pad: jnp.where(ok[..., None], x, pad)  # noqa: E731
  return VerticalSlashIndices(
      vertical=keep(top_sorted_positions(vertical, v_cnt, width_vertical,
                                         descending=False), t - 1),
      vertical_count=jnp.where(ok, v_cnt, 0),
      slash=keep(top_sorted_positions(slash, s_cnt, width_slash,
                                      descending=True), 0),
      slash_count=jnp.where(ok, s_cnt, 0),
      seq_len=t,
  )


def vs_line_counts(n_vertical, n_slash, active, seq_len: int):
  """MInference's clamped per-head budgets: min(T, max(v, 30)) verticals and
  min(T, max(s, 50)) slashes for an active head, 0 for an inactive one.
  Works on ints (static) and on [N] arrays (traced) alike."""
  if isinstance(n_vertical, int):
    return ((min(seq_len, max(n_vertical, VS_MIN_VERTICAL)) if active else 0),
            (min(seq_len, max(n_slash, VS_MIN_SLASH)) if active else 0))
  return (jnp.where(active, jnp.clip(n_vertical, VS_MIN_VERTICAL, seq_len), 0),
          jnp.where(active, jnp.clip(n_slash, VS_MIN_SLASH, seq_len), 0))


@jaxtyped(typechecker=beartype)
def vertical_slash_indices(
    q: Float[Array, "B T N D"],
    k: Float[Array, "B S K D"],
    n_vertical: int | Sequence[int],
    n_slash: int | Sequence[int],
    last_q: int = VS_LAST_Q,
    *,
    active: Sequence[bool] | None = None,
    scores: str = "xla",
    interpret: bool = False,
) -> VerticalSlashIndices:
  """MInference's online Vertical-Slash estimate (exact semantics).

  Per query head n (reading KV head n // G, K is never repeated):
  1. Budgets are clamped: kv = min(T, max(n_vertical, 30)),
     ks = min(T, max(n_slash, 50)); L = min(last_q, T).
  2. P = softmax_f32(q[T - L:] k^T / sqrt(D)) with the causal mask on the
     L x L corner ([L, S]); the logits are rounded to the input dtype as in
     MInference (f32 inputs: f32 at HIGHEST precision), the softmax and
     the sums are f32. All heads at once: peak memory [B, N, L, S].
  3. Vertical score of column j = sum_i P[i, j]; columns 0..29 are forced.
     Slash score of offset o = sum_i P[i, T - L + i - o]; offsets 0..99 are
     forced. Keep the top kv columns / ks offsets.
  Ties go to the smaller column / offset (so a slash budget below 100 keeps
  offsets 0..ks-1 of the forced ones, and offset 0 is always kept).

  Non-finite input: a head whose estimate reads a NaN or inf (in its last
  L query rows, or any key of its KV head) gets counts 0 (a finite
  estimate gives an active head at least min(T, 30) columns), so no layout
  is built from NaN scores; `MInferenceAttention` makes that head's output
  NaN.

  Args:
    q: [B, T, N, D] queries (RoPE applied).
    k: [B, S, K, D] keys, S == T (full prefill), N % K == 0.
    n_vertical: vertical budget, an int or a static tuple with one int per
      query head.
    n_slash: slash budget, an int or a static per-head tuple.
    last_q: number of trailing queries used for the estimate.
    active: static per-head tuple of bools; inactive heads get counts 0.
    scores: how step 2-3's scores are computed: "xla" (`line_scores_xla`,
      peak memory [B, N, L, S]) or "pallas" (the fused GPU kernel
      `pallas_kernels.vs_estimate.vs_line_scores`, K read twice, no
      [L, S] array; same scores up to f32 summation order). "pallas" with
      last_q > PALLAS_SCORES_MAX_LAST_Q uses "xla".
    interpret: run the "pallas" scores in interpret mode (CPU tests).

  Returns:
    VerticalSlashIndices with NV / NS = the largest clamped budget over the
    active heads (at least 1) and seq_len = T.

  Raises:
    TypeError: non-int budgets or last_q, non-bool `active`, non-float q/k.
    ValueError: inconsistent shapes, T != S, negative budgets, per-head tuples
      of the wrong length, an unknown `scores`.
  """
  _, t, n, _, _ = check_prefill_qk(q, k)
  if scores not in ("xla", "pallas"):
    raise ValueError(f"scores must be 'xla' or 'pallas', got {scores!r}")
  v_budget = per_head_ints("n_vertical", n_vertical, n)
  s_budget = per_head_ints("n_slash", n_slash, n)
  last_q = min(check_int("last_q", last_q, 1), t)
  on = per_head_active(active, n)
  counts = [vs_line_counts(v, s_, a, t)
            for v, s_, a in zip(v_budget, s_budget, on)]
  v_counts, s_counts = zip(*counts)
  if last_q > PALLAS_SCORES_MAX_LAST_Q:
    scores = "xla"
  return _vs_indices_jit(
      q, k, jnp.asarray(v_counts, jnp.int32), jnp.asarray(s_counts, jnp.int32),
      width_vertical=max(max(v_counts), 1), width_slash=max(max(s_counts), 1),
      last_q=last_q, scores=scores,
      interpret=bool(interpret) and scores == "pallas",
  )


def vertical_slash_indices_traced(
    q: Float[Array, "B T N D"],
    k: Float[Array, "B S K D"],
    n_vertical: Int[Array, "N"],
    n_slash: Int[Array, "N"],
    active: jax.Array,
    *,
    max_vertical: int,
    max_slash: int,
    last_q: int = VS_LAST_Q,
    scores: str = "xla",
    interpret: bool = False,
) -> VerticalSlashIndices:
  """`vertical_slash_indices` with per-head budgets as [N] arrays, which may
  be traced: heads whose budgets differ share one program.

  The budgets are clamped as there (`vs_line_counts`); `max_vertical` and
  `max_slash` are static upper bounds of the raw budgets over every head the
  program serves, so the index arrays are min(T, max(max_vertical, 30))
  and min(T, max(max_slash, 50)) wide. Equal sets to the static builder
  for budgets within the bounds.

  Args:
    q: [B, T, N, D] queries (RoPE applied).
    k: [B, S, K, D] keys, S == T, N % K == 0.
    n_vertical: [N] int vertical budgets.
    n_slash: [N] int slash budgets.
    active: [N] bool; inactive heads get counts 0.
    max_vertical, max_slash: static bounds of the budgets.
    last_q, scores, interpret: as in `vertical_slash_indices`.

  Raises:
    TypeError: non-int bounds or last_q, non-float q/k.
    ValueError: inconsistent q/k shapes, budgets or `active` that are not
      [N] integers / bools, negative bounds, an unknown `scores`, and for
      concrete (untraced) budgets: negative ones or an active head's budget
      above its bound.
  """
  _, t, n, _, _ = check_prefill_qk(q, k)
  n_vertical = per_head_array("n_vertical", n_vertical, n, jnp.integer)
  n_slash = per_head_array("n_slash", n_slash, n, jnp.integer)
  active = per_head_array("active", active, n, jnp.bool_)
  bound_v = check_int("max_vertical", max_vertical, 0)
  bound_s = check_int("max_slash", max_slash, 0)
  if scores not in ("xla", "pallas"):
    raise ValueError(f"scores must be 'xla' or 'pallas', got {scores!r}")
  last_q = min(check_int("last_q", last_q, 1), t)
  if last_q > PALLAS_SCORES_MAX_LAST_Q:
    scores = "xla"
  v_cnt, s_cnt = vs_line_counts(n_vertical.astype(jnp.int32),
                                n_slash.astype(jnp.int32), active, t)
  width_v, width_s = vs_line_counts(bound_v, bound_s, True, t)
  check_counts_fit("n_vertical", n_vertical, v_cnt, width_v, "max_vertical",
                   bound_v)
  check_counts_fit("n_slash", n_slash, s_cnt, width_s, "max_slash", bound_s)
  return _vs_indices_jit(
      q, k, v_cnt, s_cnt, width_vertical=width_v, width_slash=width_s,
      last_q=last_q, scores=scores,
      interpret=bool(interpret) and scores == "pallas",
  )
