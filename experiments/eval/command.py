"""`minference-jax eval --config configs/eval/NAME.yaml [key=value ...]`:
the offline evaluation suite (needle grid, RULER- and InfiniteBench-style
tasks, long-text perplexity) for one model under several attention configs.

Writes under `output_dir`: results.jsonl (one line per finished case; a
rerun resumes), resolved_config.yaml, plan.json, summary.md, summary.json
and the plots; `report_only=true` rebuilds the summary and plots from
results.jsonl.
"""

import shlex

from experiments.config import command, parse_cli
from experiments.eval.config import EvalConfig


@command
def main(argv=None) -> None:
  import sys

  argv = list(sys.argv[1:] if argv is None else argv)
  cfg, _ = parse_cli(EvalConfig, argv, default_config=None)
  line = "minference-jax eval " + shlex.join(argv)
  from experiments.eval.report import write_report

  if cfg.report_only:  # earlier calls' files join the report too
    from experiments.eval.records import ResultsFile

    results = ResultsFile(cfg.output_path / "results.jsonl")
    for path in cfg.resume_from:
      results.import_from(path)
  else:
    from experiments.eval.runner import run_eval

    cfg.output_path.mkdir(parents=True, exist_ok=True)
    with (cfg.output_path / "commands.txt").open("a") as f:
      f.write(line + "\n")
    run_eval(cfg)
  paths = write_report(cfg, line)
  print(f"results: {cfg.output_path / 'results.jsonl'}")
  for name, path in paths.items():
    print(f"{name}: {path}")
