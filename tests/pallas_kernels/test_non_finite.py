"""Non-finite inputs through every op's entry point and implementation
(`pallas_kernels.finite`): exactly the rows the rule flags are NaN, and
every other row equals the run with the non-finite entries replaced by 0.

The rule (a row is NaN when its query, or a key or value at or before its
position, is NaN or inf) is recomputed here in NumPy; Pallas-Triton runs in
interpret mode, Mosaic GPU in its interpret mode on one small case.
"""

import jax.numpy as jnp
import kernel_test_utils as ktu
import numpy as np
import pytest

from pallas_kernels import dispatch
from pallas_kernels.a_shape import a_shape_attention
from pallas_kernels.block_sparse import block_sparse_attention
from pallas_kernels.flash import flash_attention
from pallas_kernels.flash.xla import flash_attention_xla
from pallas_kernels.vertical_slash import vertical_slash_attention

B, T, N, KV, D = 1, 80, 4, 2, 16  # T: a full and a partial row block
OPS = {
    "flash": lambda q, k, v, lay, **kw: flash_attention(q, k, v, **kw),
    "a_shape": a_shape_attention,
    "vertical_slash": vertical_slash_attention,
    "block_sparse": block_sparse_attention,
}


def rule_rows(q, k, v, q_offset=0) -> np.ndarray:
  """[B, T, N] rows the rule makes NaN (NumPy, written from the rule)."""
  q, k, v = (np.asarray(x, np.float32) for x in (q, k, v))
  bad_q = ~np.isfinite(q).all(-1)
  bad_kv = ~(np.isfinite(k).all(-1) & np.isfinite(v).all(-1))  # [B, S, K]
  seen = np.logical_or.accumulate(bad_kv, axis=1)  # a bad key at or before
  reads = seen[:, q_offset + np.arange(q.shape[1])]  # [B, T, K]
  group = q.shape[2] // k.shape[2]
  return bad_q | reads[:, :, np.arange(q.shape[2]) // group]


def poison(rng, q, k, v):
  """q, k, v with one NaN in q, one inf in k and one NaN in v at random
  positions (k and v in different KV heads), and the zeroed versions."""
  q, k, v = (np.array(x, np.float32) for x in (q, k, v))
  t, s = q.shape[1], k.shape[1]
  q_row, k_row, v_row = rng.integers(0, t), rng.integers(0, s), rng.integers(
      0, s)
  kv_k = rng.integers(0, k.shape[2])
  kv_v = (kv_k + 1) % k.shape[2]
  q[0, q_row, rng.integers(0, q.shape[2]), rng.integers(0, D)] = np.nan
  k[0, k_row, kv_k, rng.integers(0, D)] = np.inf
  v[0, v_row, kv_v, rng.integers(0, D)] = -np.nan
  bad = tuple(jnp.asarray(x) for x in (q, k, v))
  clean = tuple(jnp.asarray(np.nan_to_num(x, nan=0.0, posinf=0.0))
                for x in (q, k, v))
  return bad, clean


def layout_for(op, rng, n, t):
  if op == "vertical_slash":
    return ktu.random_vs_layout(rng, B, n, t, 3, 20)
  if op == "block_sparse":
    return ktu.random_bs_layout(rng, B, n, t, 2)
  if op == "a_shape":
    return ktu.random_a_shape_layout(rng, n, t)
  return None


def check(out, clean_out, rows, seed, what):
  got = np.asarray(out.astype(jnp.float32))
  want = np.asarray(clean_out.astype(jnp.float32))
  assert rows.any(), f"the case flags no row ({what}, seed={seed})"
  assert np.isnan(got[rows]).all(), f"flagged rows not NaN ({what}," \
                                    f" seed={seed})"
  assert np.isfinite(got[~rows]).all(), (
      f"non-finite outside the flagged rows ({what}, seed={seed})")
  np.testing.assert_array_equal(
      got[~rows], want[~rows],
      err_msg=f"unflagged rows differ from the zeroed run ({what},"
              f" seed={seed})")


@pytest.mark.parametrize("implementation", ["xla", "pallas_triton"])
@pytest.mark.parametrize("op", sorted(OPS))
def test_flagged_rows_are_nan_and_the_others_unchanged(op, implementation):
  rng, seed = ktu.fresh_rng()
  q, k, v = ktu.random_qkv(rng, B, T, N, KV, D)
  layout = layout_for(op, rng, N, T)
  (qb, kb, vb), (qc, kc, vc) = poison(rng, q, k, v)
  run = lambda q, k, v: OPS[op](q, k, v, layout,  # noqa: E731
                                implementation=implementation,
                                interpret=True)
  check(run(qb, kb, vb), run(qc, kc, vc), rule_rows(qb, kb, vb), seed,
        f"{op} {implementation}")


def test_mosaic_gpu_interpret_flags_the_same_rows():
  rng, seed = ktu.fresh_rng()
  q, k, v = ktu.random_qkv(rng, 1, 64, 2, 1, 64, jnp.bfloat16)
  layout = ktu.random_a_shape_layout(rng, 2, 64)
  (qb, kb, vb), (qc, kc, vc) = poison(rng, q, k, v)
  cast = lambda *xs: [x.astype(jnp.bfloat16) for x in xs]  # noqa: E731
  run = lambda q, k, v: a_shape_attention(  # noqa: E731
      q, k, v, layout, implementation="pallas_mosaic_gpu", interpret=True)
  check(run(*cast(qb, kb, vb)), run(*cast(qc, kc, vc)),
        rule_rows(qb, kb, vb), seed, "a_shape pallas_mosaic_gpu")


def test_chunked_step_reads_keys_up_to_its_offset():
  """A chunked-prefill step (q_offset > 0, T < S): a row reads the keys up
  to q_offset + t, so a bad key past the chunk's last row flags nothing."""
  rng, seed = ktu.fresh_rng()
  q, k, v = ktu.random_qkv(rng, B, 16, N, KV, D, s=T)
  k = k.at[0, T - 1, 0, 0].set(jnp.nan)  # after every row: read by none
  k = k.at[0, 70, 1, 0].set(jnp.inf)  # read by rows q_offset + t >= 70
  out = flash_attention(q, k, v, q_offset=60, implementation="xla")
  rows = rule_rows(q, k, v, q_offset=60)
  assert rows[0, :10].sum() == 0 and rows[0, 10:, 2:].all(), seed
  clean = flash_attention(q, jnp.nan_to_num(k, nan=0.0, posinf=0.0), v,
                          q_offset=60, implementation="xla")
  check(out, clean, rows, seed, "flash chunk")


def test_finite_inputs_are_bit_identical_to_the_implementation():
  """The guard changes nothing for finite inputs."""
  rng, seed = ktu.fresh_rng()
  q, k, v = ktu.random_qkv(rng, B, T, N, KV, D)
  np.testing.assert_array_equal(
      np.asarray(flash_attention(q, k, v, implementation="xla")),
      np.asarray(flash_attention_xla(q, k, v)), err_msg=f"seed={seed}")


def test_entry_points_name_bad_arguments():
  q = jnp.zeros((1, 64, 2, 16))
  k = jnp.zeros((1, 64, 1, 16))
  layout = ktu.random_bs_layout(np.random.default_rng(0), 1, 2, 64, 1)
  with pytest.raises(TypeError, match="vertical_slash_attention: layout must"
                     " be a VerticalSlashLayout or VerticalSlashChainLayout,"
                     " got BlockSparseLayout"):
    vertical_slash_attention(q, k, k, layout)
  with pytest.raises(TypeError, match="flash_attention: k must be a JAX or"
                     " NumPy array, got list"):
    flash_attention(q, [1.0], k)
  with pytest.raises(ValueError, match="must be a multiple of the KV heads"):
    flash_attention(q, jnp.zeros((1, 64, 3, 16)), jnp.zeros((1, 64, 3, 16)))
  with pytest.raises(TypeError, match="share a dtype"):
    block_sparse_attention(q, k, k.astype(jnp.bfloat16), layout)
  with pytest.raises(ValueError, match="q_offset=60 must be >= 0 with"
                     " q_offset \\+ T <= S; got T=64, S=64"):
    flash_attention(q, k, k, q_offset=60)
  # NumPy inputs are taken (converted), as every implementation expects.
  out = flash_attention(np.zeros((1, 8, 2, 16), np.float32),
                        np.zeros((1, 8, 1, 16), np.float32),
                        np.zeros((1, 8, 1, 16), np.float32))
  assert out.shape == (1, 8, 2, 16)
  assert dispatch.entry_arrays("op", q, k, k)[0] is q
