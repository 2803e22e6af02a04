"""Summary, markdown table and layer x head map of a finished search."""

import json
from collections.abc import Mapping
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.colors import to_rgb  # noqa: E402

from minference_jax.pattern_config import PatternConfig  # noqa: E402
from minference_jax.patterns import (  # noqa: E402
    AShape,
    BlockSparse,
    PatternKind,
    VerticalSlash,
)
from minference_jax.search import dense_tiles  # noqa: E402

KIND_COLORS = {PatternKind.A_SHAPE: "tab:green",
               PatternKind.VERTICAL_SLASH: "tab:blue",
               PatternKind.BLOCK_SPARSE: "tab:orange",
               PatternKind.DENSE: "tab:gray"}


def _nan(x):
  if isinstance(x, list):
    return [_nan(v) for v in x]
  return np.nan if x is None else x


def budget_label(p) -> str:
  """Short cell text: A-shape 'init+local', VS 'v/s', BS 'k<top_k>'."""
  if isinstance(p, AShape):
    return f"{p.n_init}+{p.n_local}"
  if isinstance(p, VerticalSlash):
    return f"{p.n_vertical}/{p.n_slash}"
  if isinstance(p, BlockSparse):
    return f"k{p.top_k}"
  return "dense"


def pattern_label(p) -> str:
  """A head's kind and budgets, e.g. 'vertical_slash 100/300'."""
  return "dense" if p.kind is PatternKind.DENSE else (
      f"{p.kind.value} {budget_label(p)}")


def search_summary(layers: Mapping[str, dict], config: PatternConfig,
                   seq_len: int) -> dict:
  """Shares of heads per kind, densities and recall per layer.

  Args:
    layers: the record's per-layer entries.
    config: the assembled (searched) config.
    seq_len: T.

  Returns:
    A JSON-friendly dict.
  """
  area = seq_len * (seq_len + 1) / 2
  dense = dense_tiles(seq_len)
  per_layer = []
  for i in range(config.num_layers):
    e = layers[str(i)]
    win = e["winner"]
    heads = range(len(win))
    pick = lambda x: np.asarray(_nan(x), np.float64)[win, heads]  # [N]
    recall = pick(e["recall"]["mean"])
    error = (pick(e["output_error"]["mean"]) if e["output_error"]
             else None)
    per_layer.append({
        "layer": i,
        "kinds": [p.kind.value for p in config.layers[i]],
        "budgets": [budget_label(p) for p in config.layers[i]],
        "kernel_density": float(pick(e["tiles"]).mean() / dense),
        "density": float(pick(e["covered"]).mean() / area),
        "recall": float(recall.mean()),
        "min_head_recall": float(recall.min()),
        "output_error": None if error is None else float(error.mean()),
        "target_kernel_density": e["target_tiles"] / dense,
        "seconds": e["seconds"],
    })
  total = config.num_layers * config.num_heads
  shares = {k.value: n / total for k, n in config.count_by_kind().items()}
  col = lambda key: [row[key] for row in per_layer]
  errors = [x for x in col("output_error") if x is not None]
  return {
      "seq_len": seq_len,
      "heads": total,
      "kind_share": shares,
      "mean_kernel_density": float(np.mean(col("kernel_density"))),
      "target_kernel_density": per_layer[0]["target_kernel_density"],
      "mean_density": float(np.mean(col("density"))),
      "mean_recall": float(np.mean(col("recall"))),
      "mean_output_error": float(np.mean(errors)) if errors else None,
      "search_seconds": float(np.sum(col("seconds"))),
      "layers": per_layer,
  }


def validation_summary(validation: Mapping[str, dict], num_layers: int,
                       seq_len: int) -> dict:
  """Mean recall, output error and densities per evaluated config."""
  area = seq_len * (seq_len + 1) / 2
  dense = dense_tiles(seq_len)
  names = validation["0"]["configs"]
  table = lambda key, agg=None: np.stack([np.asarray(_nan(
      validation[str(i)][key][agg] if agg else validation[str(i)][key]),
      np.float64) for i in range(num_layers)])  # [L, C, N]
  recall, worst = table("recall", "mean"), table("recall", "worst")
  error, tiles, covered = (table("output_error", "mean"), table("tiles"),
                           table("covered"))
  out = {}
  for c, name in enumerate(names):
    out[name] = {
        "recall": float(recall[:, c].mean()),
        "worst_prompt_recall": float(worst[:, c].mean()),
        "min_layer_recall": float(recall[:, c].mean(axis=1).min()),
        "output_error": float(error[:, c].mean()),
        "kernel_density": float(tiles[:, c].mean() / dense),
        "density": float(covered[:, c].mean() / area),
        "recall_per_layer": recall[:, c].mean(axis=1).round(4).tolist(),
    }
  return out


def plot_head_map(config: PatternConfig, path: str | Path,
                  title: str) -> Path:
  """Layer x head map: colour by kind, shade by the budget's rank within
  its kind, the budget written in each cell."""
  layers, heads = config.num_layers, config.num_heads
  sizes = {}
  for row in config.layers:
    for p in row:
      sizes.setdefault(p.kind, set()).add(_budget_size(p))
  image = np.ones((layers, heads, 3))
  for i, row in enumerate(config.layers):
    for h, p in enumerate(row):
      ranks = sorted(sizes[p.kind])
      t = (ranks.index(_budget_size(p)) / (len(ranks) - 1)
           if len(ranks) > 1 else 1.0)
      base = np.asarray(to_rgb(KIND_COLORS[p.kind]))
      image[i, h] = base + (1 - base) * 0.7 * (1 - t)  # light: small
  fig, ax = plt.subplots(figsize=(1.0 + 0.75 * heads, 0.8 + 0.3 * layers))
  ax.imshow(image, aspect="auto", interpolation="nearest")
  for i, row in enumerate(config.layers):
    for h, p in enumerate(row):
      ax.text(h, i, budget_label(p), ha="center", va="center", fontsize=5)
  ax.set_xticks(range(heads))
  ax.set_yticks(range(layers))
  ax.tick_params(labelsize=6)
  ax.set_xlabel("query head")
  ax.set_ylabel("layer")
  handles = [plt.Rectangle((0, 0), 1, 1, color=KIND_COLORS[k])
             for k in KIND_COLORS if k in sizes]
  fig.legend(handles, [f"{k.value} (lighter: smaller budget)"
                       for k in KIND_COLORS if k in sizes],
             loc="lower center", fontsize=6, ncol=3, frameon=False)
  ax.set_title(title, fontsize=8)
  fig.tight_layout(rect=(0, 0.035, 1, 1))
  path = Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  fig.savefig(path, dpi=110)
  plt.close(fig)
  return path


def _budget_size(p) -> int:
  if isinstance(p, AShape):
    return p.n_init + p.n_local
  if isinstance(p, VerticalSlash):
    return p.n_vertical * 1000000 + p.n_slash
  if isinstance(p, BlockSparse):
    return p.top_k
  return 0


def markdown(summary: dict, validation: dict | None, info: Mapping) -> str:
  """The results table (with the command and platform that made it)."""
  lines = [f"# Pattern search: {info.get('model')} at {summary['seq_len']}"
           " tokens", "",
           f"Command: `{info.get('command')}`  ",
           f"Ran on: {info.get('device')}, jax {info.get('jax')}, git"
           f" {info.get('git')}  ",
           f"Objective: {info.get('objective')} ({info.get('aggregate')} over"
           f" {info.get('samples')} calibration prompts); target:"
           f" {info.get('target')}; search time"
           f" {summary['search_seconds']:.0f} s.", "",
           "| kind | share of heads |", "|---|---|"]
  for kind, share in summary["kind_share"].items():
    lines.append(f"| {kind} | {100 * share:.1f}% |")
  lines += ["", f"Mean kernel density {summary['mean_kernel_density']:.3f}"
            f" (target {summary['target_kernel_density']:.3f}); mean density"
            f" of the causal area {summary['mean_density']:.3f}; mean"
            f" recall {summary['mean_recall']:.3f}.", ""]
  if validation:
    lines += [f"## Held-out validation ({info.get('held_out')})", "",
              "| config | mean recall | worst-prompt recall | min layer"
              " recall | output error | kernel density | density |",
              "|---|---|---|---|---|---|---|"]
    for name, row in validation.items():
      lines.append(f"| {name} | {row['recall']:.4f} |"
                   f" {row['worst_prompt_recall']:.4f} |"
                   f" {row['min_layer_recall']:.4f} |"
                   f" {row['output_error']:.4f} |"
                   f" {row['kernel_density']:.3f} | {row['density']:.3f} |")
    lines.append("")
  lines += ["## Per layer", "",
            "| layer | kinds (A/VS/BS) | kernel density | density | recall |"
            " min head recall | seconds |", "|---|---|---|---|---|---|---|"]
  for row in summary["layers"]:
    k = row["kinds"]
    counts = "/".join(str(k.count(x)) for x in ("a_shape", "vertical_slash",
                                                "block_sparse"))
    lines.append(f"| {row['layer']} | {counts} | {row['kernel_density']:.3f}"
                 f" | {row['density']:.3f} | {row['recall']:.4f} |"
                 f" {row['min_head_recall']:.4f} | {row['seconds']:.1f} |")
  return "\n".join(lines) + "\n"


def write_report(folder: str | Path, stem: str, summary: dict,
                 validation: dict | None, info: Mapping,
                 config: PatternConfig) -> list[Path]:
  """Writes `stem`.json, `stem`.md and `stem`_map.png under `folder`."""
  folder = Path(folder)
  folder.mkdir(parents=True, exist_ok=True)
  data = {"info": dict(info), "summary": summary, "validation": validation}
  json_path = folder / f"{stem}.json"
  json_path.write_text(json.dumps(data, indent=1) + "\n")
  md_path = folder / f"{stem}.md"
  md_path.write_text(markdown(summary, validation, info))
  png = plot_head_map(config, folder / f"{stem}_map.png",
                      f"{info.get('model')}: searched patterns at"
                      f" {summary['seq_len']} tokens")
  return [json_path, md_path, png]
