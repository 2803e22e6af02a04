"""Eval plots (matplotlib, PNG): the needle heatmap per attention config
(length x depth, as Kamradt's and MInference's needle figures), accuracy
against length, perplexity against density, and attention recall per
layer."""

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.colors import LinearSegmentedColormap  # noqa: E402

from experiments.eval.config import EvalConfig  # noqa: E402

# Red -> yellow -> green, as the published needle heatmaps.
_NEEDLE_CMAP = LinearSegmentedColormap.from_list(
    "needle", ["#F0496E", "#EBB839", "#0CD79F"])


def _save(fig, path: Path) -> Path:
  """Writes the figure as a PNG and frees it."""
  fig.savefig(path, dpi=120, bbox_inches="tight")
  plt.close(fig)
  return path


def _finish(fig, ax, title: str, path: Path, **legend) -> Path:
  """Grid, legend and title on a one-axes plot, then `_save`."""
  ax.grid(alpha=0.3)
  ax.legend(**legend)
  ax.set_title(title)
  return _save(fig, path)


def _niah_heatmaps(cfg: EvalConfig, s: dict, out: Path) -> Path | None:
  names = [a.name for a in cfg.attention]
  have = [a for a in names if any(k.startswith(f"{a}|") for k in s["niah"])]
  if not have:
    return None
  depths = sorted({float(k.split("|")[2]) for k in s["niah"]})
  lengths = sorted(cfg.lengths)
  fig, axes = plt.subplots(1, len(have), figsize=(3.2 * len(have) + 1, 3.6),
                           squeeze=False)
  image = None
  for col, (ax, a) in enumerate(zip(axes[0], have)):
    grid = np.full((len(depths), len(lengths)), np.nan)
    for i, d in enumerate(depths):
      for j, n in enumerate(lengths):
        v = s["niah"].get(f"{a}|{n}|{d:g}")
        if v is not None:
          grid[i, j] = v / 100.0
    image = ax.imshow(grid, cmap=_NEEDLE_CMAP, vmin=0.0, vmax=1.0,
                      aspect="auto")
    ax.set_xticks(range(len(lengths)),
                  [f"{n // 1024}K" if n % 1024 == 0 else str(n)
                   for n in lengths])
    ax.set_yticks(range(len(depths)),
                  [f"{d:g}%" for d in depths] if col == 0 else [])
    ax.set_xticks(np.arange(-0.5, len(lengths)), minor=True)
    ax.set_yticks(np.arange(-0.5, len(depths)), minor=True)
    ax.grid(which="minor", color="white", linewidth=1.5)
    ax.tick_params(which="minor", length=0)
    ax.set_title(a)
    ax.set_xlabel("context length")
  axes[0][0].set_ylabel("needle depth")
  fig.colorbar(image, ax=axes[0].tolist(), label="score")
  fig.suptitle(f"Needle in a haystack: {cfg.name}")
  return _save(fig, out / "niah_heatmap.png")


def _accuracy_vs_length(cfg: EvalConfig, s: dict, out: Path) -> Path | None:
  if not s["accuracy"] or len(cfg.lengths) < 2:
    return None
  fig, ax = plt.subplots(figsize=(5.5, 3.8))
  for a in (x.name for x in cfg.attention):
    xs, ys = [], []
    for n in sorted(cfg.lengths):
      vals = [v["acc"] for k, v in s["accuracy"].items()
              if k.startswith(f"{a}|") and k.endswith(f"|{n}")]
      if vals:
        xs.append(n)
        ys.append(sum(vals) / len(vals))
    if xs:
      ax.plot(xs, ys, marker="o", label=a)
  ax.set_xscale("log", base=2)
  ax.set_xticks(sorted(cfg.lengths), [str(n) for n in sorted(cfg.lengths)])
  ax.set_xlabel("context length (tokens)")
  ax.set_ylabel("mean accuracy over tasks (%)")
  ax.set_ylim(0, 100)
  return _finish(fig, ax, f"Accuracy against length: {cfg.name}",
                 out / "accuracy_vs_length.png", fontsize=8)


def _ppl_vs_density(cfg: EvalConfig, s: dict, out: Path) -> Path | None:
  ref = cfg.attention[0].name
  points = []
  for a in (x.name for x in cfg.attention):
    for n in cfg.lengths:
      d = s["density"].get(f"{a}|{n}")
      p, q = s["ppl"].get(f"{a}|{n}"), s["ppl"].get(f"{ref}|{n}")
      if d and p and q:
        points.append((a, n, d["density"], 100 * (p["ppl"] / q["ppl"] - 1)))
  if not points:
    return None
  fig, ax = plt.subplots(figsize=(5.5, 3.8))
  for a in dict.fromkeys(p[0] for p in points):
    mine = [p for p in points if p[0] == a]
    ax.scatter([p[2] for p in mine], [p[3] for p in mine], label=a)
    for _, n, x, y in mine:
      ax.annotate(f"{n // 1024}K", (x, y), fontsize=7,
                  xytext=(3, 3), textcoords="offset points")
  ax.axhline(1.0, color="grey", linestyle=":", linewidth=1)
  ax.axvline(0.30, color="grey", linestyle=":", linewidth=1)
  ax.set_xlabel("density (fraction of the causal area)")
  ax.set_ylabel(f"perplexity change vs {ref} (%)")
  return _finish(fig, ax, f"Perplexity against density: {cfg.name}",
                 out / "ppl_vs_density.png", fontsize=8)


def _layer_recall(cfg: EvalConfig, s: dict, out: Path) -> Path | None:
  """Attention recall per layer of each sparse config (where it loses)."""
  curves = [(a.name, n, s["density"][f"{a.name}|{n}"]["layer_recall"])
            for a in cfg.attention[1:] for n in sorted(cfg.lengths)
            if f"{a.name}|{n}" in s["density"]]
  if not curves:
    return None
  fig, ax = plt.subplots(figsize=(6.5, 3.8))
  for name, n, recall in curves:
    ax.plot(range(len(recall)), recall, marker=".",
            label=f"{name} {n // 1024}K")
  ax.set_xlabel("layer")
  ax.set_ylabel("attention recall (mean over heads)")
  ax.set_ylim(0, 1.02)
  return _finish(fig, ax, f"Recall per layer: {cfg.name}",
                 out / "layer_recall.png", fontsize=7, ncol=2)


def write_plots(cfg: EvalConfig, s: dict, out: Path) -> list[Path]:
  """Writes the plots that the summary has data for; returns their paths."""
  made = [_niah_heatmaps(cfg, s, out), _accuracy_vs_length(cfg, s, out),
          _ppl_vs_density(cfg, s, out), _layer_recall(cfg, s, out)]
  return [p for p in made if p is not None]
