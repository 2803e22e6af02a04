"""Tables (markdown + JSON) from results.jsonl, recomputed on every call.

Accuracy is the mean case score x 100 (RULER's scale); perplexity is
corpus-level, exp(sum NLL / sum tokens) over the documents (lm-eval's
aggregation; per-document sums are in the records for MInference's mean of
per-document PPLs), per length and per target-position bucket.
"""

import json
import math
from collections import defaultdict
from pathlib import Path

import jax

from experiments.datasets import prose
from experiments.eval import plots
from experiments.eval.config import EvalConfig
from experiments.eval.records import iter_records
from experiments.eval.runner import DIAGNOSTICS_TASK, plan_cases
from experiments.eval.tasks import TASKS

GOAL_DENSITY = 0.30  # the issue's goal: <= 30% density,
GOAL_ACCURACY_POINTS = 1.0  # within 1 point of dense accuracy,
GOAL_PPL_PERCENT = 1.0  # within 1% of dense perplexity


def load(cfg: EvalConfig, path: Path | None = None) -> list[dict]:
  """This config's finished records: planned cases only (a file may hold
  cases of an earlier, larger plan), the latest per config/task/case."""
  path = path or cfg.output_path / "results.jsonl"
  names = {a.name for a in cfg.attention}
  planned = {(c.task, c.case_id) for cases in plan_cases(cfg).values()
             for c in cases}
  planned |= {(DIAGNOSTICS_TASK, f"L={n}/d=0.5/i={i}")
              for n in cfg.lengths for i in range(cfg.density_samples)}
  latest: dict[tuple, dict] = {}
  for r in iter_records(path):
    if (r.get("status") == "ok" and r.get("attn_config") in names
        and (r.get("task"), r.get("case_id")) in planned):
      latest[(r["attn_config"], r["task"], r["case_id"])] = r
  return list(latest.values())


def _score(r: dict) -> float:
  return next(iter(r["scores"].values()))


def summarize(cfg: EvalConfig, records: list[dict]) -> dict:
  """Aggregates: accuracy, NIAH cells, perplexity, density, losses."""
  acc = defaultdict(list)  # (attn, task, L) -> scores
  cells = defaultdict(list)  # (attn, L, depth%) -> scores of niah/needle
  nll = defaultdict(lambda: [0.0, 0])  # (attn, L) -> [sum, count]
  bucket = defaultdict(lambda: [0.0, 0])  # (attn, L, lo, hi)
  doc_ppl = defaultdict(list)
  diag = defaultdict(list)  # (attn, L) -> records
  by_case = {}
  for r in records:
    attn, task, length = r["attn_config"], r["task"], r["target_length"]
    if task == DIAGNOSTICS_TASK:
      diag[(attn, length)].append(r)
    elif "nll_sum" in r:
      nll[(attn, length)][0] += r["nll_sum"]
      nll[(attn, length)][1] += r["n_tokens"]
      doc_ppl[(attn, length)].append(math.exp(r["nll_sum"] / r["n_tokens"]))
      for lo, hi, s, n in r["buckets"]:
        bucket[(attn, length, lo, hi)][0] += s
        bucket[(attn, length, lo, hi)][1] += n
    else:
      acc[(attn, task, length)].append(_score(r))
      by_case[(attn, task, r["case_id"])] = r
      if task == "niah/needle" and r.get("depth_percent") is not None:
        cells[(attn, length, r["depth_percent"])].append(_score(r))
  mean = lambda xs: 100.0 * sum(xs) / len(xs)  # noqa: E731
  out = {
      "accuracy": {f"{a}|{t}|{n}": {"acc": mean(v), "n": len(v)}
                   for (a, t, n), v in acc.items()},
      "niah": {f"{a}|{n}|{d:g}": mean(v) for (a, n, d), v in cells.items()},
      "ppl": {f"{a}|{n}": {"ppl": math.exp(s / c), "tokens": c,
                           "mean_doc_ppl": sum(doc_ppl[(a, n)])
                           / len(doc_ppl[(a, n)])}
              for (a, n), (s, c) in nll.items() if c},
      "ppl_buckets": {f"{a}|{n}|{lo}-{hi}": math.exp(s / c)
                      for (a, n, lo, hi), (s, c) in bucket.items() if c},
      "density": {},
      "losses": {},
  }
  for (a, n), rs in diag.items():
    layers = len(rs[0]["layer_recall"])
    lrec = [sum(r["layer_recall"][i] for r in rs) / len(rs)
            for i in range(layers)]
    worst = sorted(range(layers), key=lambda i: lrec[i])[:3]
    out["density"][f"{a}|{n}"] = {
        "density": sum(r["scores"]["density"] for r in rs) / len(rs),
        "recall": sum(r["scores"]["recall"] for r in rs) / len(rs),
        "worst_layers": [[i, lrec[i]] for i in worst],
        "layer_recall": lrec, "n": len(rs)}
  ref = cfg.attention[0].name
  for (a, t, cid), r in by_case.items():
    if a == ref or (ref, t, cid) not in by_case:
      continue
    lost = _score(by_case[(ref, t, cid)]) - _score(r)
    if lost > 0:
      d = r.get("depth_percent")
      key = f"{a}|{t}|{r['target_length']}|{'' if d is None else f'{d:g}'}"
      out["losses"][key] = out["losses"].get(key, 0.0) + lost
  return out


def _depth_note(cfg: EvalConfig) -> str:
  grid = [t for t in cfg.depth_tasks if t in cfg.tasks]
  if not grid:
    return ""
  depths = ", ".join(f"{100 * d:g}%" for d in cfg.depths)
  return f" (per depth {depths} for {', '.join(grid)})"


def _rope_note(cfg: EvalConfig) -> str:
  scaling = cfg.model.rope_scaling
  return f", rope_scaling {scaling}" if scaling else ""


def _fmt(x, spec=".1f"):
  return "-" if x is None else format(x, spec)


def _devices(records: list[dict]) -> str:
  kinds = sorted({r.get("device") or "?" for r in records})
  return ", ".join(kinds) if kinds else jax.devices()[0].device_kind


def _counts_note(cfg: EvalConfig, gen_tasks: list[str]) -> str:
  """What the tables average over: samples of the generation tasks,
  documents of perplexity; and the seed. One sentence."""
  clauses = []
  if gen_tasks:
    clauses += ["Scores x100", f"{cfg.samples} samples per task and length"
                f"{_depth_note(cfg)}"]
  if len(gen_tasks) < len(cfg.tasks):
    clauses.append(f"perplexity over {cfg.ppl_docs} documents per length")
  clauses.append(f"seed {cfg.seed}")
  text = "; ".join(clauses)
  return f" {text[0].upper()}{text[1:]}."


def markdown(cfg: EvalConfig, s: dict, command: str,
             devices: str = "") -> str:
  """The run's markdown summary (with the command and the device)."""
  names = [a.name for a in cfg.attention]
  ref = names[0]
  gen_tasks = [t for t in cfg.tasks if TASKS[t].metric != "perplexity"]
  head = " | ".join(names) + " |"
  rule = "|---" * (len(names) + 2) + "|"
  runs = cfg.output_path / "commands.txt"
  ran = (sorted(set(runs.read_text().split("\n")) - {""})
         if runs.is_file() else [])
  lines = [
      f"# Eval `{cfg.name}`", "",
      *(f"Run: `{c}`  " for c in ran),
      f"Command: `{command}`  ",
      f"Device: {devices or jax.devices()[0].device_kind} (as recorded),"
      f" jax {jax.__version__},"
      f" backend {cfg.backend}, dtype {cfg.model.dtype}, model"
      f" {cfg.model.path or 'SmolLM2-135M-Instruct (bundled GGUF)'}"
      f"{_rope_note(cfg)}.",
      "",
      "Length = prompt + generation reserve"
      f" ({cfg.generation_reserve} tokens), as RULER counts it; greedy"
      " decoding; prompts in the chat template with the answer prefix in"
      f" the assistant turn; haystacks from {prose.SOURCE_LABEL}"
      f" ({prose.LICENCE}), so RULER/NIAH numbers are 'RULER-KJV', not"
      " comparable 1:1 with published essay/PG-19 numbers."
      f"{_counts_note(cfg, gen_tasks)}",
  ]
  if gen_tasks:
    lines += ["", "## Accuracy (%)", "", "| task | length | n | " + head,
              rule + "---|"]
    for n in cfg.lengths:
      means = defaultdict(list)
      for t in gen_tasks:
        row = []
        for a in names:
          cell = s["accuracy"].get(f"{a}|{t}|{n}")
          row.append(_fmt(cell and cell["acc"]))
          if cell:
            means[a].append(cell["acc"])
        count = max((s["accuracy"].get(f"{a}|{t}|{n}") or {"n": 0})["n"]
                    for a in names)
        lines.append(f"| {t} | {n} | {count} | " + " | ".join(row) + " |")
      lines.append(f"| **mean** | {n} | | " + " | ".join(
          _fmt(sum(means[a]) / len(means[a]) if means[a] else None)
          for a in names) + " |")
  if s["ppl"]:
    lines += ["", "## Perplexity (corpus-level; change vs "
              f"{ref})", "", "| length | " + head, "|---" * (
                  len(names) + 1) + "|"]
    for n in cfg.lengths:
      base = s["ppl"].get(f"{ref}|{n}")
      row = []
      for a in names:
        p = s["ppl"].get(f"{a}|{n}")
        if p is None:
          row.append("-")
        elif base and a != ref:
          change = 100 * (p["ppl"] / base["ppl"] - 1)
          row.append(f"{p['ppl']:.3f} ({change:+.2f}%)")
        else:
          row.append(f"{p['ppl']:.3f}")
      lines.append(f"| {n} | " + " | ".join(row) + " |")
    longest = max(n for n in cfg.lengths
                  if any(k.startswith(f"{ref}|{n}|") for k in s["ppl_buckets"]))
    keys = sorted({k.split("|")[2] for k in s["ppl_buckets"]
                   if k.startswith(f"{ref}|{longest}|")},
                  key=lambda b: int(b.split("-")[0]))
    lines += ["", f"Perplexity per target position at {longest} tokens:",
              "", "| positions | " + head, "|---" * (len(names) + 1) + "|"]
    for b in keys:
      lines.append(f"| {b} | " + " | ".join(
          _fmt(s["ppl_buckets"].get(f"{a}|{longest}|{b}"), ".3f")
          for a in names) + " |")
  if s["density"]:
    lines += ["", "## Density and attention recall (mean over layers and"
              " heads, measured on the needle prompt at depth 50%)", "",
              "| length | " + head, "|---" * (len(names) + 1) + "|"]
    for n in cfg.lengths:
      row = []
      for a in names:
        d = s["density"].get(f"{a}|{n}")
        row.append("-" if d is None else
                   f"{d['density']:.3f} / {d['recall']:.3f}")
      lines.append(f"| {n} | " + " | ".join(row) + " |")
    lines += ["", "Lowest-recall layers (layer: recall) at the longest"
              " length:", ""]
    n = max(cfg.lengths)
    for a in names[1:]:
      d = s["density"].get(f"{a}|{n}")
      if d:
        worst = ", ".join(f"{i}: {r:.3f}" for i, r in d["worst_layers"])
        lines.append(f"- {a}: {worst}")
  lines += _goal_lines(cfg, s, names, gen_tasks)
  if s["losses"]:
    lines += ["", f"## Where configs lose against {ref}", "",
              "| config | task | length | depth % | points lost (sum over"
              " cases) |", "|---|---|---|---|---|"]
    for key, lost in sorted(s["losses"].items(), key=lambda kv: -kv[1]):
      a, t, n, d = key.split("|")
      lines.append(f"| {a} | {t} | {n} | {d or '-'} | {lost:.2f} |")
  return "\n".join(lines) + "\n"


def _goal_lines(cfg, s, names, gen_tasks) -> list[str]:
  ref = names[0]
  if len(names) < 2:
    return []
  lines = ["", f"## Goal check (vs {ref}: within {GOAL_ACCURACY_POINTS:g}"
           f" point of accuracy and {GOAL_PPL_PERCENT:g}% of perplexity at"
           f" density <= {GOAL_DENSITY:.0%})", "",
           "| config | length | density | accuracy change (points) |"
           " ppl change | meets goal |", "|---|---|---|---|---|---|"]
  for a in names[1:]:
    for n in cfg.lengths:
      d = s["density"].get(f"{a}|{n}")
      deltas = []
      for t in gen_tasks:
        x, y = (s["accuracy"].get(f"{b}|{t}|{n}") for b in (a, ref))
        if x and y:
          deltas.append(x["acc"] - y["acc"])
      dacc = sum(deltas) / len(deltas) if deltas else None
      p, q = s["ppl"].get(f"{a}|{n}"), s["ppl"].get(f"{ref}|{n}")
      dppl = 100 * (p["ppl"] / q["ppl"] - 1) if p and q else None
      if d is None and dacc is None and dppl is None:
        continue  # not run (yet)
      ok = (d is not None and d["density"] <= GOAL_DENSITY
            and (dacc is None or dacc >= -GOAL_ACCURACY_POINTS)
            and (dppl is None or dppl <= GOAL_PPL_PERCENT)
            and (dacc is not None or dppl is not None))
      lines.append(
          f"| {a} | {n} | {_fmt(d and d['density'], '.3f')} |"
          f" {_fmt(dacc, '+.2f')} | {_fmt(dppl, '+.2f')}"
          f"{'%' if dppl is not None else ''} | {'yes' if ok else 'no'} |")
  return lines


def compare(cfg: EvalConfig, records: list[dict], other_path: str) -> str:
  """Case-by-case agreement with another run's results (markdown)."""
  other = {(r["attn_config"], r["task"], r["case_id"]): r
           for r in iter_records(other_path)
           if r.get("status") == "ok" and "prediction" in r}
  rows = defaultdict(lambda: [0, 0, 0, []])
  for r in records:
    key = (r["attn_config"], r["task"], r["case_id"])
    if "prediction" not in r or key not in other:
      continue
    o = other[key]
    row = rows[r["attn_config"]]
    row[0] += 1
    row[1] += r["prediction"].strip() == o["prediction"].strip()
    row[2] += _score(r) == _score(o)
    if _score(r) != _score(o):
      row[3].append(f"{r['task']} {r['case_id']}")
  lines = ["", f"## Agreement with `{other_path}`", "",
           "| config | cases | same answer text | same score | cases with"
           " another score |", "|---|---|---|---|---|"]
  for a, (n, same, same_score, diff) in rows.items():
    lines.append(f"| {a} | {n} | {same} | {same_score} |"
                 f" {', '.join(diff[:8]) or '-'} |")
  return "\n".join(lines) + "\n"


def write_report(cfg: EvalConfig, command: str) -> dict[str, Path]:
  """Writes summary.md, summary.json and the plots; returns their paths
  (and the committed copies when `results_name` is set)."""
  out = cfg.output_path
  out.mkdir(parents=True, exist_ok=True)
  records = load(cfg)
  s = summarize(cfg, records)
  devices = _devices(records)
  text = markdown(cfg, s, command, devices)
  if cfg.compare_with:
    text += compare(cfg, records, cfg.compare_with)
  figures = plots.write_plots(cfg, s, out)
  if figures:
    prefix = f"{cfg.results_name}_" if cfg.results_name else ""
    text += "\nPlots: " + ", ".join(f"`{prefix}{p.name}`"
                                    for p in figures) + "\n"
  paths = {"md": out / "summary.md", "json": out / "summary.json"}
  meta = {"command": command, "device": devices,
          "jax": jax.__version__, "config": cfg.name,
          "n_records": len(records)}
  paths["md"].write_text(text)
  paths["json"].write_text(json.dumps({"meta": meta, **s}, indent=1))
  for p in figures:
    paths[p.stem] = p
  if cfg.results_name:
    folder = Path(__file__).resolve().parents[1] / "results"
    for kind in ("md", "json"):
      target = folder / f"{cfg.results_name}.{kind}"
      target.write_text(paths[kind].read_text())
      paths[f"results_{kind}"] = target
    for p in figures:
      target = folder / f"{cfg.results_name}_{p.name}"
      target.write_bytes(p.read_bytes())
      paths[f"results_{p.stem}"] = target
  return paths
