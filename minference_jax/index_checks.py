"""Input checks shared by the online index builders."""

import jax
import jax.numpy as jnp
import numpy as np


def check_prefill_qk(q, k) -> tuple[int, int, int, int, int]:
  """Validates a full-prefill q/k pair; returns (B, T, N, D, K).

  Raises:
    TypeError: q or k is not a floating-point array.
    ValueError: wrong ranks, batch or head-dim mismatch, N % K != 0, T != S.
  """
  for name, x, dims in (("q", q, "[B, T, N, D]"), ("k", k, "[B, S, K, D]")):
    if not hasattr(x, "ndim") or x.ndim != 4:
      shape = getattr(x, "shape", type(x).__name__)
      raise ValueError(f"{name} must be 4-D {dims}, got shape {shape}")
    if not jnp.issubdtype(x.dtype, jnp.floating):
      raise TypeError(f"{name} must be floating point, got {x.dtype}")
  b, t, n, d = q.shape
  if k.shape[0] != b:
    raise ValueError(f"batch mismatch: q{q.shape} vs k{k.shape}")
  if k.shape[3] != d:
    raise ValueError(f"head dim mismatch: q{q.shape} vs k{k.shape}")
  kv_heads = k.shape[2]
  if kv_heads == 0 or n % kv_heads:
    raise ValueError(
        f"query heads N={n} (q{q.shape}) must be a multiple of KV heads"
        f" K={kv_heads} (k{k.shape})"
    )
  if k.shape[1] != t:
    raise ValueError(
        f"index building needs a full prefill (T == S); got q{q.shape},"
        f" k{k.shape}"
    )
  if t == 0:
    raise ValueError(f"empty sequence: q{q.shape}")
  return b, t, n, d, kv_heads


def check_int(name: str, value, minimum: int) -> int:
  if isinstance(value, bool) or not isinstance(value, int):
    raise TypeError(f"{name} must be an int, got {type(value).__name__}")
  if value < minimum:
    raise ValueError(f"{name} must be >= {minimum}, got {value}")
  return value


def per_head_ints(name: str, value, n_heads: int) -> tuple[int, ...]:
  """An int or a per-query-head sequence of ints -> a tuple of N ints >= 0.

  Raises:
    TypeError: a value is not an int (bools are rejected).
    ValueError: a negative value, or a sequence whose length is not N.
  """
  if isinstance(value, (list, tuple)):
    if len(value) != n_heads:
      raise ValueError(
          f"{name} has {len(value)} per-head values; expected one per query"
          f" head (N={n_heads})"
      )
    return tuple(
        check_int(f"{name}[{i}]", x, 0) for i, x in enumerate(value)
    )
  return (check_int(name, value, 0),) * n_heads


def per_head_active(active, n_heads: int) -> tuple[bool, ...]:
  """None (all heads) or a per-query-head sequence of bools -> tuple of N."""
  if active is None:
    return (True,) * n_heads
  if not isinstance(active, (list, tuple)):
    raise TypeError(
        f"active must be None or a tuple of bools, got {type(active).__name__}"
    )
  if len(active) != n_heads:
    raise ValueError(
        f"active has {len(active)} entries; expected one per query head"
        f" (N={n_heads})"
    )
  if not all(isinstance(a, bool) for a in active):
    raise TypeError(f"active must hold Python bools, got {active}")
  return tuple(active)


def per_head_array(name: str, value, n_heads: int, dtype) -> jax.Array:
  """Checks an [N] per-query-head array (which may be traced).

  Args:
    name: the argument's name, for the error.
    value: the array.
    n_heads: N.
    dtype: the dtype family required, e.g. jnp.integer or jnp.bool_.

  Returns:
    value as an array.

  Raises:
    ValueError: a shape other than [N], or a dtype outside the family.
  """
  value = jnp.asarray(value)
  if value.shape != (n_heads,):
    raise ValueError(f"{name} must have shape ({n_heads},) (one entry per"
                     f" query head), got {value.shape}")
  if not jnp.issubdtype(value.dtype, dtype):
    raise ValueError(f"{name} must hold {dtype.__name__} values, got dtype"
                     f" {value.dtype}")
  return value


def check_counts_fit(name: str, budgets, counts, width: int, bound_name: str,
                     bound: int) -> None:
  """Raises ValueError where concrete per-head budgets are negative or an
  active head's clamped count exceeds the static index width that the bound
  gives. Traced budgets (under jit) cannot be read: their caller guarantees
  them."""
  if isinstance(budgets, jax.core.Tracer) or isinstance(counts,
                                                        jax.core.Tracer):
    return
  budgets, counts = np.asarray(budgets), np.asarray(counts)
  if (budgets < 0).any():
    raise ValueError(f"{name} must be >= 0, got {budgets.min()}")
  over = counts > width
  if over.any():
    raise ValueError(
        f"{name} holds an active head's budget of {budgets[over].max()},"
        f" above {bound_name}={bound} (index width {width})")


# ------------------------------------------------- non-finite estimate input
def vs_estimate_finite(q, k, last_q: int):
  """Whether each head's Vertical-Slash estimate reads only finite values.

  The estimate of query head n reads its last `last_q` query rows and every
  key of KV head n // G (a non-finite key makes every softmax row of the
  estimate NaN), so one NaN or inf there decides the lines of all the
  head's rows.

  Args:
    q: [B, T, N, D]; k: [B, S, K, D]; last_q: static, <= T.

  Returns:
    [B, N] bool, True where the estimate's inputs are all finite.
  """
  t, n = q.shape[1], q.shape[2]
  g = n // k.shape[2]
  q_ok = jnp.all(jnp.isfinite(q[:, t - last_q:]), axis=(1, 3))  # [B, N]
  k_ok = jnp.all(jnp.isfinite(k), axis=(1, 3))  # [B, K]
  return q_ok & jnp.repeat(k_ok, g, axis=1)


def bs_estimate_finite(q, k, block: int):
  """Whether each query block's Block-Sparse estimate reads only finite
  values.

  Row block m of query head n ranks the key blocks c <= m by its pooled
  query block against their pooled key blocks (KV head n // G), so a NaN
  or inf in its own query rows or in a key of any block c <= m decides its
  selection.

  Args:
    q: [B, T, N, D]; k: [B, S, K, D] (S == T); block: static block size.

  Returns:
    [B, N, Tb] bool, True where the row block's estimate inputs are finite.
  """
  b, t, n, _ = q.shape
  kv = k.shape[2]
  nb = -(-t // block)
  pad = ((0, 0), (0, nb * block - t), (0, 0))

  def block_ok(x):  # [B, T, H, D] -> [B, Tb, H]
    ok = jnp.pad(jnp.all(jnp.isfinite(x), axis=-1), pad, constant_values=True)
    return jnp.all(ok.reshape(b, nb, block, x.shape[2]), axis=2)

  k_bad = ~block_ok(k)  # [B, Sb, K]
  k_prefix_ok = ~jax.lax.cummax(k_bad.astype(jnp.int32), axis=1).astype(
      bool)  # [B, Tb, K]: every key block <= m finite
  ok = block_ok(q) & jnp.repeat(k_prefix_ok, n // kv, axis=2)  # [B, Tb, N]
  return jnp.moveaxis(ok, 1, 2)
