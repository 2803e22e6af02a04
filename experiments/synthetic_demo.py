"""Every sparse pattern on structured synthetic Q/K/V via the XLA path (CPU).

Run: python -m experiments.synthetic_demo [--seq-len 16384] [--out outputs]

Builds realistic synthetic queries/keys (`experiments.synthetic`), runs
dense attention and A-shape, Vertical-Slash and Block-Sparse (online index
building from `minference_jax.index`, attention from
`minference_jax.sparse_xla`), prints one table per pattern (per head: density,
attention recall, output error vs dense; index-build and attention times,
compile time apart) and writes a PNG of the selected index sets over the
block-averaged attention map of a few heads.

Budgets: MInference's A-shape (128 + 3968) and Vertical-Slash (1000 / 6096)
defaults are sized for ~128K-token prompts (at 16K, 6096 slashes are 37% of
all diagonals and cover nearly the whole causal area). By default they are
scaled by T / 131072 (n_init and MInference's VS minimums 30 / 50 kept), so
that each pattern keeps the same share of the sequence; --budget-scale 1
gives the raw defaults. Block-Sparse keeps MInference's top-100 key blocks
(--bs-top-k).
"""

import argparse
import dataclasses
import platform
import time
from pathlib import Path

import jax
import numpy as np
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from experiments import plots
from minference_jax import index, metrics
from minference_jax.sparse_xla import (
    a_shape_attention_xla,
    block_sparse_attention_xla,
    compact_layout,
    dense_attention_xla,
    dense_logsumexp_xla,
    vertical_slash_attention_xla,
)
from experiments.synthetic import SyntheticSpec, synthetic_qkv

REFERENCE_LEN = 131072  # the prompt length MInference's budgets are sized for


@dataclasses.dataclass(frozen=True)
class Budgets:
  """Per-pattern budgets used by the demo (one value for every head)."""

  n_init: int
  n_local: int
  n_vertical: int
  n_slash: int
  top_k: int

  @classmethod
  def scaled(cls, scale: float, top_k: int = 100) -> "Budgets":
    """A-shape / VS defaults times `scale` (with MInference's floors)."""
    return cls(
        n_init=128,
        n_local=max(64, round(3968 * scale)),
        n_vertical=max(30, round(1000 * scale)),
        n_slash=max(50, round(6096 * scale)),
        top_k=top_k,
    )


def _timed(fn, *args):
  """(result, compile seconds, run seconds): AOT-compiles, then runs once."""
  t0 = time.perf_counter()
  compiled = jax.jit(fn).lower(*args).compile()
  t1 = time.perf_counter()
  out = jax.block_until_ready(compiled(*args))
  return out, t1 - t0, time.perf_counter() - t1


def _pattern_runs(q, k, v, b: Budgets, n_heads: int, seq_len: int):
  """(name, index builder, attention fn) per pattern."""
  a_init, a_local = min(b.n_init, seq_len), min(b.n_local, seq_len)

  def a_index(q, k):
    del q, k
    return index.a_shape_layout((a_init,) * n_heads, (a_local,) * n_heads)

  def a_attn(q, k, v, layout):
    return a_shape_attention_xla(
        q, k, v, layout, max_init=a_init, max_local=a_local
    )

  def vs_index(q, k):
    indices = index.vertical_slash_indices(q, k, b.n_vertical, b.n_slash)
    return index.vertical_slash_layout(indices, seq_len)

  def bs_index(q, k):
    return index.block_sparse_indices(q, k, b.top_k)

  return [
      (f"A-shape {a_init}+{a_local}", a_index, a_attn),
      (f"Vertical-Slash {b.n_vertical}/{b.n_slash}", vs_index,
       vertical_slash_attention_xla),
      (f"Block-Sparse top-{b.top_k}", bs_index, block_sparse_attention_xla),
  ]


def main(argv=None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--seq-len", type=int, default=16384)
  parser.add_argument("--heads", type=int, default=8)
  parser.add_argument("--kv-heads", type=int, default=2)
  parser.add_argument("--head-dim", type=int, default=64)
  parser.add_argument("--seed", type=int, default=0)
  parser.add_argument(
      "--budget-scale", type=float, default=None,
      help="multiplier on the A-shape / VS budgets (default: T / 131072)",
  )
  parser.add_argument("--bs-top-k", type=int, default=100)
  parser.add_argument("--plot-heads", type=int, default=4)
  parser.add_argument("--out", type=Path, default=Path("outputs"))
  args = parser.parse_args(argv)

  console = Console()
  t_start = time.perf_counter()
  t = args.seq_len
  scale = args.budget_scale if args.budget_scale else t / REFERENCE_LEN
  budgets = Budgets.scaled(scale, args.bs_top_k)
  console.print(
      f"[bold]synthetic demo[/]: T={t} B=1 N={args.heads} K={args.kv_heads}"
      f" D={args.head_dim} seed={args.seed}; budget scale {scale:.4g};"
      f" jax {jax.__version__} on {jax.devices()[0].platform}"
      f" ({platform.processor() or platform.machine()})"
  )

  results = {}
  with Progress(
      TextColumn("{task.description}"), BarColumn(), TimeElapsedColumn(),
      console=console, transient=True,
  ) as progress:
    task = progress.add_task("generating Q/K/V", total=7)
    t0 = time.perf_counter()
    data = synthetic_qkv(
        args.seed, batch=1, seq_len=t, num_heads=args.heads,
        num_kv_heads=args.kv_heads, head_dim=args.head_dim,
        spec=SyntheticSpec.realistic(),
    )
    q, k, v = jax.block_until_ready((data.q, data.k, data.v))
    gen_s = time.perf_counter() - t0
    progress.update(task, advance=1, description="dense attention")
    dense_out, dense_c, dense_s = _timed(dense_attention_xla, q, k, v)
    progress.update(task, advance=1, description="dense log-sum-exp")
    dense_lse = jax.block_until_ready(dense_logsumexp_xla(q, k))
    progress.advance(task)

    for name, build, attend in _pattern_runs(q, k, v, budgets, args.heads, t):
      progress.update(task, description=f"{name}: index + attention")
      layout, idx_c, idx_s = _timed(build, q, k)
      layout = compact_layout(layout)  # trims padding the XLA path computes
      out, att_c, att_s = _timed(attend, q, k, v, layout)
      kwargs = {}
      if "A-shape" in name:
        kwargs = dict(max_init=int(layout.n_init.max()),
                      max_local=int(layout.n_local.max()))
      results[name] = dict(
          layout=layout,
          density=metrics.density_per_head(layout, t),
          recall=np.asarray(metrics.attention_recall_per_head(
              q, k, layout, dense_lse=dense_lse, **kwargs)),
          error=np.asarray(
              metrics.relative_output_error_per_head(out, dense_out)
          ),
          times=(idx_c, idx_s, att_c, att_s),
      )
      progress.advance(task)

    progress.update(task, description="block-averaged attention map")
    heads = list(range(min(args.plot_heads, args.heads)))
    block_maps = np.asarray(plots.block_mean_attention(q, k))[0]
    covers = {
        name: plots.tile_cover(plots.layout_key_cover(r["layout"], t))
        for name, r in results.items()
    }
    png = plots.plot_attention_patterns(
        block_maps, covers, heads,
        args.out / f"synthetic_demo_T{t}_seed{args.seed}.png",
        title=f"synthetic Q/K/V, T={t}: selected tiles over mean attention",
    )
    progress.advance(task)

  console.print(
      f"generation {gen_s:.2f} s; dense XLA attention {dense_s:.2f} s"
      f" (compile {dense_c:.2f} s)"
  )
  for name, r in results.items():
    idx_c, idx_s, att_c, att_s = r["times"]
    console.print(
        f"\n[bold]{name}[/]: index {idx_s:.3f} s (compile {idx_c:.2f} s),"
        f" attention {att_s:.3f} s (compile {att_c:.2f} s), dense"
        f" {dense_s:.3f} s"
    )
    table = Table()
    for col in ("head", "density", "recall", "rel. error vs dense"):
      table.add_column(col, justify="right")
    for h in range(args.heads):
      table.add_row(
          str(h), f"{r['density'][h]:.3f}", f"{r['recall'][h]:.4f}",
          f"{r['error'][h]:.2e}",
      )
    table.add_row(
        "mean", f"{r['density'].mean():.3f}", f"{r['recall'].mean():.4f}",
        f"{r['error'].mean():.2e}", style="bold",
    )
    console.print(table)
  console.print(f"attention-pattern PNG: {png}")
  console.print(f"total {time.perf_counter() - t_start:.1f} s")


if __name__ == "__main__":
  main()
