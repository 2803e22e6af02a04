"""Pallas-Triton A-shape attention: sink keys plus a causal local window."""

import functools

import jax
import jax.numpy as jnp
from beartype import beartype
from jax import lax
from jax.experimental import pallas as pl
from jaxtyping import Array, Float, jaxtyped

from pallas_kernels import common
from pallas_kernels.a_shape.base import Config
from pallas_kernels.layouts import AShapeLayout


def _kernel(n_init_ref, n_local_ref, q_ref, k_ref, v_ref, o_ref, *, t, d,
            d_pad, block_q, block_k, scale, precision):
  """One program: block_q query rows of one (batch, head).

  Row r reads key j <= r iff j < n_init (sink) or r - j < n_local (window),
  each key once (MInference's A-shape; StreamingLLM). Two phases:
  1. sink tiles over [0, min(n_init, r_last + 1 - n_local)), keeping only keys
     OUTSIDE the row's window (the window phase counts the others);
  2. window tiles over [r0 + 1 - n_local, r_last]: the tiles every row of the
     block sees whole need no mask, the tiles at either edge are masked.
  n_init / n_local are read per head from refs; 0 / 0 gives zero output.
  """
  h = pl.program_id(1)
  n_init = n_init_ref[h]
  n_local = n_local_ref[h]
  i = pl.num_programs(0) - 1 - pl.program_id(0)
  r0 = i * block_q
  r_end = jnp.minimum(r0 + block_q, t)  # one past the last real row
  rows = r0 + common.iota(block_q)  # [bq]
  row_ok = rows < t if t % block_q else None
  q = common.load_q(q_ref, block_q, d, d_pad, scale, row_ok)  # [bq, Dp]
  zero = jnp.int32(0)

  def tile(j):
    start = pl.multiple_of(j * block_k, block_k)
    cols = start + common.iota(block_k)  # [bk]
    return start, cols

  def masked_step(keep_fn):
    def step(j, st):
      start, cols = tile(j)
      col_ok = cols < t
      k = common.load_rows(k_ref, start, block_k, d, d_pad, col_ok)
      v = common.load_rows(v_ref, start, block_k, d, d_pad, col_ok)
      dist = rows[:, None] - cols[None, :]  # [bq, bk]
      return common.attend(st, q, k, v, keep_fn(dist, cols), precision)
    return step

  def full_step(j, st):
    start, _ = tile(j)
    k = common.load_rows(k_ref, start, block_k, d, d_pad, None)
    v = common.load_rows(v_ref, start, block_k, d, d_pad, None)
    return common.attend(st, q, k, v, None, precision)

  def sink_keep(dist, cols):
    return (cols[None, :] < n_init) & (dist >= n_local) & (dist >= 0)

  def local_keep(dist, cols):
    del cols
    return (dist >= 0) & (dist < n_local)

  state = common.init_state(block_q, d_pad)
  # Phase 1: sink keys left of every window of the block.
  sink_end = jnp.maximum(jnp.minimum(n_init, r_end - n_local), zero)
  state = lax.fori_loop(
      0, common.cdiv(sink_end, block_k), masked_step(sink_keep), state
  )
  # Phase 2: the local window, tiles [lo, hi) split into masked edges and an
  # unmasked middle [m_lo, m_hi) (tiles inside every row's window).
  lo = common.idiv(jnp.maximum(r0 + 1 - n_local, zero), block_k)
  hi = jnp.where(n_local > 0, common.cdiv(r_end, block_k), lo)
  m_lo = jnp.clip(
      common.cdiv(jnp.maximum(r_end - n_local, zero), block_k), lo, hi
  )
  m_hi = jnp.clip(common.idiv(r0 + 1, block_k), m_lo, hi)
  state = lax.fori_loop(lo, m_lo, masked_step(local_keep), state)
  state = lax.fori_loop(m_lo, m_hi, full_step, state)
  state = lax.fori_loop(m_hi, hi, masked_step(local_keep), state)
  common.store_out(o_ref, common.finish(state), d, row_ok)


@functools.partial(jax.jit, static_argnames=("config", "interpret"))
def _fwd(q, k, v, n_init, n_local, *, config: Config, interpret: bool):
  b, t, n, _, g, d = common.check_qkv(q, k, v, "a_shape_attention")
  for name, arr in (("n_init", n_init), ("n_local", n_local)):
    common.check_index_array(f"AShapeLayout.{name}", arr, (n,), 1)
  d_pad = common.padded_head_dim(d)
  bq, bk = config.block_q, config.block_k
  kernel = functools.partial(
      _kernel, t=t, d=d, d_pad=d_pad, block_q=bq, block_k=bk,
      scale=d**-0.5, precision=common.dot_precision(q.dtype),
  )
  n_q_blocks = pl.cdiv(t, bq)
  k, v = common.pad_short_kv(k, v, bk)
  head_spec = pl.BlockSpec((n,), lambda i, h, bb: (0,))
  q_spec = common.q_block_spec(bq, n_q_blocks, d)
  kv_spec = common.kv_head_spec(k.shape[1], d, g)
  return pl.pallas_call(
      kernel,
      out_shape=jax.ShapeDtypeStruct(q.shape, q.dtype),
      grid=(n_q_blocks, n, b),
      in_specs=[head_spec, head_spec, q_spec, kv_spec, kv_spec],
      out_specs=q_spec,
      compiler_params=common.compiler_params(
          config.num_warps, config.num_stages
      ),
      interpret=interpret,
      name=f"minf_a_shape_fwd_bq{bq}_bk{bk}_d{d}",
  )(n_init, n_local, q, k, v)


@jaxtyped(typechecker=beartype)
def a_shape_attention_triton(
    q: Float[Array, "B T N D"],
    k: Float[Array, "B S K D"],
    v: Float[Array, "B S K D"],
    layout: AShapeLayout,
    *,
    config: Config | None = None,
    interpret: bool = False,
) -> Float[Array, "B T N D"]:
  """A-shape attention: sinks j < n_init[n] plus the window r - j < n_local[n].

  One launch covers all heads; each head reads its own sizes, and a head with
  n_init = n_local = 0 produces zeros. Query head n reads KV head n // G.

  Args:
    q: [B, T, N, D] queries (float32, bfloat16 or float16).
    k: [B, S, K, D] keys (S == T: full prefill), N % K == 0.
    v: [B, S, K, D] values.
    layout: per-head int32 `n_init` [N] and `n_local` [N].
    config: tile sizes and launch knobs; `Config.get_default(D)` if None.
    interpret: run the kernel in Pallas interpret mode (CPU tests).

  Returns:
    [B, T, N, D] attention output in q's dtype.

  Raises:
    ValueError: on inconsistent shapes.
    TypeError: on unsupported dtypes or non-int32 layout arrays.
  """
  if config is None:
    config = Config.get_default(q.shape[-1])
  return _fwd(q, k, v, layout.n_init, layout.n_local, config=config,
              interpret=interpret)
