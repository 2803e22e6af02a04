"""Seeded synthetic long-context Q/K/V whose attention looks like a real LLM's.

Random Gaussian q/k give a diffuse attention map on which Vertical-Slash
indices scatter and the sparse kernels run nearly dense. This generator
builds post-RoPE queries and keys whose attention has the structures
MInference exploits, each driven by a knob of `SyntheticSpec`, so kernels,
index builders and metrics can be exercised at any length without a model.

Construction. Logits are q . k / sqrt(D); we build q = D**0.25 * q_hat and
k = D**0.25 * k_hat so that a logit is q_hat . k_hat and every strength below
is in logit units. Rotary pairs (i, i + D/2), frequency theta**(-2i/D), are
split: `semantic_fraction` of them (the fastest) hold position-independent
directions (sink, columns), added after RoPE, as real models achieve with
their slowest pairs; the other "content" pairs hold smooth content vectors to
which real RoPE (rotate-half, base `rope_theta`) is applied at the token's
position. Query head n reads KV head n // G; all heads of a group share the
KV head's content, sinks and columns.

Knobs (strengths get a per-head log-normal spread, `head_variation`):
  rope_theta: RoPE base.
  semantic_fraction: share of rotary pairs for the sink/column directions.
  n_features: random Fourier features per content process (more = closer to
    the target correlation, fewer spurious long-range matches).
  local: tuple of (correlation_length, strength). Each entry is a smooth
    random content process c(t) with E[c(t) . c(t + d)] ~ exp(-|d| / length)
    (Cauchy-distributed Fourier frequencies), unit scale in the keys and
    `strength` in the queries: the sharp local band (nearby keys score high).
  recency_strength: a constant vector in the content pairs whose rotation over
    the whole sequence is ~1.5 rad; its RoPE self-similarity falls smoothly
    with distance (RoPE's long-term decay), so near keys beat far ones on
    average and VS's diagonal budget goes to small offsets first.
  n_sink / sink_strength: keys 0 .. n_sink - 1 carry a direction u per KV
    head; every query carries sink_strength * u (attention sinks).
  n_columns / column_strength: salient key positions per KV head (uniform in
    [n_sink, T)) carry a direction w orthogonal to u; queries carry
    column_strength * w, so these keys are vertical lines.
  n_slash_lines / slash_strength: per query head, lines at offsets p. The
    query at t carries the content of token t - p rotated to position t - p
    (as if the text repeated with period p: a copy/induction head), so
    q_t . k_{t-p} is high: a slash at offset p, as wide as the first `local`
    component's band. Rows t < p carry nothing.
  slash_clustering in [0, 1]: probability that an offset is drawn near one of
    `n_slash_centres` centres shared by all heads of a sample (log-uniform in
    [128, T / 2], Gaussian spread `slash_spread * T`); otherwise uniform in
    [1, T). 0 = offsets spread over [0, T) (VS nearly dense), 1 = clustered.
  noise: isotropic Gaussian noise on q_hat and k_hat, relative to a unit-norm
    content vector (its logit effect grows with the query's strength).
  head_variation: sigma of the per-head log-normal factor on every strength,
    so heads differ (sink-heavy, slash-heavy, band-heavy, ...).

Values are N(0, 1). Small parameters are drawn with NumPy from the seed, the
big arrays with jax.random from the same seed: same seed, shape and spec give
the same arrays. Presets: `SyntheticSpec.realistic()` (the defaults) and
`SyntheticSpec.diffuse()` (weak structure, strong noise); `gaussian_qkv`
draws plain N(0, 1) q/k/v, the unstructured baseline.
"""

import dataclasses
import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
from beartype import beartype
from jaxtyping import Array, Float, Int, jaxtyped

_BLOCK = 64


@dataclasses.dataclass(frozen=True)
class SyntheticSpec:
  """Knobs of the synthetic attention structure (see the module docstring)."""

  rope_theta: float = 500000.0
  semantic_fraction: float = 0.125
  n_features: int = 128
  recency_strength: float = 4.0
  local: tuple[tuple[float, float], ...] = ((8.0, 6.0),)
  n_sink: int = 4
  sink_strength: float = 14.0
  n_columns: int = 16
  column_strength: float = 5.0
  n_slash_lines: int = 3
  slash_strength: float = 6.0
  slash_clustering: float = 0.8
  n_slash_centres: int = 2
  slash_spread: float = 0.005
  noise: float = 0.3
  head_variation: float = 0.25

  def __post_init__(self):
    if self.n_features < 1:
      raise ValueError(f"n_features must be >= 1, got {self.n_features}")
    for name in ("n_sink", "n_columns", "n_slash_lines", "n_slash_centres"):
      if getattr(self, name) < 0:
        raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
    if not 0.0 <= self.slash_clustering <= 1.0:
      raise ValueError(
          f"slash_clustering must be in [0, 1], got {self.slash_clustering}"
      )
    if self.slash_clustering > 0 and self.n_slash_centres < 1:
      raise ValueError("slash_clustering > 0 needs n_slash_centres >= 1")
    if not 0.0 < self.semantic_fraction < 1.0:
      raise ValueError(
          f"semantic_fraction must be in (0, 1), got {self.semantic_fraction}"
      )
    if not self.local or any(c <= 0 for c, _ in self.local):
      raise ValueError(
          f"local needs >= 1 (correlation_length > 0, strength) pair, got"
          f" {self.local}"
      )
    for name in ("noise", "head_variation", "slash_spread", "rope_theta",
                 "recency_strength"):
      if getattr(self, name) < 0:
        raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")

  @classmethod
  def realistic(cls, **override) -> "SyntheticSpec":
    """Sinks, a decaying local band, a few columns and clustered slashes."""
    return cls(**override)

  @classmethod
  def diffuse(cls, **override) -> "SyntheticSpec":
    """Weak structure drowned in noise: a near-random attention map."""
    fields = dict(
        local=((16.0, 1.0),),
        recency_strength=0.5,
        sink_strength=1.0,
        column_strength=1.0,
        slash_strength=1.0,
        slash_clustering=0.0,
        noise=1.5,
    )
    fields.update(override)
    return cls(**fields)


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class SyntheticQKV:
  """Generated inputs and the ground-truth structure behind them.

  Fields:
    q: [B, T, N, D] post-RoPE queries.
    k: [B, T, K, D] post-RoPE keys.
    v: [B, T, K, D] values.
    column_positions: [B, K, n_columns] salient key positions, ascending.
    slash_offsets: [B, N, n_slash_lines] slash offsets p in [1, T).
    n_sink: static number of sink keys.
  """

  q: Float[Array, "B T N D"]
  k: Float[Array, "B T K D"]
  v: Float[Array, "B T K D"]
  column_positions: Int[Array, "B K C"]
  slash_offsets: Int[Array, "B N L"]
  n_sink: int = dataclasses.field(metadata=dict(static=True))


def _rope(x, positions, theta):
  """Rotate-half RoPE: pair (i, i + D/2) turns by positions * theta**(-2i/D).

  x: [..., T, D]; positions: [T] (any sign).
  """
  half = x.shape[-1] // 2
  inv = theta ** (-jnp.arange(half, dtype=jnp.float32) / half)  # [D/2]
  angle = positions.astype(jnp.float32)[:, None] * inv[None, :]  # [T, D/2]
  cos, sin = jnp.cos(angle), jnp.sin(angle)
  x1, x2 = x[..., :half], x[..., half:]
  return jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1)


def _draw_params(seed, shape, spec):
  """All small random structure, drawn on the host (NumPy, seeded)."""
  b, t, n, kv, d = shape
  half = d // 2
  ps = min(max(1, round(spec.semantic_fraction * half)), half - 1)
  pc = half - ps
  rng = np.random.default_rng(seed)
  hv = spec.head_variation

  def lognormal(size):  # multiplicative spread with mean 1
    return np.exp(hv * rng.standard_normal(size) - 0.5 * hv**2)

  n_comp, lines, feat = len(spec.local), spec.n_slash_lines, spec.n_features
  strengths = np.asarray([s for _, s in spec.local])
  corr = np.asarray([c for c, _ in spec.local])
  # Exponential kernel exp(-|d| / corr) <=> Cauchy frequencies of scale
  # 1 / corr (clipped to the Nyquist band of integer positions).
  cauchy = np.tan(np.pi * (rng.uniform(1e-3, 1 - 1e-3, (b, kv, n_comp, feat))
                           - 0.5))
  omega = np.clip(cauchy / corr[:, None], -np.pi, np.pi)
  phase = rng.uniform(0, 2 * np.pi, (b, kv, n_comp, feat))
  amp = rng.standard_normal((b, kv, n_comp, feat, 2 * pc)) / math.sqrt(2 * pc)
  # Sink u and column w: orthonormal semantic directions per KV head.
  uw = rng.standard_normal((b, kv, 2, 2 * ps))
  u = uw[:, :, 0] / np.linalg.norm(uw[:, :, 0], axis=-1, keepdims=True)
  w = uw[:, :, 1] - np.sum(uw[:, :, 1] * u, -1, keepdims=True) * u
  w = w / np.linalg.norm(w, axis=-1, keepdims=True)
  mu_phase = rng.uniform(0, 2 * np.pi, (b, kv, pc))

  # Slash offsets: near shared centres with probability slash_clustering.
  lo, hi = math.log(min(2 * _BLOCK, max(t // 2, 1))), math.log(max(t // 2, 2))
  centres = np.exp(rng.uniform(lo, hi, (b, max(spec.n_slash_centres, 1))))
  which = rng.integers(0, centres.shape[1], (b, n, lines))
  near = np.take_along_axis(
      np.repeat(centres[:, None, :], n, 1), which, axis=2
  ) + spec.slash_spread * t * rng.standard_normal((b, n, lines))
  uniform = rng.uniform(1.0, t, (b, n, lines))
  clustered = rng.uniform(size=(b, n, lines)) < spec.slash_clustering
  offsets = np.clip(np.round(np.where(clustered, near, uniform)), 1,
                    max(t - 1, 1))
  # Salient columns: distinct positions in [n_sink, T), ascending.
  c_lo = min(spec.n_sink, t - 1)
  n_col = min(spec.n_columns, t - c_lo)
  columns = np.sort(
      np.argsort(rng.uniform(size=(b, kv, t - c_lo)), axis=-1)[..., :n_col],
      axis=-1,
  ) + c_lo

  f32 = lambda x: np.asarray(x, np.float32)  # noqa: E731
  return dict(
      local_str=f32(strengths * lognormal((b, n, n_comp))),
      rec_str=f32(spec.recency_strength * lognormal((b, n))),
      sink_str=f32(spec.sink_strength * lognormal((b, n))),
      col_str=f32(spec.column_strength * lognormal((b, n))),
      slash_str=f32(spec.slash_strength * lognormal((b, n, lines))),
      offsets=offsets.astype(np.int32),
      columns=columns.astype(np.int32),
      omega=f32(omega), phase=f32(phase), amp=f32(amp),
      u=f32(u), w=f32(w), mu_phase=f32(mu_phase),
  )


def _content(omega, phase, amp, positions):
  """c(t) = sqrt(2/F) cos(t omega + phase) @ amp: [T, dim], E|c|^2 = 1."""
  feats = jnp.cos(
      positions.astype(jnp.float32)[:, None] * omega[None, :] + phase
  ) * math.sqrt(2.0 / omega.shape[0])  # [T, F]
  return feats @ amp  # [T, dim]


def _recency_weights(n_semantic_pairs, half, t, theta):
  """Energy per content pair of the recency vector: [half - n_semantic_pairs].

  Pairs whose rotation over the whole sequence, theta_i * T, is near 1.5 rad
  get the weight (log-Gaussian in theta_i * T): their cos(theta_i * d) falls
  smoothly and monotonically over d in [0, T].
  """
  i = jnp.arange(n_semantic_pairs, half, dtype=jnp.float32)
  turn = jnp.log(t * theta ** (-i / half))  # log(theta_i * T)
  w = jnp.exp(-0.5 * ((turn - math.log(1.5)) / 0.7) ** 2) + 1e-6
  return w / jnp.sum(w)


@functools.partial(
    jax.jit, static_argnames=("shape", "rope_theta", "n_sink", "noise")
)
def _generate(params, key, *, shape, rope_theta, n_sink, noise):
  b, t, n, kv, d = shape
  g = n // kv
  half = d // 2
  ps = params["u"].shape[-1] // 2
  pc = half - ps  # content pairs: rotary pairs ps .. half - 1
  positions = jnp.arange(t, dtype=jnp.int32)
  rec_w = _recency_weights(ps, half, t, rope_theta)  # [pc]

  def rotate(content, pos):  # content pairs [..., T, 2pc] -> [..., T, D]
    zeros = jnp.zeros(content.shape[:-1] + (ps,), content.dtype)
    full = jnp.concatenate(
        [zeros, content[..., :pc], zeros, content[..., pc:]], axis=-1
    )
    return _rope(full, pos, rope_theta)

  def semantic(x):  # semantic pairs [..., 2ps] -> [..., D], not rotated
    zeros = jnp.zeros(x.shape[:-1] + (pc,), x.dtype)
    return jnp.concatenate([x[..., :ps], zeros, x[..., ps:], zeros], axis=-1)

  def per_group(xs):
    p, gkey = xs  # one (batch, KV head): per-head entries are [G, ...]
    content = jax.vmap(_content, in_axes=(0, 0, 0, None))(
        p["omega"], p["phase"], p["amp"], positions
    )  # [C, T, 2pc]
    # Recency: a constant vector; its RoPE self-similarity
    # sum_i w_i cos(theta_i * d) falls smoothly with the distance d.
    amp = jnp.sqrt(rec_w)
    mu = jnp.concatenate(
        [amp * jnp.cos(p["mu_phase"]), amp * jnp.sin(p["mu_phase"])]
    )  # [2pc]
    is_sink = (positions < n_sink).astype(jnp.float32)
    is_col = jnp.zeros((t,), jnp.float32).at[p["columns"]].set(1.0)
    k_sem = is_sink[:, None] * p["u"] + is_col[:, None] * p["w"]  # [T, 2ps]
    noise_k, noise_q = jax.random.split(gkey)
    k_hat = rotate(content.sum(0) + mu, positions) + semantic(k_sem)
    k_hat += noise * jax.random.normal(noise_k, (t, d)) / math.sqrt(d)

    q_content = jnp.einsum("gc,ctd->gtd", p["local_str"], content)
    q_content += p["rec_str"][:, None, None] * mu  # [G, T, 2pc]
    q_sem = (
        p["sink_str"][:, None] * p["u"] + p["col_str"][:, None] * p["w"]
    )  # [G, 2ps]
    q_hat = rotate(q_content, positions) + semantic(q_sem)[:, None, :]
    q_hat += (
        noise * jax.random.normal(noise_q, (g, t, d)) / math.sqrt(d)
    )  # [G, T, D]

    def slash_term(offset):  # the content of token t - offset at t - offset
      src = positions - offset
      c0 = _content(p["omega"][0], p["phase"][0], p["amp"][0], src)
      return rotate(c0, src) * (src >= 0)[:, None]  # [T, D]

    slash = jax.vmap(jax.vmap(slash_term))(p["offsets"])  # [G, L, T, D]
    q_hat += jnp.einsum("gl,gltd->gtd", p["slash_str"], slash)
    return q_hat, k_hat

  per_kv = ("omega", "phase", "amp", "u", "w", "mu_phase", "columns")
  per_q = ("local_str", "rec_str", "sink_str", "col_str", "slash_str",
           "offsets")
  xs = {name: params[name].reshape((b * kv,) + params[name].shape[2:])
        for name in per_kv}
  xs.update({
      name: params[name].reshape((b * kv, g) + params[name].shape[2:])
      for name in per_q
  })
  kq, kv_key = jax.random.split(key)
  q, k = jax.lax.map(
      per_group, (xs, jax.random.split(kq, b * kv))
  )  # [B * K, G, T, D], [B * K, T, D]
  scale = d**0.25
  q = q.reshape(b, kv, g, t, d).transpose(0, 3, 1, 2, 4).reshape(b, t, n, d)
  k = k.reshape(b, kv, t, d).transpose(0, 2, 1, 3)
  v = jax.random.normal(kv_key, (b, t, kv, d))
  return q * scale, k * scale, v


def _check_shape(batch, seq_len, num_heads, num_kv_heads, head_dim):
  for name, val in (("batch", batch), ("seq_len", seq_len),
                    ("num_heads", num_heads), ("num_kv_heads", num_kv_heads),
                    ("head_dim", head_dim)):
    if isinstance(val, bool) or not isinstance(val, int) or val < 1:
      raise ValueError(f"{name} must be a positive int, got {val!r}")
  if num_heads % num_kv_heads:
    raise ValueError(
        f"num_heads={num_heads} not divisible by num_kv_heads={num_kv_heads}"
    )
  if head_dim % 2 or head_dim < 8:
    raise ValueError(f"head_dim must be even and >= 8, got {head_dim}")


@jaxtyped(typechecker=beartype)
def synthetic_qkv(
    seed: int,
    *,
    batch: int,
    seq_len: int,
    num_heads: int,
    num_kv_heads: int,
    head_dim: int,
    spec: SyntheticSpec | None = None,
    dtype: jnp.dtype | type = jnp.float32,
) -> SyntheticQKV:
  """Structured post-RoPE Q/K/V (see the module docstring for the knobs).

  Deterministic: the same seed, shape and spec give identical arrays.

  Args:
    seed: a non-negative int.
    batch: B.
    seq_len: T.
    num_heads: N.
    num_kv_heads: K (N % K == 0; query head n reads KV head n // (N // K)).
    head_dim: D (even, >= 8).
    spec: structure knobs; default `SyntheticSpec.realistic()`.
    dtype: dtype of q, k and v (generated in f32, then cast).

  Returns:
    SyntheticQKV with q [B, T, N, D], k and v [B, T, K, D] and the structure.

  Raises:
    ValueError: on invalid shapes.
  """
  _check_shape(batch, seq_len, num_heads, num_kv_heads, head_dim)
  spec = SyntheticSpec.realistic() if spec is None else spec
  shape = (batch, seq_len, num_heads, num_kv_heads, head_dim)
  params = _draw_params(seed, shape, spec)
  q, k, v = _generate(
      {name: jnp.asarray(x) for name, x in params.items()},
      jax.random.key(seed),
      shape=shape,
      rope_theta=float(spec.rope_theta),
      n_sink=spec.n_sink,
      noise=float(spec.noise),
  )
  return SyntheticQKV(
      q=q.astype(dtype),
      k=k.astype(dtype),
      v=v.astype(dtype),
      column_positions=jnp.asarray(params["columns"]),
      slash_offsets=jnp.asarray(params["offsets"]),
      n_sink=min(spec.n_sink, seq_len),
  )


@jaxtyped(typechecker=beartype)
def gaussian_qkv(
    seed: int,
    *,
    batch: int,
    seq_len: int,
    num_heads: int,
    num_kv_heads: int,
    head_dim: int,
    dtype: jnp.dtype | type = jnp.float32,
) -> tuple[
    Float[Array, "B T N D"], Float[Array, "B T K D"], Float[Array, "B T K D"]
]:
  """Plain N(0, 1) q, k, v: the unstructured baseline.

  Args:
    seed: a non-negative int.
    batch: B.
    seq_len: T.
    num_heads: N.
    num_kv_heads: K.
    head_dim: D.
    dtype: output dtype.

  Returns:
    (q [B, T, N, D], k [B, T, K, D], v [B, T, K, D]).

  Raises:
    ValueError: on invalid shapes.
  """
  _check_shape(batch, seq_len, num_heads, num_kv_heads, head_dim)
  kq, kk, kv = jax.random.split(jax.random.key(seed), 3)
  q = jax.random.normal(kq, (batch, seq_len, num_heads, head_dim), dtype)
  k = jax.random.normal(kk, (batch, seq_len, num_kv_heads, head_dim), dtype)
  v = jax.random.normal(kv, (batch, seq_len, num_kv_heads, head_dim), dtype)
  return q, k, v
