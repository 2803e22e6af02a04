"""`minference-jax synthetic-demo`: every sparse pattern on structured
synthetic Q/K/V via the XLA path (CPU).

  minference-jax synthetic-demo [seq_len=16384] [key=value ...]
      [--config configs/experiments/synthetic_demo.yaml]

Builds realistic synthetic queries/keys (`experiments.synthetic`), runs
dense attention and A-shape, Vertical-Slash and Block-Sparse (online index
building from `minference_jax.index`, attention from the XLA implementations
of `pallas_kernels`), prints one table per pattern (per head: density,
attention recall, output error vs dense; index-build and attention times,
compile time apart) and writes a PNG of the selected index sets over the
block-averaged attention map of a few heads. Writes under `out_dir` the PNG,
`synthetic_demo.json` (per pattern and head: density, recall, error; times)
and `synthetic_demo.config.yaml` (the resolved config).

Budgets: MInference's A-shape (128 + 3968) and Vertical-Slash (1000 / 6096)
defaults are sized for ~128K-token prompts (at 16K, 6096 slashes are 37% of
all diagonals and cover nearly the whole causal area). By default they are
scaled by T / 131072 (n_init and MInference's VS minimums 30 / 50 kept), so
that each pattern keeps the same share of the sequence; `budget_scale=1`
gives the raw defaults. Block-Sparse keeps MInference's top-100 key blocks
(`bs_top_k`).
"""

import dataclasses
import json
import platform
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import jax
import numpy as np
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from experiments import plots
from experiments.config import (
    CONFIGS_DIR,
    command,
    parse_cli,
    repo_relative,
    save_resolved,
)
from experiments.synthetic import SyntheticSpec, synthetic_qkv
from minference_jax import index, metrics
from pallas_kernels import a_shape, block_sparse, flash, vertical_slash
from pallas_kernels.a_shape.xla import Config as AShapeXlaConfig
from pallas_kernels.flash.xla import flash_logsumexp_xla
from pallas_kernels.layouts import compact_layout

REFERENCE_LEN = 131072  # the prompt length MInference's budgets are sized for
DEFAULT_CONFIG = CONFIGS_DIR / "experiments" / "synthetic_demo.yaml"


@dataclasses.dataclass(frozen=True)
class SyntheticDemoConfig:
  """The synthetic demo's settings (YAML keys; `key=value` overrides).

  Attributes:
    seq_len: T (queries = keys).
    heads, kv_heads, head_dim: N, K, D of the synthetic q/k/v (B = 1).
    seed: the generator's seed.
    budget_scale: multiplier on the A-shape / VS budgets; None: T / 131072.
    bs_top_k: Block-Sparse key blocks per query block.
    plot_heads: heads drawn in the PNG (the first ones).
    out_dir: folder for the PNG, synthetic_demo.json and its config.
  """

  seq_len: int = 16384
  heads: int = 8
  kv_heads: int = 2
  head_dim: int = 64
  seed: int = 0
  budget_scale: float | None = None
  bs_top_k: int = 100
  plot_heads: int = 4
  out_dir: str = "outputs"

  def __post_init__(self):
    for name in ("seq_len", "heads", "kv_heads", "head_dim", "bs_top_k"):
      if getattr(self, name) < 1:
        raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
    if self.heads % self.kv_heads:
      raise ValueError(f"heads ({self.heads}) must be a multiple of "
                       f"kv_heads ({self.kv_heads})")
    if self.budget_scale is not None and self.budget_scale <= 0:
      raise ValueError(f"budget_scale must be > 0, got {self.budget_scale}")
    if not 0 <= self.plot_heads <= self.heads:
      raise ValueError(f"plot_heads must be in [0, heads={self.heads}], got"
                       f" {self.plot_heads}")


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
    return a_shape.a_shape_attention(
        q, k, v, layout, implementation="xla",
        config=AShapeXlaConfig(max_init=a_init, max_local=a_local),
    )

  def vs_attn(q, k, v, layout):
    return vertical_slash.vertical_slash_attention(q, k, v, layout,
                                                   implementation="xla")

  def bs_attn(q, k, v, layout):
    return block_sparse.block_sparse_attention(q, k, v, layout,
                                               implementation="xla")

  def vs_index(q, k):
    indices = index.vertical_slash_indices(q, k, b.n_vertical, b.n_slash)
    return index.vertical_slash_layout(indices, seq_len)

  def bs_index(q, k):
    return index.block_sparse_indices(q, k, b.top_k)

  return [
      (f"A-shape {a_init}+{a_local}", a_index, a_attn),
      (f"Vertical-Slash {b.n_vertical}/{b.n_slash}", vs_index, vs_attn),
      (f"Block-Sparse top-{b.top_k}", bs_index, bs_attn),
  ]


def run(cfg: SyntheticDemoConfig, config_file: str | None = None) -> dict:
  """Runs the demo (module docstring); returns what its JSON holds."""
  out_dir = Path(cfg.out_dir)
  save_resolved(cfg, out_dir / "synthetic_demo.config.yaml")
  console = Console()
  t_start = time.perf_counter()
  t = cfg.seq_len
  scale = cfg.budget_scale if cfg.budget_scale else t / REFERENCE_LEN
  budgets = Budgets.scaled(scale, cfg.bs_top_k)
  console.print(
      f"[bold]synthetic demo[/]: T={t} B=1 N={cfg.heads} K={cfg.kv_heads}"
      f" D={cfg.head_dim} seed={cfg.seed}; budget scale {scale:.4g};"
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
        cfg.seed, batch=1, seq_len=t, num_heads=cfg.heads,
        num_kv_heads=cfg.kv_heads, head_dim=cfg.head_dim,
        spec=SyntheticSpec.realistic(),
    )
    q, k, v = jax.block_until_ready((data.q, data.k, data.v))
    gen_s = time.perf_counter() - t0
    progress.update(task, advance=1, description="dense attention")
    dense_out, dense_c, dense_s = _timed(
        lambda q, k, v: flash.flash_attention(q, k, v, implementation="xla"),
        q, k, v)
    progress.update(task, advance=1, description="dense log-sum-exp")
    dense_lse = jax.block_until_ready(flash_logsumexp_xla(q, k))
    progress.advance(task)

    for name, build, attend in _pattern_runs(q, k, v, budgets, cfg.heads, t):
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
    heads = list(range(min(cfg.plot_heads, cfg.heads)))
    block_maps = np.asarray(plots.block_mean_attention(q, k))[0]
    covers = {
        name: plots.tile_cover(plots.layout_key_cover(r["layout"], t))
        for name, r in results.items()
    }
    png = plots.plot_attention_patterns(
        block_maps, covers, heads,
        out_dir / f"synthetic_demo_T{t}_seed{cfg.seed}.png",
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
    for h in range(cfg.heads):
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
  record = dict(
      config_file=repo_relative(config_file), png=str(png),
      jax=jax.__version__, device=jax.devices()[0].device_kind,
      dense_s=dense_s, dense_compile_s=dense_c,
      patterns={name: dict(
          density=r["density"].tolist(), recall=r["recall"].tolist(),
          error=r["error"].tolist(),
          index_s=r["times"][1], index_compile_s=r["times"][0],
          attention_s=r["times"][3], attention_compile_s=r["times"][2])
                for name, r in results.items()})
  (out_dir / "synthetic_demo.json").write_text(json.dumps(record, indent=1))
  console.print(f"wrote {out_dir / 'synthetic_demo.json'}")
  return record


@command
def main(argv: Sequence[str] | None = None) -> None:
  cfg, path = parse_cli(SyntheticDemoConfig,
                        sys.argv[1:] if argv is None else argv,
                        DEFAULT_CONFIG)
  run(cfg, path)


if __name__ == "__main__":
  main()
