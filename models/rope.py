"""Rotary position embeddings: HF-compatible frequency variants and rotation."""

import dataclasses
import math
from collections.abc import Mapping
from typing import Any

import jax.numpy as jnp
import numpy as np
from beartype import beartype
from jaxtyping import Array, Float, Int, jaxtyped

# The `rope_type` values of transformers' ROPE_INIT_FUNCTIONS that we support.
ROPE_KINDS = ("default", "linear", "dynamic", "llama3", "yarn", "longrope")
# Old spellings of rope types found in published config.json files.
_KIND_ALIASES = {"su": "longrope", "mrope": "default"}


def _float_or_none(x: Any) -> float | None:
  return None if x is None else float(x)


@dataclasses.dataclass(frozen=True, kw_only=True)
class RopeConfig:
  """How rotary frequencies are computed and applied (frozen, hashable).

  Attributes:
    kind: one of ROPE_KINDS (transformers' `rope_type`).
    theta: the base (`rope_theta`; GLM: 10000 * rope_ratio).
    rotary_dim: rotated dims per head (even, <= head_dim); head_dim *
      partial_rotary_factor. Dims past rotary_dim pass through unchanged.
    interleaved: False pairs dim i with i + rotary_dim/2 (HF `rotate_half`);
      True pairs (2i, 2i+1) (GLM/ChatGLM).
    factor: scaling factor (linear, dynamic, llama3, yarn); for longrope None
      means max_position_embeddings / original_max_position_embeddings.
    max_position_embeddings: the config's max_position_embeddings.
    original_max_position_embeddings: pre-extension context (llama3, yarn,
      longrope) or None.
    low_freq_factor, high_freq_factor: llama3 smoothing band.
    beta_fast, beta_slow, mscale, mscale_all_dim, truncate: yarn options.
    attention_factor: explicit cos/sin scale (yarn, longrope) or None.
    short_factor, long_factor: longrope per-frequency divisors
      (rotary_dim // 2 each).
  """

  kind: str = "default"
  theta: float = 10000.0
  rotary_dim: int
  interleaved: bool = False
  factor: float | None = None
  max_position_embeddings: int = 2048
  original_max_position_embeddings: int | None = None
  low_freq_factor: float = 1.0
  high_freq_factor: float = 4.0
  beta_fast: float = 32.0
  beta_slow: float = 1.0
  mscale: float | None = None
  mscale_all_dim: float | None = None
  truncate: bool = True
  attention_factor: float | None = None
  short_factor: tuple[float, ...] | None = None
  long_factor: tuple[float, ...] | None = None

  def __post_init__(self):
    if self.kind not in ROPE_KINDS:
      raise ValueError(f"rope kind {self.kind!r} is not one of {ROPE_KINDS}")
    if self.rotary_dim <= 0 or self.rotary_dim % 2:
      raise ValueError(f"rotary_dim must be positive and even, got "
                       f"{self.rotary_dim}")
    if self.theta <= 0:
      raise ValueError(f"rope theta must be positive, got {self.theta}")
    if self.kind in ("linear", "dynamic", "llama3", "yarn") and (
        self.factor is None or self.factor <= 0):
      raise ValueError(f"{self.kind} rope needs a positive factor, got "
                       f"{self.factor}")
    if self.kind == "llama3" and self.original_max_position_embeddings is None:
      raise ValueError("llama3 rope needs original_max_position_embeddings")
    if self.kind == "longrope":
      half = self.rotary_dim // 2
      for name in ("short_factor", "long_factor"):
        value = getattr(self, name)
        if value is None or len(value) != half:
          got = None if value is None else len(value)
          raise ValueError(f"longrope {name} needs {half} entries "
                           f"(rotary_dim // 2), got {got}")

  # ---- frequencies -------------------------------------------------------

  def _exponents(self) -> np.ndarray:
    # 2i / dim for i < dim / 2, as float64.  # [R/2]
    return np.arange(0, self.rotary_dim, 2, dtype=np.float64) / self.rotary_dim

  def _longrope_original(self) -> int:
    return self.original_max_position_embeddings or self.max_position_embeddings

  def inv_freq(self, seq_len: int | None = None) -> np.ndarray:
    """Inverse frequencies [rotary_dim // 2] (float32), as transformers.

    Args:
      seq_len: the current total length (max position + 1); used only by
        `dynamic` (NTK base growth past max_position_embeddings) and
        `longrope` (long factors past original_max_position_embeddings).

    Returns:
      A float32 numpy array: rotation speed of each rotated pair.
    """
    expo = self._exponents()  # [R/2]
    base = float(self.theta)
    if self.kind == "dynamic":
      max_pos = self.max_position_embeddings
      length = seq_len if seq_len is not None and seq_len > max_pos else max_pos
      dim = self.rotary_dim
      base = base * ((self.factor * length / max_pos) - (self.factor - 1)) ** (
          dim / (dim - 2))
    inv = 1.0 / base**expo  # [R/2]
    if self.kind == "linear":
      inv = inv / self.factor
    elif self.kind == "llama3":
      inv = _llama3_scale(inv, self)
    elif self.kind == "yarn":
      inv = _yarn_scale(inv, self)
    elif self.kind == "longrope":
      use_long = seq_len is not None and seq_len > self._longrope_original()
      ext = np.asarray(self.long_factor if use_long else self.short_factor,
                       dtype=np.float64)
      inv = 1.0 / (ext * base**expo)
    return inv.astype(np.float32)

  def attention_scaling(self) -> float:
    """The factor transformers multiplies cos and sin by (1.0 if none)."""
    if self.kind == "yarn":
      if self.attention_factor is not None:
        return float(self.attention_factor)
      if self.mscale and self.mscale_all_dim:
        return _yarn_mscale(self.factor, self.mscale) / _yarn_mscale(
            self.factor, self.mscale_all_dim)
      return _yarn_mscale(self.factor)
    if self.kind == "longrope":
      if self.attention_factor is not None:
        return float(self.attention_factor)
      original = self._longrope_original()
      factor = self.factor
      if factor is None:
        factor = self.max_position_embeddings / original
      if factor <= 1.0:
        return 1.0
      return math.sqrt(1.0 + math.log(factor) / math.log(original))
    return 1.0

  # ---- HF config.json ----------------------------------------------------

  @classmethod
  def from_hf(
      cls,
      cfg: Mapping[str, Any],
      *,
      head_dim: int,
      interleaved: bool = False,
      rotary_dim: int | None = None,
      theta: float | None = None,
  ) -> "RopeConfig":
    """Parses rope_theta / rope_scaling / partial_rotary_factor of a config.

    Also accepts transformers v5's `rope_parameters` dict.

    Args:
      cfg: the config.json dict.
      head_dim: the attention head dim.
      interleaved: GLM pairing convention (not stored in config.json).
      rotary_dim: overrides head_dim * partial_rotary_factor.
      theta: overrides rope_theta (ChatGLM's 10000 * rope_ratio).

    Raises:
      ValueError: for an unsupported rope type or malformed fields.
    """
    scaling = dict(cfg.get("rope_scaling") or {})
    params = cfg.get("rope_parameters")
    if isinstance(params, Mapping):
      scaling = {**dict(params), **scaling}
    kind = scaling.get("rope_type", scaling.get("type", "default"))
    kind = _KIND_ALIASES.get(kind, kind)
    if kind not in ROPE_KINDS:
      raise ValueError(f"rope_scaling type {kind!r} is not supported "
                       f"(supported: {ROPE_KINDS})")
    if theta is None:
      theta = float(scaling.get("rope_theta", cfg.get("rope_theta", 10000.0)))
    if rotary_dim is None:
      partial = float(scaling.get("partial_rotary_factor",
                                  cfg.get("partial_rotary_factor", 1.0)))
      rotary_dim = int(head_dim * partial)
    max_pos = int(cfg.get("max_position_embeddings", 2048))
    # Phi-3 keeps the pre-extension length at the top level; it wins (as in
    # transformers' config standardisation).
    original = cfg.get("original_max_position_embeddings")
    if original is None:
      original = scaling.get("original_max_position_embeddings")
    short = scaling.get("short_factor")
    long = scaling.get("long_factor")
    # `factor` only matters for the scaled kinds (None elsewhere, so that
    # equal ropes compare equal).
    factor = None if kind == "default" else scaling.get("factor")
    return cls(
        kind=kind,
        theta=float(theta),
        rotary_dim=rotary_dim,
        interleaved=interleaved,
        factor=_float_or_none(factor),
        max_position_embeddings=max_pos,
        original_max_position_embeddings=(
            None if original is None else int(original)),
        low_freq_factor=float(scaling.get("low_freq_factor", 1.0)),
        high_freq_factor=float(scaling.get("high_freq_factor", 4.0)),
        beta_fast=float(scaling.get("beta_fast") or 32.0),
        beta_slow=float(scaling.get("beta_slow") or 1.0),
        mscale=_float_or_none(scaling.get("mscale")),
        mscale_all_dim=_float_or_none(scaling.get("mscale_all_dim")),
        truncate=bool(scaling.get("truncate", True)),
        attention_factor=_float_or_none(scaling.get("attention_factor")),
        short_factor=None if short is None else tuple(map(float, short)),
        long_factor=None if long is None else tuple(map(float, long)),
    )

  def to_hf(self) -> dict[str, Any]:
    """The config.json entries (`rope_theta`, `rope_scaling`) for from_hf.

    `rope_scaling` is None for the default kind. The caller adds
    `partial_rotary_factor` (it depends on head_dim) and, for Phi-3, a
    top-level copy of `original_max_position_embeddings`.
    """
    out: dict[str, Any] = {"rope_theta": self.theta, "rope_scaling": None}
    if self.kind == "default":
      return out
    scaling: dict[str, Any] = {"rope_type": self.kind}
    if self.factor is not None:
      scaling["factor"] = self.factor
    if self.kind == "llama3":
      scaling.update(low_freq_factor=self.low_freq_factor,
                     high_freq_factor=self.high_freq_factor)
    if self.kind == "yarn":
      scaling.update(beta_fast=self.beta_fast, beta_slow=self.beta_slow,
                     truncate=self.truncate)
      if self.mscale is not None:
        scaling["mscale"] = self.mscale
      if self.mscale_all_dim is not None:
        scaling["mscale_all_dim"] = self.mscale_all_dim
    if self.kind in ("yarn", "longrope") and self.attention_factor is not None:
      scaling["attention_factor"] = self.attention_factor
    if self.kind == "longrope":
      scaling.update(short_factor=list(self.short_factor),
                     long_factor=list(self.long_factor))
    if self.original_max_position_embeddings is not None:
      scaling["original_max_position_embeddings"] = (
          self.original_max_position_embeddings)
    out["rope_scaling"] = scaling
    return out


def _llama3_scale(inv: np.ndarray, cfg: RopeConfig) -> np.ndarray:
  """Llama 3.1 band-wise scaling: keep high, divide low, blend the middle."""
  old_len = float(cfg.original_max_position_embeddings)
  low_wavelen = old_len / cfg.low_freq_factor
  high_wavelen = old_len / cfg.high_freq_factor
  wavelen = 2.0 * math.pi / inv  # [R/2]
  scaled = np.where(wavelen > low_wavelen, inv / cfg.factor, inv)
  smooth = (old_len / wavelen - cfg.low_freq_factor) / (
      cfg.high_freq_factor - cfg.low_freq_factor)
  blended = (1.0 - smooth) * scaled / cfg.factor + smooth * scaled
  medium = (wavelen >= high_wavelen) & (wavelen <= low_wavelen)
  return np.where(medium, blended, scaled)


def _yarn_mscale(scale: float, mscale: float = 1.0) -> float:
  if scale <= 1.0:
    return 1.0
  return 0.1 * mscale * math.log(scale) + 1.0


def _yarn_scale(inv: np.ndarray, cfg: RopeConfig) -> np.ndarray:
  """YaRN (arXiv 2309.00071 §3.2): ramp between interpolation/extrapolation."""
  dim = cfg.rotary_dim
  base = cfg.theta
  original = cfg.original_max_position_embeddings or cfg.max_position_embeddings

  def correction_dim(rotations: float) -> float:
    return (dim * math.log(original / (rotations * 2 * math.pi))) / (
        2 * math.log(base))

  low = correction_dim(cfg.beta_fast)
  high = correction_dim(cfg.beta_slow)
  if cfg.truncate:
    low, high = math.floor(low), math.ceil(high)
  low, high = max(low, 0), min(high, dim - 1)
  if low == high:
    high += 0.001  # avoids a division by zero, as the reference does
  ramp = np.clip((np.arange(dim // 2, dtype=np.float64) - low) / (high - low),
                 0.0, 1.0)  # [R/2]
  extrapolate = 1.0 - ramp  # weight of the unscaled frequency
  return inv / cfg.factor * (1.0 - extrapolate) + inv * extrapolate


@jaxtyped(typechecker=beartype)
def rope_cos_sin(
    positions: Int[Array, "B T"],
    inv_freq: Float[Array, " R2"] | np.ndarray,
    scaling: float = 1.0,
) -> tuple[Float[Array, "B T R2"], Float[Array, "B T R2"]]:
  """cos/sin tables (float32) for absolute positions.

  Args:
    positions: [B, T] absolute token positions.
    inv_freq: [R/2] inverse frequencies (RopeConfig.inv_freq).
    scaling: multiplies cos and sin (RopeConfig.attention_scaling).

  Returns:
    (cos, sin), each [B, T, R/2] float32.
  """
  inv = jnp.asarray(inv_freq, jnp.float32)
  angles = positions.astype(jnp.float32)[..., None] * inv  # [B, T, R/2]
  return jnp.cos(angles) * scaling, jnp.sin(angles) * scaling


@jaxtyped(typechecker=beartype)
def apply_rope(
    x: Float[Array, "B T H D"],
    cos: Float[Array, "B T R2"],
    sin: Float[Array, "B T R2"],
    *,
    interleaved: bool = False,
) -> Float[Array, "B T H D"]:
  """Rotates the first 2 * R2 dims of every head (math in float32).

  Args:
    x: [B, T, H, D] queries or keys.
    cos, sin: [B, T, R2] tables from rope_cos_sin; 2 * R2 <= D.
    interleaved: pair dims (2i, 2i+1) (GLM) instead of (i, i + R2) (HF
      rotate_half).

  Returns:
    [B, T, H, D] rotated x in x's dtype.
  """
  half = cos.shape[-1]
  rot = 2 * half
  if rot > x.shape[-1]:
    raise ValueError(f"rotary dims {rot} exceed head dim {x.shape[-1]}")
  xr = x[..., :rot].astype(jnp.float32)  # [B, T, H, R]
  c = cos[:, :, None, :]  # [B, T, 1, R2]
  s = sin[:, :, None, :]
  if interleaved:
    pairs = xr.reshape(*xr.shape[:-1], half, 2)  # [B, T, H, R2, 2]
    a, b = pairs[..., 0], pairs[..., 1]
    out = jnp.stack([a * c - b * s, b * c + a * s], axis=-1)
    out = out.reshape(xr.shape)
  else:
    a, b = xr[..., :half], xr[..., half:]
    out = jnp.concatenate([a * c - b * s, b * c + a * s], axis=-1)
  out = out.astype(x.dtype)
  if rot == x.shape[-1]:
    return out
  return jnp.concatenate([out, x[..., rot:]], axis=-1)
