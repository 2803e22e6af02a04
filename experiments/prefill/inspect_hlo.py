"""Where a long prefill's time and memory go, read from XLA on a CPU.

  python -m experiments.prefill.inspect_hlo [--out experiments/results]
      [--lengths 131072 1048576] [--quick]

Nothing here needs a GPU or the memory of the sizes it studies: every
array is abstract (`jax.ShapeDtypeStruct`), programs are only lowered (for
an abstract H200, the GPU kernels included) or compiled for the CPU, whose
buffer assignment sizes every temporary. Sections:

1. memory: XLA's buffer sizes of one LLaMA-3-8B layer step (dense and
   online Vertical-Slash through the XLA path) and of the Vertical-Slash
   layout builder, beside `models.memory`'s terms.
2. MLP chunks: the out-projection + MLP piece at each chunk size: XLA's
   temporaries and the full-size copies the chunking adds.
3. compile: trace + lower + CPU compile time of `models.forward` under one
   jit against one layer step, for growing layer counts.
4. GPU kernels: Pallas calls per layer in the program lowered for an H200
   (Mosaic GPU / Triton custom calls), host callbacks, and how many
   distinct layer programs MInference's Llama-3-8B config needs with
   static and with traced per-head budgets.

Writes `<out>/prefill_inspect_cpu.json` and `.md`.
"""

import argparse
import collections
import dataclasses
import json
import re
import time
from pathlib import Path

import jax
import jax.numpy as jnp

from experiments.prefill import ops
from experiments.prefill.pieces import DecoderPieces, memory_analysis
from minference_jax import PatternConfig, VerticalSlash, make_attention
from minference_jax.index import VerticalSlashIndices, vertical_slash_layout
from models import ModelConfig, forward, memory, param_shapes

GIB = 1024**3
DT = jnp.bfloat16


def abstract(shape, dtype=DT):
  """A ShapeDtypeStruct (no memory)."""
  return jax.ShapeDtypeStruct(tuple(shape), dtype)


def layer_args(config: ModelConfig, t: int):
  """(pieces, abstract layer params, x [1, T, H], cos/sin [1, T, R/2])."""
  pieces = DecoderPieces(config, 65536)
  p = param_shapes(config, DT)["layers"][0]
  x = abstract((1, t, config.hidden_size))
  r = config.rope.rotary_dim // 2
  cs = abstract((1, t, r), jnp.float32)
  return pieces, p, x, cs


def layer_memory(config: ModelConfig, t: int, attention: str) -> dict:
  """XLA CPU buffer sizes of one layer step and models.memory's terms."""
  pieces, p, x, cs = layer_args(config, t)
  if attention == "dense":
    attn = ops.build_attention(None, "xla", 0, False)
    ws = memory.attention_workspace(config, t, "dense_xla")
  else:
    attn = ops.build_attention(VerticalSlash(1000, 6096), "xla", 0, False)
    ws = memory.attention_workspace(config, t, "vertical_slash",
                                    scores="xla")

  def step(x, p, cos, sin):
    q, k, v = pieces.qkv(p, x, cos, sin)
    return pieces.out_mlp(p, x, attn(q, k, v, layer_idx=0))

  begin = time.perf_counter()
  compiled = jax.jit(step, donate_argnums=0).lower(x, p, cs, cs).compile()
  m = memory_analysis(compiled)
  est = memory.estimate_prefill_memory(config, t, chunk_size=65536,
                                       attention_workspace=ws)
  params = sum(a.size * a.dtype.itemsize for a in jax.tree.leaves(p))
  live = m["argument"] - params + m["temp"] + m["output"] - m["alias"]
  return dict(T=t, attention=attention, xla_live_gib=live / GIB,
              xla_temp_gib=m["temp"] / GIB,
              estimate_gib=(est.activations + est.attention_workspace) / GIB,
              estimate_activations_gib=est.activations / GIB,
              estimate_workspace_gib=est.attention_workspace / GIB,
              compile_s=time.perf_counter() - begin)


def layout_memory(config: ModelConfig, t: int, nv: int, ns: int) -> dict:
  n = config.num_heads
  ind = VerticalSlashIndices(abstract((1, n, nv), jnp.int32),
                             abstract((1, n), jnp.int32),
                             abstract((1, n, ns), jnp.int32),
                             abstract((1, n), jnp.int32))
  compiled = jax.jit(lambda i: vertical_slash_layout(i, t)).lower(
      ind).compile()
  m = memory_analysis(compiled)
  return dict(T=t, n_vertical=nv, n_slash=ns,
              xla_gib=(m["output"] + m["temp"]) / GIB,
              xla_output_gib=m["output"] / GIB, xla_temp_gib=m["temp"] / GIB,
              estimate_gib=memory.vs_layout_workspace(config, t, nv, ns) / GIB)


_BIG_OP = re.compile(r"= (\w+)\[([\d,]+)\]\{[^}]*\} (copy|transpose|pad|"
                     r"dynamic-update-slice|concatenate)\(")


def mlp_chunks(config: ModelConfig, t: int, chunks) -> list[dict]:
  """Temporaries and full-size copies of the out_mlp piece per chunk."""
  rows = []
  full = t * config.hidden_size
  for chunk in chunks:
    pieces = DecoderPieces(config, chunk)
    _, p, x, _ = layer_args(config, t)
    o = abstract((1, t, config.num_heads, config.head_dim))
    compiled = jax.jit(pieces.out_mlp).lower(p, x, o).compile()
    m = memory_analysis(compiled)
    big = collections.Counter()
    for dtype, dims, op in _BIG_OP.findall(compiled.as_text()):
      size = 1
      for d in dims.split(","):
        size *= int(d)
      if size >= full:
        big[op] += 1
    rows.append(dict(T=t, chunk=chunk, temp_gib=m["temp"] / GIB,
                     full_size_ops=dict(big)))
  return rows


def compile_scaling(layer_counts) -> list[dict]:
  """Trace + lower and CPU compile seconds of the unrolled forward."""
  base = ModelConfig.tiny("llama", num_layers=max(layer_counts))
  attn = make_attention(VerticalSlash(64, 128), "xla")
  rows = []
  t = 512
  tokens = abstract((1, t), jnp.int32)
  for n in layer_counts:
    config = dataclasses.replace(base, num_layers=n)
    params = param_shapes(config, jnp.float32)
    f = jax.jit(forward, static_argnames=("config", "attention",
                                          "logits_for", "chunk_size"))
    t0 = time.perf_counter()
    lowered = f.lower(params, tokens, config=config, attention=attn,
                      logits_for="last", chunk_size=None)
    t1 = time.perf_counter()
    lowered.compile()
    t2 = time.perf_counter()
    rows.append(dict(layers=n, lower_s=t1 - t0, compile_s=t2 - t1))
  return rows


def abstract_h200_mesh():
  """An abstract one-device mesh of an H200: lowering under it runs the
  Pallas -> Triton / Mosaic GPU lowering without a GPU."""
  from jax.sharding import AbstractDevice, AbstractMesh, AxisType

  return AbstractMesh((1,), ("x",), (AxisType.Auto,),
                      abstract_device=AbstractDevice(
                          device_kind="NVIDIA H200", num_cores=None,
                          platform="gpu"))


def gpu_layer_calls(config: ModelConfig, t: int, kernels: str) -> dict:
  """Custom calls in one layer step lowered for an abstract H200."""
  pieces, p, x, cs = layer_args(config, t)
  attn = ops.build_attention(VerticalSlash(1000, 6096), kernels, 0, False)

  def step(x, p, cos, sin):
    q, k, v = pieces.qkv(p, x, cos, sin)
    return pieces.out_mlp(p, x, attn(q, k, v, layer_idx=0))

  t0 = time.perf_counter()
  with jax.sharding.use_abstract_mesh(abstract_h200_mesh()):
    text = jax.jit(step).trace(x, p, cs, cs).lower(
        lowering_platforms=("cuda",)).as_text()
  targets = collections.Counter(re.findall(
      r"stablehlo\.custom_call @([\w$.]+)", text))
  return dict(T=t, kernels=kernels, lower_s=time.perf_counter() - t0,
              custom_calls=dict(targets),
              host_callbacks=sum(v for k, v in targets.items()
                                 if "callback" in k))


def distinct_layer_programs(path: str) -> dict:
  """Layer programs MInference's per-head budgets need (static vs traced)."""
  cfg = PatternConfig.load_minference_json(path)
  static = len(set(cfg.layers))
  traced = len({(max(p.n_vertical for p in layer),
                 max(p.n_slash for p in layer)) for layer in cfg.layers})
  return dict(layers=cfg.num_layers, static_budgets=static,
              traced_budgets_static_max=traced)


def markdown(res: dict) -> str:
  out = ["# Prefill inspected on a CPU (XLA buffer assignment, lowering)",
         "", "Command: `python -m experiments.prefill.inspect_hlo`"
         f" ({res['date']}, jax {jax.__version__}). No GPU: arrays are"
         " abstract; sizes are XLA's CPU buffer assignment, GPU kernels are"
         " only lowered.", ""]
  out += ["## 1. Memory of one LLaMA-3-8B layer step (GiB)", "",
          "| T | attention | XLA live | XLA temp | estimate (activations +"
          " workspace) |", "|---|---|---|---|---|"]
  for r in res["layer_memory"]:
    out.append(f"| {r['T']:,} | {r['attention']} | {r['xla_live_gib']:.1f}"
               f" | {r['xla_temp_gib']:.1f} | {r['estimate_gib']:.1f} |")
  out += ["", "Vertical-Slash layout builder (32 heads):", "",
          "| T | NV | NS | XLA output | XLA temp | XLA total | estimate |",
          "|---|---|---|---|---|---|---|"]
  for r in res["layout_memory"]:
    out.append(f"| {r['T']:,} | {r['n_vertical']} | {r['n_slash']} |"
               f" {r['xla_output_gib']:.2f} | {r['xla_temp_gib']:.2f} |"
               f" {r['xla_gib']:.2f} | {r['estimate_gib']:.2f} |")
  out += ["", "## 2. Output projection + MLP by chunk size", "",
          "| T | chunk | XLA temp GiB | ops on >= [T, H] arrays |",
          "|---|---|---|---|"]
  for r in res["mlp_chunks"]:
    out.append(f"| {r['T']:,} | {r['chunk']} | {r['temp_gib']:.2f} |"
               f" {r['full_size_ops']} |")
  out += ["", "## 3. Compile time of the unrolled forward (tiny llama,"
          " VS through XLA, CPU)", "", "| layers | trace+lower s |"
          " compile s |", "|---|---|---|"]
  for r in res["compile_scaling"]:
    out.append(f"| {r['layers']} | {r['lower_s']:.2f} |"
               f" {r['compile_s']:.2f} |")
  out += ["", "## 4. GPU programs (lowered for an abstract H200)", ""]
  for r in res["gpu_layer_calls"]:
    out.append(f"- one 8B layer step at T={r['T']:,}, kernels"
               f" {r['kernels']}: custom calls {r['custom_calls']}, host"
               f" callbacks {r['host_callbacks']}, trace+lower"
               f" {r['lower_s']:.1f} s")
  d = res.get("distinct_layer_programs")
  if d:
    out.append(f"- MInference Llama-3-8B config: {d['layers']} layers need"
               f" {d['static_budgets']} distinct layer programs with static"
               f" per-head budgets, {d['traced_budgets_static_max']} with"
               " traced budgets and a static maximum")
  return "\n".join(out) + "\n"


def main(argv=None) -> None:
  ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  ap.add_argument("--out", default="experiments/results")
  ap.add_argument("--lengths", type=int, nargs="+",
                  default=[131072, 1048576])
  ap.add_argument("--minference-config", default=None,
                  help="MInference's Llama-3-8B-262K file (optional)")
  ap.add_argument("--quick", action="store_true",
                  help="small sizes only (a smoke run)")
  args = ap.parse_args(argv)
  config = ModelConfig.preset("llama3_8b_1048k")
  lens = [8192] if args.quick else args.lengths
  res = dict(date=time.strftime("%Y-%m-%d"), jax=jax.__version__)
  res["layout_memory"] = [layout_memory(config, t, nv, 6096)
                          for t in ([8192] if args.quick else
                                    [65536, 131072, 262144, 524288, 1048576])
                          for nv in (1000, 3500)]
  res["layer_memory"] = [layer_memory(config, t, a) for t in lens
                         for a in ("dense", "vertical_slash")]
  res["mlp_chunks"] = mlp_chunks(
      config, lens[-1], [c for c in (16384, 65536, 262144, None)
                         if c is None or c < lens[-1]])
  res["compile_scaling"] = compile_scaling([1, 2, 4] if args.quick
                                           else [1, 2, 4, 8, 16])
  res["gpu_layer_calls"] = [gpu_layer_calls(config, lens[-1], k)
                            for k in ("triton", "mosaic_gpu")]
  if args.minference_config:
    res["distinct_layer_programs"] = distinct_layer_programs(
        args.minference_config)
  out = Path(args.out)
  out.mkdir(parents=True, exist_ok=True)
  (out / "prefill_inspect_cpu.json").write_text(json.dumps(res, indent=1))
  (out / "prefill_inspect_cpu.md").write_text(markdown(res))
  print(markdown(res))


if __name__ == "__main__":
  main()
