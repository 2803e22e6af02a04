"""A pattern config with the heads of some kinds run dense: which kinds of a
searched config cost accuracy (an ablation for `minference-jax eval`).

  python scripts/pattern_variant.py IN.json OUT.json KIND [KIND ...]

KIND is a pattern kind ("a_shape", "vertical_slash", "block_sparse"). The
other heads keep their patterns and budgets; the search's per-head scores
are dropped (they describe the replaced patterns). The output is our
pattern JSON, which an eval config's `kind: pattern_file` reads.
"""

import dataclasses
import sys

from minference_jax import Dense, PatternConfig, PatternKind


def dense_variant(config: PatternConfig,
                  kinds: set[PatternKind]) -> tuple[PatternConfig, int]:
  """(the config with heads of `kinds` dense, how many heads changed)."""
  layers = tuple(tuple(Dense() if p.kind in kinds else p for p in layer)
                 for layer in config.layers)
  changed = sum(p.kind in kinds for layer in config.layers for p in layer)
  return dataclasses.replace(config, layers=layers, scores=None), changed


def main(argv: list[str]) -> None:
  if len(argv) < 3:
    sys.exit(__doc__)
  src, out, names = argv[0], argv[1], set(argv[2:])
  known = {k.value for k in PatternKind} - {PatternKind.DENSE.value}
  if names - known:
    sys.exit(f"unknown kinds {sorted(names - known)}; known: {sorted(known)}")
  variant, changed = dense_variant(PatternConfig.load_json(src),
                                   {PatternKind(n) for n in names})
  variant.save_json(out)
  print(f"{out}: {changed} heads of {sorted(names)} made dense")


if __name__ == "__main__":
  main(sys.argv[1:])
