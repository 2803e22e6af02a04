"""Pallas-Triton Vertical-Slash attention over a VerticalSlashChainLayout.

The same "mixed" kernel as `pallas_triton.py` (windows, then gathered
columns), but each program finds its row block's windows itself by following
the head's successor table from the block's end, so the index layout is O(T) per
head instead of O(T * NS / 64).
"""

import functools

import jax
import jax.numpy as jnp
from jax import lax
from jax.experimental import pallas as pl
from jax.experimental.pallas import triton as plt

from pallas_kernels import common
from pallas_kernels.vertical_slash.base import Config
from pallas_kernels.vertical_slash.phases import at_least, column_phase


def _kernel(next_ref, prefix_ref, vertical_ref, q_ref, k_ref, v_ref, o_ref,
            *, t, d, d_pad, bs, block_c, scale, precision):
  """One program: one bs-row query block of one (batch, head).

  Windows: j = next[e + bs], then j = next[j] while j > 0; window
  [e - j, e - j + bs). A window is mask-free when it ends at or before the
  block's first row and holds no vertical (two scalar loads of the prefix
  counts); otherwise it takes the causal and sequence-end masks and skips
  the verticals left of the block, which the column phase computes.
  Each step's window address depends on the previous step's table load, so
  Triton's software pipeliner cannot prefetch K/V here as it does over the
  expanded layout's independent offsets (measured on an H200: 1.4-1.6x the
  expanded kernel's time; docs/kernels.md).
  """
  m = pl.num_programs(0) - 1 - pl.program_id(0)
  r0 = m * bs
  end = jnp.minimum(r0 + bs, t)
  rows = r0 + common.iota(bs)  # [bs]
  row_ok = rows < t if t % bs else None
  q = common.load_q(q_ref, bs, d, d_pad, scale, row_ok)  # [bs, Dp]

  def free_window(start, st):
    k = common.load_rows(k_ref, start, bs, d, d_pad, None)
    v = common.load_rows(v_ref, start, bs, d, d_pad, None)
    return common.attend(st, q, k, v, None, precision)

  def masked_window(start, st):
    cols = start + common.iota(bs)  # [bs]
    col_ok = cols < t
    k = common.load_rows(k_ref, start, bs, d, d_pad, col_ok)
    v = common.load_rows(v_ref, start, bs, d, d_pad, col_ok)
    left = cols < r0  # verticals here belong to the column phase
    before = plt.load(prefix_ref.at[pl.ds(start, bs)], mask=left, other=0)
    after = plt.load(prefix_ref.at[pl.ds(start + 1, bs)], mask=left, other=0)
    keep = (cols[None, :] <= rows[:, None]) & (after == before)[None, :]
    return common.attend(st, q, k, v, keep, precision)

  def window(carry):
    j, st = carry
    nxt = next_ref[j]  # issued before the window's loads and dots
    start = end - j
    n_vertical = (prefix_ref[jnp.minimum(start + bs, r0)]
                  - prefix_ref[jnp.minimum(start, r0)])
    plain = (start + (bs - 1) <= r0) & (n_vertical == 0)
    return nxt, lax.cond(plain, free_window, masked_window, start, st)

  _, state = lax.while_loop(
      lambda carry: carry[0] > 0, window,
      (next_ref[end + bs], common.init_state(bs, d_pad)),
  )
  state = column_phase(state, q, k_ref, v_ref, vertical_ref, prefix_ref[r0],
                       d=d, d_pad=d_pad, bs=bs, block_c=block_c,
                       precision=precision)
  common.store_out(o_ref, common.finish(state), d, row_ok)


@functools.partial(jax.jit, static_argnames=("block_size", "config",
                                             "interpret"))
def chain_fwd(q, k, v, window_next, vertical, vertical_prefix, *,
              block_size: int, config: Config, interpret: bool):
  """Validates and launches the chain kernel; see `vertical_slash_attention`."""
  b, t, n, _, g, d = common.check_qkv(q, k, v, "vertical_slash_attention")
  common.check_block("VerticalSlashChainLayout.block_size", block_size)
  bs = block_size
  tb = pl.cdiv(t, bs)
  size = t + bs + 1
  for name, arr in (("window_next", window_next),
                    ("vertical_prefix", vertical_prefix)):
    common.check_index_array(f"VerticalSlashChainLayout.{name}", arr,
                             (b, n, size), 3)
  common.check_index_array("VerticalSlashChainLayout.vertical", vertical,
                           (b, n), 3)
  vertical = at_least(vertical, config.block_c)
  d_pad = common.padded_head_dim(d)
  k, v = common.pad_short_kv(k, v, max(bs, config.block_c))
  kernel = functools.partial(
      _kernel, t=t, d=d, d_pad=d_pad, bs=bs, block_c=config.block_c,
      scale=d**-0.5, precision=common.dot_precision(q.dtype),
  )
  table_spec = pl.BlockSpec((None, None, size), lambda i, h, bb: (bb, h, 0))
  vertical_spec = pl.BlockSpec((None, None, vertical.shape[-1]),
                               lambda i, h, bb: (bb, h, 0))
  q_spec = common.q_block_spec(bs, tb, d)
  kv_spec = common.kv_head_spec(k.shape[1], d, g)
  return pl.pallas_call(
      kernel,
      out_shape=jax.ShapeDtypeStruct(q.shape, q.dtype),
      grid=(tb, n, b),
      in_specs=[table_spec, table_spec, vertical_spec, q_spec, kv_spec,
                kv_spec],
      out_specs=q_spec,
      compiler_params=common.compiler_params(
          config.num_warps, config.num_stages
      ),
      interpret=interpret,
      name=f"minf_vertical_slash_chain_fwd_bs{bs}_bc{config.block_c}_d{d}",
  )(window_next, vertical_prefix, vertical, q, k, v)
