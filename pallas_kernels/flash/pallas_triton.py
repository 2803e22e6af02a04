"""Pallas-Triton dense causal flash attention (baseline and dense fallback)."""

import functools

import jax
from beartype import beartype
from jax import lax
from jax.experimental import pallas as pl
from jaxtyping import Array, Float, jaxtyped

from pallas_kernels import common
from pallas_kernels.flash.base import Config


def _kernel(q_ref, k_ref, v_ref, o_ref, *, t, d, d_pad, block_q, block_k,
            scale, precision):
  """One program: block_q query rows of one (batch, head) over keys <= row.

  Refs: q_ref/o_ref [block_q, D] (this block), k_ref/v_ref [S, D] (the whole
  sequence of KV head n // G). Key tiles strictly left of the block's first row
  need no mask; the tiles crossing the diagonal get the causal mask and the
  sequence-end load mask.
  """
  # Heavy (late) query blocks first: they dominate the causal tail.
  i = pl.num_programs(0) - 1 - pl.program_id(0)
  r0 = i * block_q
  rows = r0 + common.iota(block_q)  # [block_q]
  row_ok = rows < t if t % block_q else None
  q = common.load_q(q_ref, block_q, d, d_pad, scale, row_ok)  # [bq, Dp]
  state = common.init_state(block_q, d_pad)

  tile = functools.partial(common.attend_tile, q=q, k_ref=k_ref,
                           v_ref=v_ref, size=block_k, d=d, d_pad=d_pad,
                           precision=precision)

  def full_step(j, st):
    return tile(st, start=pl.multiple_of(j * block_k, block_k))

  def diag_step(j, st):
    start = pl.multiple_of(j * block_k, block_k)
    return tile(st, start=start, causal_rows=rows, t=t)

  # Tiles [0, n_full) end at or before row r0: every row sees all of them.
  n_full = common.idiv(r0 + 1, block_k)
  n_end = common.cdiv(jax.numpy.minimum(r0 + block_q, t), block_k)
  state = lax.fori_loop(0, n_full, full_step, state)
  state = lax.fori_loop(n_full, n_end, diag_step, state)
  common.store_out(o_ref, common.finish(state), d, row_ok)


@functools.partial(jax.jit, static_argnames=("config", "interpret"))
def _fwd(q, k, v, *, config: Config, interpret: bool):
  dims = common.check_qkv(q, k, v, "flash_attention")
  b, t, n, _, g, d = dims
  d_pad = common.padded_head_dim(d)
  bq, bk = config.block_q, config.block_k
  kernel = functools.partial(
      _kernel, t=t, d=d, d_pad=d_pad, block_q=bq, block_k=bk,
      scale=d**-0.5, precision=common.dot_precision(q.dtype),
  )
  n_q_blocks = pl.cdiv(t, bq)
  k, v = common.pad_short_kv(k, v, bk)
  q_spec = common.q_block_spec(bq, n_q_blocks, d)
  kv_spec = common.kv_head_spec(k.shape[1], d, g)
  return pl.pallas_call(
      kernel,
      out_shape=jax.ShapeDtypeStruct(q.shape, q.dtype),
      grid=(n_q_blocks, n, b),
      in_specs=[q_spec, kv_spec, kv_spec],
      out_specs=q_spec,
      compiler_params=common.compiler_params(
          config.num_warps, config.num_stages
      ),
      interpret=interpret,
      name=f"minf_flash_fwd_bq{bq}_bk{bk}_d{d}",
  )(q, k, v)


@jaxtyped(typechecker=beartype)
def flash_attention_triton(
    q: Float[Array, "B T N D"],
    k: Float[Array, "B S K D"],
    v: Float[Array, "B S K D"],
    *,
    config: Config | None = None,
    interpret: bool = False,
) -> Float[Array, "B T N D"]:
  """Dense causal attention (full prefill), one launch for all heads.

  Query head n reads KV head n // (N // K); K/V are read in place (never
  repeated). Any T (the tail block is masked); D up to 256 (non powers of two
  are padded inside the kernel). f32 accumulation, output in q's dtype.

  Args:
    q: [B, T, N, D] queries (float32, bfloat16 or float16).
    k: [B, S, K, D] keys (S == T: full prefill), N % K == 0.
    v: [B, S, K, D] values.
    config: tile sizes and launch knobs; `Config.get_default(D)` if None.
    interpret: run the kernel in Pallas interpret mode (CPU tests).

  Returns:
    [B, T, N, D] attention output in q's dtype.

  Raises:
    ValueError: on inconsistent shapes.
    TypeError: on unsupported dtypes.
  """
  if config is None:
    config = Config.get_default(q.shape[-1])
  return _fwd(q, k, v, config=config, interpret=interpret)
