"""The `minference-jax` console command: one subcommand per entry point.

Each subcommand is a module of `experiments` with a `main(argv)`; the
arguments after the subcommand's name are passed to it unchanged. Every
command takes `--config FILE.yaml` plus `key=value` overrides
(`experiments/config.py`). Without `--config`, `search` reads
`configs/search/paper.yaml`, `bench-prefill`
`configs/experiments/prefill_llama3_8b.yaml`, and the other commands
`configs/experiments/<name>.yaml` (the command's name with `_` for `-`);
`eval` has no default file (its configs are under `configs/eval/`; without
one it runs its config dataclass's defaults).
"""

import importlib
import sys

# name -> (module, one-line help)
COMMANDS = {
    "demo": ("experiments.demo",
             "SmolLM2 needle-in-a-haystack, dense vs sparse (CPU)"),
    "synthetic-demo": ("experiments.synthetic_demo",
                       "every pattern on synthetic Q/K/V"),
    "search": ("experiments.search", "offline kernel-aware pattern search"),
    "generate": ("experiments.generate",
                 "greedy generation for any prompt and model"),
    "bench-kernels": ("experiments.bench_kernels",
                      "the sparse kernels vs cuDNN dense (GPU)"),
    "check-kernels": ("experiments.check_kernels",
                      "the kernels' GPU correctness tests (pytest -m gpu)"),
    "model-indices": ("experiments.model_indices",
                      "a real model's sparse index sets at long context"),
    "bench-prefill": ("experiments.bench_prefill",
                      "whole-model long-context prefill: time and memory"),
    "search-bench": ("experiments.search_bench",
                     "the pattern search's wall time for a whole model"),
    "eval": ("experiments.eval.command",
             "offline eval: NIAH grid, RULER/InfiniteBench tasks, perplexity"),
}


def _usage() -> str:
  width = max(map(len, COMMANDS))
  lines = [f"  {name:<{width}}  {text}" for name, (_, text) in
           COMMANDS.items()]
  return ("usage: minference-jax COMMAND [--config FILE.yaml] [key=value ...]"
          "\n\ncommands:\n"
          + "\n".join(lines))


def main(argv=None) -> None:
  argv = sys.argv[1:] if argv is None else list(argv)
  if not argv or argv[0] in ("-h", "--help"):
    print(_usage())
    raise SystemExit(0 if argv else 2)
  name, rest = argv[0], argv[1:]
  if name not in COMMANDS:
    print(f"error: unknown command {name!r}\n{_usage()}", file=sys.stderr)
    raise SystemExit(2)
  module = importlib.import_module(COMMANDS[name][0])
  module.main(rest)


if __name__ == "__main__":
  main()
