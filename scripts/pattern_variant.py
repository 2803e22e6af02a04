"""A pattern config with the heads of some kinds replaced: dense, or
Vertical-Slash with given budgets (what MInference's public search does
with its Block-Sparse and A-shape winners). An ablation for
`minference-jax eval`: which kinds of a searched config cost accuracy.

  python scripts/pattern_variant.py IN.json OUT.json KIND [KIND ...]
      [--vertical-slash N_VERTICAL N_SLASH]

KIND is a pattern kind ("a_shape", "vertical_slash", "block_sparse"). The
other heads keep their patterns and budgets; the search's per-head scores
are dropped (they describe the replaced patterns). The output is our
pattern JSON, which an eval config's `kind: pattern_file` reads.
"""

import argparse
import dataclasses
import sys

from minference_jax import Dense, PatternConfig, PatternKind, VerticalSlash
from minference_jax.patterns import Pattern


def replace_kinds(config: PatternConfig, kinds: set[PatternKind],
                  replacement: Pattern) -> tuple[PatternConfig, int]:
  """(the config with heads of `kinds` replaced, how many heads changed)."""
  layers = tuple(tuple(replacement if p.kind in kinds else p for p in layer)
                 for layer in config.layers)
  changed = sum(p.kind in kinds for layer in config.layers for p in layer)
  return dataclasses.replace(config, layers=layers, scores=None), changed


def main(argv: list[str]) -> None:
  parser = argparse.ArgumentParser(
      prog="pattern_variant.py",
      description="A pattern config with the heads of some kinds replaced.")
  parser.add_argument("source")
  parser.add_argument("out")
  parser.add_argument("kinds", nargs="+")
  parser.add_argument("--vertical-slash", nargs=2, type=int,
                      metavar=("N_VERTICAL", "N_SLASH"),
                      help="replace with these Vertical-Slash budgets"
                      " (default: dense)")
  args = parser.parse_args(argv)
  known = {k.value for k in PatternKind} - {PatternKind.DENSE.value}
  unknown = set(args.kinds) - known
  if unknown:
    sys.exit(f"unknown kinds {sorted(unknown)}; known: {sorted(known)}")
  replacement = (VerticalSlash(*args.vertical_slash) if args.vertical_slash
                 else Dense())
  variant, changed = replace_kinds(PatternConfig.load_json(args.source),
                                   {PatternKind(n) for n in args.kinds},
                                   replacement)
  variant.save_json(args.out)
  print(f"{args.out}: {changed} heads of {sorted(args.kinds)} replaced by"
        f" {replacement}")


if __name__ == "__main__":
  main(sys.argv[1:])
