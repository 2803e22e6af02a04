"""Greedy generation: one (maybe chunked) prefill, then jitted decode steps."""

import dataclasses
import functools
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from models.llama import CausalLM, KVCache, forward
from models.weights import Params

# progress(phase, done, total): phase "prefill" counts prompt tokens,
# "decode" counts generated tokens.
ProgressFn = Callable[[str, int, int], None]


@dataclasses.dataclass(frozen=True)
class GenerationResult:
  """Greedy generation output.

  Attributes:
    tokens: [B, n] generated ids (n <= max_new_tokens); rows that stopped
      early are padded with their EOS id.
    lengths: [B] generated tokens per row, EOS included.
    stopped_on_eos: [B] whether the row produced an EOS id.
  """

  tokens: np.ndarray
  lengths: np.ndarray
  stopped_on_eos: np.ndarray


@functools.partial(jax.jit, static_argnames=("model_static",),
                   donate_argnames=("cache",))
def _decode_step(params: Params, token: jax.Array, cache: KVCache,
                 model_static: tuple) -> tuple[jax.Array, KVCache]:
  """One greedy step: [B] last tokens -> ([B] next tokens, cache)."""
  config, attention, rope_seq_len, partitioning = model_static
  logits, cache = forward(params, token[:, None], None, cache, None,
                          config=config, attention=attention, q_offset=None,
                          logits_for="last", rope_seq_len=rope_seq_len,
                          partitioning=partitioning)
  return jnp.argmax(logits, axis=-1).astype(jnp.int32), cache


def generate_greedy(
    model: CausalLM,
    prompt: Any,
    *,
    max_new_tokens: int,
    eos_ids: Sequence[int] | None = None,
    prefill_chunk: int | None = None,
    progress: ProgressFn | None = None,
    cache_dtype: Any = None,
) -> GenerationResult:
  """Greedy decoding with a preallocated KV cache.

  The prompt is prefilled once through the model's attention callable (in
  static chunks of `prefill_chunk` tokens if given; later chunks see the
  cache with q_offset > 0, which the attention runs dense). Then a jitted
  decode step (dense attention over the cache) runs once per new token.

  Args:
    model: the CausalLM.
    prompt: [B, T] token ids (all rows the same length; no padding).
    max_new_tokens: generation budget (>= 1).
    eos_ids: ids that end a row; default the config's eos_token_ids.
    prefill_chunk: prompt tokens per prefill call (None: one call).
    progress: optional callback progress(phase, done, total).
    cache_dtype: KV-cache dtype (default: the parameters' dtype).

  Returns:
    A GenerationResult.

  Raises:
    ValueError: for a bad prompt shape or budget.
  """
  prompt = np.asarray(prompt)
  if prompt.ndim != 2 or prompt.shape[1] == 0:
    raise ValueError(f"prompt must be a non-empty [B, T] array, got shape "
                     f"{prompt.shape}")
  if max_new_tokens < 1:
    raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
  if prefill_chunk is not None and prefill_chunk < 1:
    raise ValueError(f"prefill_chunk must be >= 1, got {prefill_chunk}")
  config = model.config
  eos = tuple(config.eos_token_ids if eos_ids is None else eos_ids)
  b, t = prompt.shape
  total = t + max_new_tokens
  cache = model.init_cache(b, total, cache_dtype)
  tokens = jnp.asarray(prompt, jnp.int32)

  # Prefill: the same rope length for every call keeps frequencies fixed.
  chunk = prefill_chunk or t
  logits = None
  for start in range(0, t, chunk):
    stop = min(start + chunk, t)
    logits, cache = model(tokens[:, start:stop], cache=cache,
                          logits_for="last", q_offset=start,
                          rope_seq_len=total)
    if progress is not None:
      progress("prefill", stop, t)
  next_tok = jnp.argmax(logits, axis=-1).astype(jnp.int32)  # [B]

  out = np.zeros((b, max_new_tokens), np.int32)
  lengths = np.zeros((b,), np.int32)
  done = np.zeros((b,), bool)
  eos_arr = np.asarray(eos, np.int32)
  static = (config, model.attention, total, model.partitioning)
  n = 0
  for step in range(max_new_tokens):
    host = np.asarray(next_tok)
    fill = np.where(done, out[:, max(step - 1, 0)], host)
    out[:, step] = fill
    lengths += ~done
    done |= np.isin(host, eos_arr) & ~done
    n = step + 1
    if progress is not None:
      progress("decode", n, max_new_tokens)
    if done.all() or n == max_new_tokens:
      break
    next_tok, cache = _decode_step(model.params, next_tok, cache, static)
  return GenerationResult(tokens=out[:, :n], lengths=lengths,
                          stopped_on_eos=done)
