"""`minference-jax generate`: greedy generation for any prompt and model."""

import argparse
import time
from pathlib import Path

from rich.console import Console


def _run(args) -> None:
  import numpy as np

  from minference_jax.attention import make_attention
  from minference_jax.pattern_config import PatternConfig
  from models import CausalLM, generate_greedy
  from models.loading import load_model

  console = Console()
  try:
    loaded = load_model(args.model, args.dtype)
  except FileNotFoundError as e:
    raise SystemExit(f"error: {e.filename}: {e.strerror}") from None
  config, params, tok = loaded.config, loaded.params, loaded.tokenizer
  prompt = args.prompt if args.prompt is not None else Path(
      args.prompt_file).read_text()
  if args.chat:
    ids = tok.apply_chat_template([{"role": "user", "content": prompt}],
                                  add_generation_prompt=True, tokenize=True)
  else:
    ids = tok.encode(prompt)
  patterns = None
  if args.patterns:
    patterns = (PatternConfig.load_minference_json(args.patterns)
                if args.minference_format else
                PatternConfig.load_json(args.patterns))
  attn = make_attention(patterns, backend=args.backend)
  model = CausalLM(config, params, attention=attn)
  console.print(f"prompt: {len(ids)} tokens; attention: {args.backend}"
                f"{' with ' + args.patterns if args.patterns else ''}")
  from tqdm import tqdm

  bar = tqdm(total=args.max_new_tokens, desc="decode", disable=None)

  def progress(phase, done, total):
    if phase == "decode":
      bar.n = done
      bar.refresh()

  start = time.perf_counter()
  result = generate_greedy(model, np.asarray([ids], np.int32),
                           max_new_tokens=args.max_new_tokens,
                           prefill_chunk=args.prefill_chunk, progress=progress)
  bar.close()
  text = tok.decode(result.tokens[0, : result.lengths[0]].tolist(),
                    skip_special_tokens=True)
  console.print(f"[bold]{text.strip()}[/]")
  console.print(f"({time.perf_counter() - start:.1f} s incl. compile)")


def _parser() -> argparse.ArgumentParser:
  gen = argparse.ArgumentParser(prog="minference-jax generate",
                                description=__doc__.split(": ", 1)[1])
  gen.add_argument("--model", help=".gguf file or HF safetensors dir "
                   "(default: the bundled SmolLM2-135M-Instruct)")
  src = gen.add_mutually_exclusive_group(required=True)
  src.add_argument("--prompt")
  src.add_argument("--prompt-file")
  gen.add_argument("--chat", action="store_true",
                   help="wrap the prompt in the model's chat template")
  gen.add_argument("--patterns", help="pattern config JSON (ours, or "
                   "MInference's with --minference-format)")
  gen.add_argument("--minference-format", action="store_true")
  gen.add_argument("--backend", default="auto",
                   choices=("auto", "xla", "pallas", "dense"))
  gen.add_argument("--max-new-tokens", type=int, default=32)
  gen.add_argument("--prefill-chunk", type=int, default=None)
  gen.add_argument("--dtype", default="float32",
                   choices=("float32", "bfloat16"))
  return gen


def main(argv=None) -> None:
  _run(_parser().parse_args(argv))
