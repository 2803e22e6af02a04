"""A pattern config with the heads of some kinds run dense: which kinds of a
searched config cost accuracy (an ablation for `minference-jax eval`).

  python scripts/pattern_variant.py IN.json OUT.json KIND [KIND ...]

KIND is a pattern kind ("a_shape", "vertical_slash", "block_sparse"). The
other heads keep their patterns and budgets; the output is our pattern JSON
(`minference_jax.PatternConfig.load_json` reads it back, and so does an eval
config's `kind: pattern_file`).
"""

import json
import sys
from pathlib import Path

from minference_jax import PatternConfig
from minference_jax.patterns import PatternKind


def dense_variant(data: dict, kinds: set[str]) -> tuple[dict, int]:
  """(the config dict with heads of `kinds` dense, how many heads changed)."""
  changed = 0
  layers = []
  for layer in data["layers"]:
    row = []
    for head in layer:
      if head["kind"] in kinds:
        head, changed = {"kind": PatternKind.DENSE.value}, changed + 1
      row.append(head)
    layers.append(row)
  return {**data, "layers": layers}, changed


def main(argv: list[str]) -> None:
  if len(argv) < 3:
    sys.exit(__doc__)
  src, out, kinds = Path(argv[0]), Path(argv[1]), set(argv[2:])
  known = {k.value for k in PatternKind} - {PatternKind.DENSE.value}
  if kinds - known:
    sys.exit(f"unknown kinds {sorted(kinds - known)}; known: {sorted(known)}")
  data, changed = dense_variant(json.loads(src.read_text()), kinds)
  out.parent.mkdir(parents=True, exist_ok=True)
  out.write_text(json.dumps(data))
  PatternConfig.load_json(out)  # the result must load
  print(f"{out}: {changed} heads of {sorted(kinds)} made dense")


if __name__ == "__main__":
  main(sys.argv[1:])
