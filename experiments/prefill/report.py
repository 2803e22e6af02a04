"""Result files of bench-prefill: JSON (rewritten after every case), a
markdown table, a log-log plot of latency against length, a short table
on stdout.

  python -m experiments.prefill.report RESULT.json [--reference]

rewrites the markdown and the plot beside a result file and prints the
table (e.g. after a run that a time limit ended).
"""

import argparse
import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from experiments.config import ConfigError  # noqa: E402
from experiments.prefill.accounting import PHASES  # noqa: E402

# MInference's end-to-end prefill of LLaMA-3-8B-Instruct-Gradient-1048k on
# one A100 80GB (seconds; its experiments/README.md latency table, also the
# paper's first figure): FlashAttention-2 dense and MInference.
A100_REFERENCE = {
    "FlashAttention-2 (A100, paper)": {
        100_000: 24.883, 200_000: 79.392, 300_000: 169.624,
        500_000: 456.784, 1_000_000: 1765.564},
    "MInference (A100, paper)": {
        100_000: 13.985, 200_000: 26.813, 300_000: 41.094,
        500_000: 66.277, 1_000_000: 179.120},
}


def row_key(row: dict) -> tuple:
  return (row["case"], int(row["T"]), row["mode"])


def load_results(path) -> tuple[list[dict], list[dict]]:
  """(rows, earlier runs' environments) of a result file, or ([], []).

  The environments are the file's own meta (device, date, command, ...)
  and the runs it had resumed from.

  Raises:
    ConfigError: a file that is not a result (not JSON, not an object).
  """
  path = Path(path)
  if not path.is_file():
    return [], []
  try:
    data = json.loads(path.read_text())
  except json.JSONDecodeError as e:
    # Resuming from it would overwrite it: a damaged file stops the run.
    raise ConfigError(f"{path} is not a bench-prefill result (not JSON:"
                      f" {e}); move it away or set resume=false") from None
  if not isinstance(data, dict):
    raise ConfigError(f"{path} is not a bench-prefill result (a JSON"
                      f" {type(data).__name__}, not an object)")
  meta = dict(data.get("meta", {}))
  earlier = list(meta.pop("earlier_runs", []))
  meta.pop("crossover", None)
  return list(data.get("rows", [])), earlier + [meta]


def _fmt(v, digits: int = 3) -> str:
  if v is None or v == "":
    return ""
  if isinstance(v, bool):
    return "yes" if v else "no"
  if isinstance(v, float):
    return f"{v:.{digits}g}" if abs(v) < 1e4 else f"{v:,.0f}"
  return str(v)


COLUMNS = [
    ("case", "case"), ("T", "T"), ("mode", "mode"),
    ("implementation", "kernels"), ("layers", "layers run"),
    ("model_s", "prefill s"), ("vs_dense", "x dense"),
    ("repeats", "runs"), ("compile_s", "compile s"),
    ("executables", "executables"), ("density", "density"),
    ("line_density", "line density"),
    ("peak_gib", "peak GiB"), ("estimate_gib", "estimate GiB"),
    ("xla_predicted_gib", "XLA buffers GiB"), ("note", "note"),
]


def _layers(row: dict) -> str:
  if row.get("layers_run") is None:
    return ""
  text = f"{row['layers_run']}/{row['layers_full']}"
  return text + " (scaled)" if row.get("scaled") else text


def markdown(meta: dict, rows: list[dict]) -> str:
  """The result table (with the command and environment) as markdown."""
  lines = [f"# {meta.get('name', 'bench-prefill')}", ""]
  for key in ("command", "device", "jax", "jaxlib", "git_sha", "date",
              "model", "memory_note"):
    if meta.get(key):
      lines.append(f"- {key}: `{meta[key]}`")
  lines += ["", "Prefill s: median wall time of the whole prefill"
            " (embedding, every layer, logits of the last position); rows"
            " marked (scaled) ran the listed layers and were scaled to all"
            " layers (embedding and logits counted once). x dense: the"
            " dense case of the same length and mode over this one."
            " density: the share of the causal area the sparse kernels"
            " computed (phase runs); line density: the share of the causal"
            " triangle's cells on replayed Vertical-Slash lines (element"
            " level: the kernels compute the 64 x 64 tiles around them).",
            ""]
  lines.append("| " + " | ".join(h for _, h in COLUMNS) + " |")
  lines.append("|" + "---|" * len(COLUMNS))
  for r in rows:
    cells = []
    for key, _ in COLUMNS:
      if key == "layers":
        cells.append(_layers(r))
      elif key == "note":
        cells.append(r.get("error") or r.get("skipped") or
                     r.get("memory_note") or "")
      else:
        cells.append(_fmt(r.get(key)))
    lines.append("| " + " | ".join(cells) + " |")
  phased = [r for r in rows if r.get("phases")]
  if phased:
    lines += ["", "## Phases (seconds, synchronised piece run)", "",
              "| case | T | " + " | ".join(PHASES) + " | pipelined s |",
              "|" + "---|" * (len(PHASES) + 3)]
    for r in phased:
      sec = r["phases"]["seconds"]
      lines.append(f"| {r['case']} | {r['T']} | "
                   + " | ".join(_fmt(sec.get(p)) for p in PHASES)
                   + f" | {_fmt(r['phases'].get('pipelined_s'))} |")
  if meta.get("crossover"):
    lines += ["", "## Crossover (smallest T from which sparse wins at every"
              " larger measured T)", "",
              "| case | kernels | level | crossover T | speed-up by T |",
              "|---|---|---|---|---|"]
    for label, c in meta["crossover"].items():
      for level in ("layer", "model"):
        if level in c:
          lines.append(f"| {label} | {c.get('implementation', '')} |"
                       f" {level} | {c[level]['crossover_T']} |"
                       f" {c[level]['speedup']} |")
  return "\n".join(lines) + "\n"


def write(out_dir: str, name: str, meta: dict, rows: list[dict]) -> Path:
  """Rewrites `<name>.json` and `<name>.md`; returns the JSON path."""
  out = Path(out_dir)
  out.mkdir(parents=True, exist_ok=True)
  path = out / f"{name}.json"
  tmp = path.with_suffix(".json.tmp")
  tmp.write_text(json.dumps(dict(meta=meta, rows=rows), indent=1,
                            default=str))
  tmp.replace(path)
  (out / f"{name}.md").write_text(markdown(meta, rows))
  return path


def plot(out_dir: str, name: str, rows: list[dict],
         reference: bool = False) -> Path | None:
  """Log-log prefill seconds against T per case (mode "prefill")."""
  done = [r for r in rows if r.get("model_s") and r["mode"] == "prefill"]
  if not done:
    return None
  fig, ax = plt.subplots(figsize=(7, 4.5))
  for label in dict.fromkeys(r["case"] for r in done):
    pts = sorted((r["T"], r["model_s"], r.get("scaled", False))
                 for r in done if r["case"] == label)
    ts, ys = [p[0] for p in pts], [p[1] for p in pts]
    (line,) = ax.plot(ts, ys, marker="o", label=label)
    scaled = [(t, y) for t, y, s in pts if s]
    if scaled:
      ax.plot(*zip(*scaled), marker="o", linestyle="none", mfc="white",
              color=line.get_color())
  if reference:
    for label, pts in A100_REFERENCE.items():
      ax.plot(list(pts), list(pts.values()), linestyle=":", color="grey",
              marker="x", label=label)
  ax.set_xscale("log", base=2)
  ax.set_yscale("log")
  ax.set_xlabel("prompt tokens T")
  ax.set_ylabel("prefill seconds (whole model)")
  ax.set_title(f"{name}: time to first token (hollow: scaled from fewer"
               " layers)", fontsize=9)
  ax.grid(True, which="both", alpha=0.3)
  ax.legend(fontsize=7)
  fig.tight_layout()
  path = Path(out_dir) / f"{name}.png"
  fig.savefig(path, dpi=120)
  plt.close(fig)
  return path


def print_table(rows: list[dict]) -> None:
  """The short table printed last."""
  print(f"\n{'case':28} {'T':>8} {'mode':10} {'layers':>12} {'prefill s':>10}"
        f" {'x dense':>8} {'compile s':>9} {'peak GiB':>9} {'est GiB':>8}")
  for r in rows:
    if r.get("error") or r.get("skipped"):
      why = (r.get("error") or r.get("skipped"))[:60]
      print(f"{r['case'][:28]:28} {r['T']:>8} {r['mode']:10} -- {why}")
      continue
    print(f"{r['case'][:28]:28} {r['T']:>8} {r['mode']:10}"
          f" {_layers(r):>12} {_fmt(r.get('model_s')):>10}"
          f" {_fmt(r.get('vs_dense')):>8} {_fmt(r.get('compile_s')):>9}"
          f" {_fmt(r.get('peak_gib')):>9} {_fmt(r.get('estimate_gib')):>8}")


def main(argv=None) -> None:
  ap = argparse.ArgumentParser(description="bench-prefill result files")
  ap.add_argument("result", type=Path)
  ap.add_argument("--reference", action="store_true",
                  help="add MInference's A100 figures (LLaMA-3-8B) to the plot")
  args = ap.parse_args(argv)
  data = json.loads(args.result.read_text())
  name, out = args.result.stem, args.result.parent
  write(str(out), name, data.get("meta", {}), data["rows"])
  plot(str(out), name, data["rows"], reference=args.reference)
  print_table(data["rows"])


if __name__ == "__main__":
  main()
