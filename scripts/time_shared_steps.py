"""Compile-and-run time of a per-head pattern config through one shared layer
step (pattern tables) against one step per distinct layer.

The bundled SmolLM2-135M-Instruct with its searched config
(configs/patterns/smollm2-135m-instruct.json: 30 layers, each its own mix of
A-shape, Vertical-Slash and Block-Sparse heads), prefilled layer by layer
(`CausalLM(..., layerwise_from=0)`), XLA paths (`backend="xla"`), random
tokens; first call (compiles included) and a second call, and the largest
logit difference between the two forms.

  python scripts/time_shared_steps.py OUT_DIR [T] [DTYPE]

Writes OUT_DIR/shared_steps_cpu.json and .md (rows added per (T, dtype)).
"""

import json
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from experiments.eval.attention_configs import load_pattern_file
from minference_jax import make_attention
from models import CausalLM, load_model, shared_step_attention

CONFIG = "configs/patterns/smollm2-135m-instruct.json"


def measure(t: int, dtype: str) -> dict:
  loaded = load_model(None, dtype)
  cfg = loaded.config
  patterns = load_pattern_file(CONFIG, cfg.num_layers, cfg.num_heads)
  per_layer = make_attention(patterns, backend="xla", dense_threshold=0)
  forms = {"shared_tables": shared_step_attention(per_layer, cfg.num_layers,
                                                  cfg.num_heads),
           "per_layer": per_layer}
  tokens = jnp.asarray(np.random.default_rng(0).integers(100, 40000, (1, t)),
                       jnp.int32)
  row, logits = {"T": t, "dtype": dtype}, {}
  for name, attention in forms.items():
    model = CausalLM(cfg, loaded.params, attention=attention,
                     layerwise_from=0)
    seconds = []
    for _ in range(2):
      begin = time.perf_counter()
      out, _ = model(tokens)
      out.block_until_ready()
      seconds.append(time.perf_counter() - begin)
    logits[name] = np.asarray(out, np.float32)
    row[name] = {"steps": model.layerwise.num_steps(t),
                 "first_call_s": round(seconds[0], 1),
                 "second_call_s": round(seconds[1], 2)}
    print(name, row[name], flush=True)
  row["max_abs_logit_diff"] = float(
      np.abs(logits["shared_tables"] - logits["per_layer"]).max())
  return row


def main(argv: list[str]) -> None:
  if not argv:
    sys.exit(__doc__)
  out = Path(argv[0])
  t = int(argv[1]) if len(argv) > 1 else 2048
  dtype = argv[2] if len(argv) > 2 else "bfloat16"
  out.mkdir(parents=True, exist_ok=True)
  path = out / "shared_steps_cpu.json"
  data = json.loads(path.read_text()) if path.exists() else {
      "device": str(jax.devices()[0]), "jax": jax.__version__,
      "config": CONFIG, "rows": []}
  data["rows"] = [r for r in data["rows"]
                  if (r["T"], r["dtype"]) != (t, dtype)] + [measure(t, dtype)]
  path.write_text(json.dumps(data, indent=1) + "\n")
  lines = [
      "# One shared layer step (pattern tables) against one step per layer",
      "", f"Device: {data['device']}, jax {data['jax']}; SmolLM2-135M-Instruct"
      f" (bundled GGUF) with `{CONFIG}`, layer by layer, XLA paths.",
      "Command: `python scripts/time_shared_steps.py OUT T DTYPE`.", "",
      "| T | dtype | form | compiled layer steps | first call s | second call"
      " s | max abs logit difference |", "|---|---|---|---|---|---|---|"]
  for r in data["rows"]:
    for name in ("shared_tables", "per_layer"):
      f = r[name]
      lines.append(f"| {r['T']} | {r['dtype']} | {name} | {f['steps']} |"
                   f" {f['first_call_s']} | {f['second_call_s']} |"
                   f" {r['max_abs_logit_diff']:.3g} |")
  (out / "shared_steps_cpu.md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
  main(sys.argv[1:])
