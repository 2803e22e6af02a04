"""Pallas-Triton Vertical-Slash attention over a VerticalSlashChainLayout.

The same "mixed" kernel as `pallas_triton.py` (windows, then gathered
columns), but each program finds its row block's windows itself by following
the head's run tables from the block's end, so the index layout is O(T) per
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
from pallas_kernels.vertical_slash.phases import at_least


def _kernel(next_ref, run_length_ref, run_next_ref, prefix_ref, vertical_ref,
            q_ref, k_ref, v_ref, o_ref, *, t, d, d_pad, bs, block_c, scale,
            precision):
  """One program: one bs-row query block of one (batch, head).

  Windows come in runs of contiguous windows: j = next[e + bs]; while j > 0,
  the run's run_length[j] windows start at e - j + i * bs, then
  j = run_next[j]. Only the hop from run to run is a dependent scalar load;
  inside a run the window addresses are affine in the loop index, so
  Triton's software pipeliner prefetches K/V as over the expanded layout.
  Windows ending at or before the block's first row are mask-free, the
  others (at most two per block) get the causal and sequence-end masks.
  Columns: the verticals left of the block, 64 at a time, minus those a
  run already covers (found by walking the runs alongside, both ascending).
  """
  m = pl.num_programs(0) - 1 - pl.program_id(0)
  r0 = m * bs
  end = jnp.minimum(r0 + bs, t)
  rows = r0 + common.iota(bs)  # [bs]
  row_ok = rows < t if t % bs else None
  q = common.load_q(q_ref, bs, d, d_pad, scale, row_ok)  # [bs, Dp]

  tile = functools.partial(common.attend_tile, q=q, k_ref=k_ref,
                           v_ref=v_ref, size=bs, d=d, d_pad=d_pad,
                           precision=precision)

  def free_window(first, i, st):
    return tile(st, start=first + i * bs)

  def masked_window(first, i, st):
    return tile(st, start=first + i * bs, causal_rows=rows, t=t)

  def run(carry):
    j, st = carry
    length = run_length_ref[j]
    first = end - j  # window i of the run starts at first + i * bs
    # Window i is mask-free iff first + (i + 1) * bs <= r0 + 1.
    room = r0 + 1 - first
    n_free = jnp.minimum(jnp.where(room > 0, common.idiv(
        jnp.maximum(room, 0), bs), 0), length)
    st = lax.fori_loop(0, n_free, functools.partial(free_window, first), st)
    st = lax.fori_loop(n_free, length, functools.partial(masked_window,
                                                         first), st)
    return run_next_ref[j], st

  j0 = next_ref[end + bs]
  _, state = lax.while_loop(lambda c: c[0] > 0, run,
                            (j0, common.init_state(bs, d_pad)))

  n_cols = prefix_ref[r0]  # verticals left of the block

  def chunk(c, carry):
    j, st = carry  # j: the first run that may still cover a vertical
    start = pl.multiple_of(c * block_c, block_c)
    valid = start + common.iota(block_c) < n_cols  # [bc]
    idx = plt.load(vertical_ref.at[pl.ds(start, block_c)], mask=valid,
                   other=0)
    last_col = vertical_ref[jnp.minimum(start + block_c, n_cols) - 1]

    def cover_cond(cc):
      j, _, stop = cc
      return (j > 0) & ~stop

    def cover(cc):
      j, covered, _ = cc
      lo = end - j
      hi = lo + run_length_ref[j] * bs
      covered = covered | ((idx >= lo) & (idx < hi))
      # A run reaching past this chunk may cover the next one: keep it.
      keep = (lo > last_col) | (hi > last_col)
      return jnp.where(keep, j, run_next_ref[j]), covered, keep

    j, covered, _ = lax.while_loop(
        cover_cond, cover, (j, jnp.zeros((block_c,), jnp.bool_),
                            jnp.bool_(False)))
    k = common.gather_rows(k_ref, idx, d, d_pad)
    v = common.gather_rows(v_ref, idx, d, d_pad)
    mask = jnp.broadcast_to((valid & ~covered)[None, :], (bs, block_c))
    return j, common.attend(st, q, k, v, mask, precision)

  _, state = lax.fori_loop(0, common.cdiv(n_cols, block_c), chunk,
                           (j0, state))
  common.store_out(o_ref, common.finish(state), d, row_ok)


@functools.partial(jax.jit, static_argnames=("block_size", "config",
                                             "interpret"))
def chain_fwd(q, k, v, window_next, run_length, run_next, vertical,
              vertical_prefix, *, block_size: int, config: Config,
              interpret: bool):
  """Validates and launches the chain kernel; see
  `vertical_slash_attention_triton`."""
  b, t, n, _, g, d = common.check_qkv(q, k, v, "vertical_slash_attention")
  common.check_block("VerticalSlashChainLayout.block_size", block_size)
  bs = block_size
  tb = pl.cdiv(t, bs)
  size = t + bs + 1
  for name, arr in (("window_next", window_next),
                    ("run_length", run_length), ("run_next", run_next),
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
      in_specs=[table_spec] * 4 + [vertical_spec, q_spec, kv_spec, kv_spec],
      out_specs=q_spec,
      compiler_params=common.compiler_params(
          config.num_warps, config.num_stages
      ),
      interpret=interpret,
      name=f"minf_vertical_slash_chain_fwd_bs{bs}_bc{config.block_c}_d{d}",
  )(window_next, run_length, run_next, vertical_prefix, vertical, q, k, v)
