"""The `minference-jax` console command: one subcommand per entry point.

Each subcommand is a module of `experiments` with a `main(argv)`; the
arguments after the subcommand's name are passed to it unchanged.
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
}


def _usage() -> str:
  width = max(map(len, COMMANDS))
  lines = [f"  {name:<{width}}  {text}" for name, (_, text) in
           COMMANDS.items()]
  return ("usage: minference-jax COMMAND [ARGS...]\n\ncommands:\n"
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
