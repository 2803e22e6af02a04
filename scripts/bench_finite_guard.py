"""The cost of the entry points' non-finite guard (`pallas_kernels.finite`)
against the attention itself, on a GPU.

For each op at each length: the op's dispatch without the guard
(`<op>.OP`, the default implementations for the device), the public entry
point (guard included), the guard alone (`guard_inputs` + `mark_rows`), and
a candidate cheaper guard, "branch": one `lax.cond` on "every input is
finite" choosing between the bare dispatch and the guarded entry point, so
finite inputs pay only the three reductions (the kernel appears in both
branches; an XLA conditional copies a passed-through operand, so a cond
around the selects alone would save nothing). Each is compiled once and
timed as the median of repeats (`experiments.bench_common.time_jitted`);
compile seconds are reported beside, since the branch variant lowers the
kernel twice. Writes `<out_dir>/finite_guard.json` and `.md`.

  python scripts/bench_finite_guard.py OUT_DIR [T ...] [OP ...]

T: lengths (default 32768 131072); OP: ops to time (default all of flash,
vertical_slash, block_sparse, a_shape). The files are rewritten after every
row, so a run cut short keeps what it finished.
"""

import sys

import jax
import jax.numpy as jnp

from experiments import bench_common as bc
from pallas_kernels import a_shape, block_sparse, finite, flash, vertical_slash
from pallas_kernels.layouts import AShapeLayout

N, K, D, DTYPE = 32, 8, 128, jnp.bfloat16
OPS = ("flash", "vertical_slash", "block_sparse", "a_shape")


def _op(name: str, t: int):
  """(entry point, raw dispatch, layout or None) of one op at length t."""
  key = jax.random.key(t)
  if name == "flash":
    return flash.flash_attention, flash.OP, None
  if name == "vertical_slash":
    return (vertical_slash.vertical_slash_attention, vertical_slash.OP,
            bc.clustered_vs_layout(key, 1, N, t, 1000, 6096))
  if name == "block_sparse":
    return (block_sparse.block_sparse_attention, block_sparse.OP,
            bc.clustered_bs_layout(key, 1, N, t, 100))
  return (a_shape.a_shape_attention, a_shape.OP,
          AShapeLayout(jnp.full((N,), 128, jnp.int32),
                       jnp.full((N,), 3968, jnp.int32)))


def _branch_guarded(entry, op, q, k, v, extra, kwargs):
  """The candidate guard: the bare op when every input is finite."""
  finite = (jnp.all(jnp.isfinite(q)) & jnp.all(jnp.isfinite(k))
            & jnp.all(jnp.isfinite(v)))
  return jax.lax.cond(finite, lambda: op(q, k, v, *extra, **kwargs),
                      lambda: entry(q, k, v, *extra))


def _guard(q, k, v, out):
  rows, v = finite.guard_inputs(q, k, v)
  return finite.mark_rows(out, rows), v


COLUMNS = [
    ("op", "op"), ("T", "T"), ("raw_ms", "dispatch ms"),
    ("entry_ms", "entry point ms"), ("guard_ms", "guard alone ms"),
    ("overhead", "entry / dispatch - 1"), ("branch_ms", "branch ms"),
    ("branch_overhead", "branch / dispatch - 1"),
    ("entry_compile_s", "entry compile s"),
    ("branch_compile_s", "branch compile s")]


def main(argv) -> None:
  out_dir = argv[0] if argv else "outputs"
  lengths = [int(x) for x in argv[1:] if x.isdigit()] or [32768, 131072]
  names = [x for x in argv[1:] if not x.isdigit()] or list(OPS)
  if set(names) - set(OPS):
    sys.exit(f"unknown ops {sorted(set(names) - set(OPS))}; known: {OPS}")
  rows = []
  for t in lengths:
    q, k, v = bc.gaussian_qkv(jax.random.key(0), 1, t, N, K, D, DTYPE)
    for name in names:
      entry, op, layout = _op(name, t)
      # The layout is closed over: concrete, as the A-shape XLA path needs.
      extra = () if layout is None else (layout,)
      kwargs = dict(q_offset=0) if layout is None else {}
      raw = bc.time_jitted(
          lambda q, k, v: op(q, k, v, *extra, **kwargs),  # noqa: B023
          (q, k, v), keep_output=True)
      out = raw.pop("output")
      guarded = bc.time_jitted(
          lambda q, k, v: entry(q, k, v, *extra),  # noqa: B023
          (q, k, v))
      branch = bc.time_jitted(
          lambda q, k, v: _branch_guarded(entry, op, q, k, v,  # noqa: B023
                                          extra, kwargs),  # noqa: B023
          (q, k, v))
      guard = bc.time_jitted(_guard, (q, k, v, out))
      row = dict(op=name, T=t, N=N, K=K, D=D, raw_ms=raw["median_ms"],
                 entry_ms=guarded["median_ms"], guard_ms=guard["median_ms"],
                 branch_ms=branch["median_ms"],
                 entry_compile_s=guarded["compile_s"],
                 branch_compile_s=branch["compile_s"])
      row["overhead"] = row["entry_ms"] / row["raw_ms"] - 1.0
      row["branch_overhead"] = row["branch_ms"] / row["raw_ms"] - 1.0
      rows.append(row)
      print(row, flush=True)
      bc.write_results(out_dir, "finite_guard", bc.environment(), rows,
                       COLUMNS)
      del out


if __name__ == "__main__":
  main(sys.argv[1:])
