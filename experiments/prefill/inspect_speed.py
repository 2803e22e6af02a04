"""Compile time and memory of the library's prefill paths, read from XLA on
a CPU.

  python -m experiments.prefill.inspect_speed [--out experiments/results]
      [--layers 2 8 16] [--quick]

Nothing needs a GPU or the memory of the sizes studied: arrays are abstract
(`jax.ShapeDtypeStruct`) and programs are compiled for the CPU, whose
buffer assignment sizes every temporary. Sections:

1. compile: trace + lower + compile time of `models.forward` under one
   jit (the unrolled model) against `models.LayerwisePrefill.compile`
   (embedding, one step per distinct layer, logits; its programs compiled
   one by one, and by one thread per core), tiny llama geometry,
   Vertical-Slash through XLA, for growing depth; once with the same
   pattern on every layer (one layer step) and once with a different
   budget per layer (one step per layer, the worst case). Wall and CPU
   seconds (this process, all threads: the fair measure on a shared CPU).
2. memory: XLA's buffer sizes of one decoder layer step
   (`models.decoder.DecoderLayer`, residual donated) with the sequence
   chunking of `models.layers.seq_chunked` against the copying chunking it
   replaced (inputs split into [chunks, ...], outputs stacked and merged;
   kept here as `copying_seq_chunked` for the comparison). The attention
   is an identity (o = q) so that the chunked parts are what is measured.

Writes `<out>/prefill_speed_cpu.json` and `.md`.
"""

import argparse
import dataclasses
import json
import time
from pathlib import Path
from unittest import mock

import jax
import jax.numpy as jnp

from minference_jax import PatternConfig, VerticalSlash, make_attention
from models import LayerwisePrefill, ModelConfig, forward_jit, param_shapes
from models import layers as model_layers
from models.decoder import DecoderLayer

GIB = 1024**3


def abstract(shape, dtype=jnp.bfloat16):
  return jax.ShapeDtypeStruct(tuple(shape), dtype)


# ------------------------------------------------------------- compile
def _timed(fn) -> tuple[float, float, object]:
  wall, cpu = time.perf_counter(), time.process_time()
  out = fn()
  return time.perf_counter() - wall, time.process_time() - cpu, out


def compile_times(layer_counts, t: int = 512) -> list[dict]:
  """Seconds to compile the forward and the layerwise prefill."""
  rows = []
  tokens = abstract((1, t), jnp.int32)
  for n in layer_counts:
    config = ModelConfig.tiny("llama", num_layers=n)
    params = param_shapes(config, jnp.float32)
    n_heads = config.num_heads
    uniform = make_attention(VerticalSlash(64, 128), "xla")
    distinct = make_attention(PatternConfig(layers=tuple(
        (VerticalSlash(64 + i, 128),) * n_heads for i in range(n))), "xla")
    for label, attention in (("same pattern", uniform),
                             ("pattern per layer", distinct)):
      row = dict(layers=n, attention=label)
      row["forward_s"], row["forward_cpu_s"], _ = _timed(
          lambda: forward_jit.lower(
              params, tokens, config=config, attention=attention,
              logits_for="last", chunk_size=None).compile())
      for workers, key in ((1, "layerwise"), (None, "layerwise_threads")):
        # A config of another name: no trace, lowering or compile of the
        # run before is reused from JAX's in-memory caches.
        fresh = dataclasses.replace(config, name=f"{config.name}_{key}")
        run = LayerwisePrefill(fresh, attention)
        row[f"{key}_s"], row[f"{key}_cpu_s"], compiled = _timed(
            lambda run=run, workers=workers: run.compile(
                params, tokens, workers=workers))
      row["layer_steps"] = compiled.executables - 2
      rows.append(row)
      print(json.dumps(row), flush=True)
  return rows


# -------------------------------------------------------------- memory
def copying_seq_chunked(fn, chunk, *xs, shards=1, in_place=False):
  """The former `seq_chunked` (split, `lax.map`, merge), for comparison."""
  del in_place  # it always wrote a new output
  t = xs[0].shape[1]
  local = t // shards
  if chunk is None or local <= chunk:
    return fn(*xs)
  n = -(-local // chunk)
  pad = n * chunk - local

  def split(a):
    a = a.reshape(a.shape[0], shards, local, *a.shape[2:])
    if pad:
      widths = [(0, 0)] * a.ndim
      widths[2] = (0, pad)
      a = jnp.pad(a, widths)
    a = a.reshape(a.shape[0], shards, n, chunk, *a.shape[3:])
    return jnp.moveaxis(a, 2, 0)

  def step(args):
    return fn(*[a.reshape(a.shape[0], shards * chunk, *a.shape[3:])
                for a in args])

  def merge(a):
    a = a.reshape(n, a.shape[1], shards, chunk, *a.shape[3:])
    a = jnp.moveaxis(a, 0, 2)
    a = a.reshape(a.shape[0], shards, n * chunk, *a.shape[4:])[:, :, :local]
    return a.reshape(a.shape[0], t, *a.shape[3:])

  out = jax.lax.map(step, tuple(split(a) for a in xs))
  return jax.tree.map(merge, out)


@dataclasses.dataclass(frozen=True)
class IdentityAttention:
  """o = q: no attention memory, so the chunked blocks are measured."""

  def __call__(self, q, k, v, *, layer_idx, q_offset=0):
    del k, v, layer_idx, q_offset
    return q


def layer_memory(config: ModelConfig, t: int, chunk: int,
                 copying: bool) -> dict:
  """XLA CPU buffer sizes of one layer step (bf16, x donated)."""
  p = param_shapes(config, jnp.bfloat16)["layers"][0]
  x = abstract((1, t, config.hidden_size))
  cs = abstract((1, t, config.rope.rotary_dim // 2), jnp.float32)
  layer = DecoderLayer(config, IdentityAttention(), 0, chunk)

  def step(p, x, cos, sin):
    return layer.apply({"params": p}, x, cos, sin, None, 0, 0)[0]

  patch = (mock.patch.object(model_layers, "seq_chunked",
                             copying_seq_chunked) if copying
           else mock.patch.object(model_layers, "seq_chunked",
                                  model_layers.seq_chunked))
  with patch:
    compiled = jax.jit(step, donate_argnums=1).lower(p, x, cs, cs).compile()
  m = compiled.memory_analysis()
  full = t * config.hidden_size * 2
  return dict(T=t, chunk=chunk, hidden=config.hidden_size,
              intermediate=config.intermediate_size,
              chunking="copying (former)" if copying else "in place",
              temp_gib=m.temp_size_in_bytes / GIB,
              output_gib=m.output_size_in_bytes / GIB,
              alias_gib=m.alias_size_in_bytes / GIB,
              temp_in_residuals=m.temp_size_in_bytes / full)


def small_geometry() -> ModelConfig:
  """H 1024, I 4096, N/K 16/4, D 64 (a small GQA decoder)."""
  base = ModelConfig.tiny("llama")
  return dataclasses.replace(
      base, hidden_size=1024, intermediate_size=4096, num_heads=16,
      num_kv_heads=4, head_dim=64, vocab_size=1024,
      rope=dataclasses.replace(base.rope, rotary_dim=64))


def markdown(res: dict) -> str:
  out = ["# Prefill compile time and layer memory on a CPU (XLA)", "",
         "Command: `python -m experiments.prefill.inspect_speed`"
         f" ({res['date']}, jax {jax.__version__}, CPU shared with other"
         " jobs: compile times are indicative). Arrays are abstract; sizes"
         " are XLA's CPU buffer assignment.", "",
         "## 1. Compile: whole-model forward vs layerwise prefill", "",
         "Tiny llama (H 64, N/K 4/2), T = 512, Vertical-Slash (64, 128)"
         " through XLA; seconds of trace + lower + compile.", "",
         "| layers | attention | layer steps | forward (one jit) wall / CPU"
         " s | layerwise, one by one, wall / CPU s | layerwise, threads,"
         " wall / CPU s |", "|---|---|---|---|---|---|"]
  for r in res["compile"]:
    out.append(
        f"| {r['layers']} | {r['attention']} | {r['layer_steps']} |"
        f" {r['forward_s']:.1f} / {r['forward_cpu_s']:.1f} |"
        f" {r['layerwise_s']:.1f} / {r['layerwise_cpu_s']:.1f} |"
        f" {r['layerwise_threads_s']:.1f} /"
        f" {r['layerwise_threads_cpu_s']:.1f} |")
  out += ["", "## 2. One layer step: sequence chunking in place vs the"
          " former copying chunking", "",
          "bf16, residual donated, identity attention; temp = XLA's"
          " temporaries (GiB), also in units of one [T, H] residual.", "",
          "| H / I | T | chunk | chunking | temp GiB | temp / residual |"
          " output aliased GiB |", "|---|---|---|---|---|---|---|"]
  for r in res["memory"]:
    out.append(f"| {r['hidden']} / {r['intermediate']} | {r['T']:,} |"
               f" {r['chunk']:,} | {r['chunking']} | {r['temp_gib']:.2f} |"
               f" {r['temp_in_residuals']:.2f} | {r['alias_gib']:.2f} |")
  return "\n".join(out) + "\n"


def main(argv=None) -> None:
  ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  ap.add_argument("--out", default="experiments/results")
  ap.add_argument("--layers", type=int, nargs="+", default=[2, 8, 16])
  ap.add_argument("--quick", action="store_true",
                  help="small sizes only (a smoke run)")
  ap.add_argument("--sections", nargs="+", default=["memory", "compile"],
                  choices=["memory", "compile"],
                  help="sections to run (the others are kept from the"
                  " existing JSON)")
  args = ap.parse_args(argv)
  out = Path(args.out)
  path = out / "prefill_speed_cpu.json"
  res = json.loads(path.read_text()) if path.is_file() else {}
  res.update(date=time.strftime("%Y-%m-%d"), jax=jax.__version__)
  small = small_geometry()
  sizes = ([(small, 16384, 4096)] if args.quick else
           [(small, 262144, 16384), (small, 262144, 20000),
            (ModelConfig.preset("llama3_8b_1048k"), 1 << 20, 65536)])
  if "memory" in args.sections:
    res["memory"] = []
    for config, t, chunk in sizes:
      for copying in (True, False):
        res["memory"].append(layer_memory(config, t, chunk, copying))
        print(json.dumps(res["memory"][-1]), flush=True)
  if "compile" in args.sections:
    res["compile"] = compile_times([2] if args.quick else args.layers)
  out.mkdir(parents=True, exist_ok=True)
  path.write_text(json.dumps(res, indent=1))
  (out / "prefill_speed_cpu.md").write_text(markdown(res))
  print(markdown(res))


if __name__ == "__main__":
  main()
