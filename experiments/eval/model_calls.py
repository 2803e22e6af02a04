"""The model calls of an eval: batched greedy answers and per-token NLL.

The prefill runs the attention config under test; decode steps always run
dense over the KV cache (as MInference does), through one jitted step shared
by every attention config, so each length compiles its decode step once.
"""

import functools
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from models import CausalLM, DenseAttention, ModelConfig, forward

_DECODE_ATTENTION = DenseAttention()  # never called: decode reads the cache


@functools.partial(jax.jit, static_argnames=("config", "rope_seq_len"),
                   donate_argnames=("cache",))
def _decode_step(params, token, cache, *, config: ModelConfig,
                 rope_seq_len: int):
  """[B] last tokens -> ([B] greedy next tokens, cache)."""
  logits, cache = forward(params, token[:, None], None, cache, None,
                          config=config, attention=_DECODE_ATTENTION,
                          q_offset=None, logits_for="last",
                          rope_seq_len=rope_seq_len)
  return jnp.argmax(logits, axis=-1).astype(jnp.int32), cache


def greedy_answers(model: CausalLM, prompts: np.ndarray,
                   max_new_tokens: int, eos_ids: Sequence[int],
                   total_length: int) -> list[list[int]]:
  """Greedy continuations of a batch of equal-length prompts.

  Args:
    model: the CausalLM whose attention runs the prefill.
    prompts: [B, T] int32 token ids.
    max_new_tokens: tokens to generate at most (>= 1).
    eos_ids: ids that end a row (not included in the answer).
    total_length: the KV cache size and RoPE length, >= T +
      max_new_tokens (a fixed value per length keeps one compile).

  Returns:
    B lists of generated ids.

  Raises:
    ValueError: for a bad shape or budget.
  """
  prompts = np.asarray(prompts, np.int32)
  if prompts.ndim != 2:
    raise ValueError(f"prompts must be [B, T], got shape {prompts.shape}")
  b, t = prompts.shape
  if max_new_tokens < 1 or t + max_new_tokens > total_length:
    raise ValueError(f"need 1 <= max_new_tokens <= total_length - T, got"
                     f" {max_new_tokens} with T={t}, total {total_length}")
  cache = model.init_cache(b, total_length)
  logits, cache = model(jnp.asarray(prompts), cache=cache,
                        logits_for="last", q_offset=0,
                        rope_seq_len=total_length)
  token = jnp.argmax(logits, axis=-1).astype(jnp.int32)
  eos = np.asarray(list(eos_ids), np.int32)
  out = [[] for _ in range(b)]
  done = np.zeros((b,), bool)
  for step in range(max_new_tokens):
    host = np.asarray(token)
    for row in np.flatnonzero(~done):
      if host[row] in eos:
        done[row] = True
      else:
        out[row].append(int(host[row]))
    if done.all() or step == max_new_tokens - 1:
      break
    token, cache = _decode_step(model.params, token, cache,
                                config=model.config,
                                rope_seq_len=total_length)
  return out


@functools.partial(jax.jit, static_argnames=("config", "attention"))
def _token_nll(params, tokens, *, config: ModelConfig, attention: Any):
  logits, _ = forward(params, tokens, config=config, attention=attention,
                      logits_for="all")  # [B, T, V] float32
  logp = jax.nn.log_softmax(logits[:, :-1], axis=-1)
  target = tokens[:, 1:, None]
  return -jnp.take_along_axis(logp, target, axis=-1)[..., 0]  # [B, T-1]


def token_nll(model: CausalLM, tokens: np.ndarray) -> np.ndarray:
  """Negative log-likelihood of every next token, one full prefill.

  Args:
    model: the CausalLM (its attention runs the prefill).
    tokens: [B, T] int32 ids.

  Returns:
    [B, T - 1] float32: nll[b, i] of token i + 1 given tokens 0..i.
  """
  tokens = np.asarray(tokens, np.int32)
  if tokens.ndim != 2 or tokens.shape[1] < 2:
    raise ValueError(f"tokens must be [B, T>=2], got shape {tokens.shape}")
  return np.asarray(_token_nll(model.params, jnp.asarray(tokens),
                               config=model.config,
                               attention=model.attention))


def position_buckets(length: int, first: int = 512) -> list[tuple[int, int]]:
  """Target-position buckets [lo, hi) doubling from `first`: [0, 512),
  [512, 1K), [1K, 2K), ... up to `length` (losses at long range show in
  the last ones)."""
  edges = [0]
  edge = first
  while edge < length:
    edges.append(edge)
    edge *= 2
  edges.append(length)
  return list(zip(edges[:-1], edges[1:]))


def bucket_sums(nll: np.ndarray, buckets: Sequence[tuple[int, int]]
                ) -> list[tuple[float, int]]:
  """(sum of NLL, token count) per bucket of target positions 1..T-1.

  Args:
    nll: [T - 1] NLL of targets at positions 1..T-1.
    buckets: [lo, hi) ranges of target positions.
  """
  positions = np.arange(1, nll.shape[0] + 1)
  out = []
  for lo, hi in buckets:
    sel = (positions >= lo) & (positions < hi)
    out.append((float(nll[sel].sum(dtype=np.float64)), int(sel.sum())))
  return out
