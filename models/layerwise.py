"""Layer-by-layer prefill: one compiled step per distinct layer.

`forward` under one jit traces and compiles the whole unrolled model, so
its compile time grows with the depth (every layer is a copy of the same
program). `LayerwisePrefill` runs the same Flax modules (models/decoder.py)
as separately jitted pieces dispatched back to back without host
synchronisation: the embedding, one step per *distinct* layer, the final
norm and logits. The residual stream (and a layer's KV-cache buffers) are
donated from step to step, so memory is that of one layer, as in `forward`.

Layers share a step when their parameters have the same shapes and their
attention calls compute the same function: `attention_layer_key` says when
(a DenseAttention: every layer; a MInferenceAttention: layers with equal
per-head patterns, so a PatternConfig whose 32 layers all differ gives 32
steps; a callable with a `layer_key(layer_idx)` method: equal keys; any
other callable: one step per layer). A shared step calls the attention with
the first such layer's `layer_idx`.

An attention may also be a JAX pytree (e.g. a registered dataclass): its
array leaves then enter the step as traced arguments, so layers whose
attention differs only in array values (per-layer precomputed indices, one
`LayerAttentions` entry per layer) share one executable.
"""

import concurrent.futures
import dataclasses
import functools
import os
import time
from collections.abc import Hashable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from minference_jax.attention import DenseAttention as SeamDenseAttention
from minference_jax.attention import MInferenceAttention
from minference_jax.parallel import UlyssesAttention
from minference_jax.pattern_config import PatternConfig
from minference_jax.pattern_table import pattern_tables
from minference_jax.patterns import PatternKind
from minference_jax.types import AttentionFn, check_attention_fits
from models import layers
from models.config import ModelConfig
from models.decoder import (
    Decoder,
    DecoderLayer,
    KVCache,
    check_call,
    resolve_rope_seq_len,
)
from models.partitioning import Partitioning
from models.weights import Params


@dataclasses.dataclass(frozen=True, eq=False)
class LayerAttentions:
  """One AttentionFn per layer, itself an AttentionFn (layer i calls
  `layers[i]`). `LayerwisePrefill` passes each entry's array leaves as
  traced step arguments (see the module doc).

  Attributes:
    layers: the attention of every layer, in order.
  """

  layers: tuple[AttentionFn, ...]

  def __call__(self, q, k, v, *, layer_idx: int, q_offset: int = 0):
    return self.layers[layer_idx](q, k, v, layer_idx=layer_idx,
                                  q_offset=q_offset)

  def check_model(self, *, num_layers: int, num_heads: int) -> None:
    """One entry per layer, each fitting the model (ValueError)."""
    if len(self.layers) != num_layers:
      raise ValueError(f"LayerAttentions holds {len(self.layers)} "
                       f"attentions for a model of {num_layers} layers")
    for attention in self.layers:
      check_attention_fits(attention, num_layers=num_layers,
                           num_heads=num_heads)


def shared_step_attention(attention: AttentionFn, num_layers: int,
                          num_heads: int) -> AttentionFn:
  """A MInferenceAttention whose layers differ, as one
  `minference_jax.PatternTableAttention` per layer (a LayerAttentions), so
  that a layerwise prefill compiles one layer step for all of them (every
  layer then launches every pattern group the model uses; see
  `minference_jax.pattern_table`). Any other attention, and one Pattern for
  every head (already one step), is returned unchanged.

  Raises:
    ValueError: if the pattern config does not have the model's layers and
      query heads.
  """
  if not isinstance(attention, MInferenceAttention) or not isinstance(
      attention.pattern_config, PatternConfig):
    return attention
  return LayerAttentions(pattern_tables(attention, num_layers, num_heads))


def layer_attention(attention: AttentionFn, layer_idx: int) -> AttentionFn:
  """The attention layer `layer_idx` calls (a LayerAttentions' entry)."""
  if isinstance(attention, LayerAttentions):
    return attention.layers[layer_idx]
  return attention


def _minference_runs_sparse(attention: MInferenceAttention, patterns,
                            seq_len: int, q_offset: int) -> bool:
  """Whether MInferenceAttention runs any sparse kernel for this layer (its
  rule: full prefills, q_offset == 0, of at least a sparse kind's dense
  threshold; everything else, all-dense layers included, runs dense)."""
  kinds = {p.kind for p in patterns} - {PatternKind.DENSE}
  return q_offset == 0 and any(seq_len >= attention.threshold_for(kind)
                               for kind in kinds)


def attention_layer_key(
    attention: AttentionFn,
    layer_idx: int,
    num_heads: int,
    seq_len: int | None = None,
    q_offset: int = 0,
) -> Hashable:
  """What the attention's result depends on besides q, k, v and q_offset.

  Two layers with equal keys (and the same attention object) compute the
  same function, so one compiled step serves both.

  Args:
    attention: the AttentionFn (one layer's, see layer_attention).
    layer_idx: the layer.
    num_heads: query heads N (for the per-head patterns).
    seq_len, q_offset: the call's T and q_offset, when known: layers of a
      MInferenceAttention that run dense at this length (below every
      dense threshold, or a chunked-prefill step) share one key.

  Returns:
    () for layer-independent attention (dense), the layer's per-head
    patterns for a MInferenceAttention (also inside a UlyssesAttention;
    ("dense",) where it falls back to dense), `attention.layer_key(
    layer_idx)` when the callable defines it, else ("layer", layer_idx)
    (unknown callables never share a step).
  """
  hook = getattr(attention, "layer_key", None)
  if callable(hook):
    return hook(layer_idx)
  if isinstance(attention, (layers.DenseAttention, SeamDenseAttention)):
    return ()
  if isinstance(attention, UlyssesAttention):
    return attention_layer_key(attention.attention, layer_idx, num_heads,
                               seq_len, q_offset)
  if isinstance(attention, MInferenceAttention):
    patterns = attention.layer_patterns(layer_idx, num_heads)
    if seq_len is not None and not _minference_runs_sparse(
        attention, patterns, seq_len, q_offset):
      return ("dense",)
    return ("patterns", patterns)
  return ("layer", layer_idx)


def _is_array(leaf: Any) -> bool:
  return isinstance(leaf, (jax.Array, np.ndarray))


def split_arrays(tree: Any) -> tuple[Hashable, tuple[Any, ...]]:
  """(static part, array leaves) of a pytree; an object that is not a
  pytree is all static. `merge_arrays` inverts it."""
  leaves, treedef = jax.tree.flatten(tree)
  static = tuple(None if _is_array(x) else x for x in leaves)
  return (treedef, static), tuple(x for x in leaves if _is_array(x))


def merge_arrays(static: Hashable, arrays: tuple[Any, ...]) -> Any:
  """Inverse of split_arrays."""
  treedef, leaves = static
  it = iter(arrays)
  return jax.tree.unflatten(treedef, [next(it) if x is None else x
                                      for x in leaves])


class _Step:
  """The static part of one layer step (a jit static argument with a
  precomputed hash: it is hashed on every dispatch)."""

  __slots__ = ("fields", "_hash")

  def __init__(self, config, attention_static, layer_idx, chunk_size,
               partitioning, q_offset):
    self.fields = (config, attention_static, layer_idx, chunk_size,
                   partitioning, q_offset)
    self._hash = hash(self.fields)

  def __hash__(self) -> int:
    return self._hash

  def __eq__(self, other) -> bool:
    return isinstance(other, _Step) and (
        self is other or (self._hash == other._hash
                          and self.fields == other.fields))


def _layer_step(params, x, cos, sin, kv, attention_arrays, *, step: _Step):
  """One decoder layer (models.decoder.DecoderLayer): x -> x, kv."""
  config, static, layer_idx, chunk_size, partitioning, q_offset = step.fields
  attention = merge_arrays(static, attention_arrays)
  layer = DecoderLayer(config, attention, layer_idx, chunk_size,
                       partitioning)
  return layer.apply({"params": params}, x, cos, sin, kv, q_offset,
                     q_offset)


def _embed(top, tokens, positions, *, config, partitioning, q_offset,
           rope_seq_len):
  module = Decoder(config, None, None, partitioning)
  return module.apply({"params": top}, tokens, positions, q_offset,
                      rope_seq_len, method=Decoder.embed)


def _head(top, x, logits_idx, *, config, partitioning, logits_for):
  module = Decoder(config, None, None, partitioning)
  return module.apply({"params": top}, x, logits_for, logits_idx,
                      method=Decoder.logits)


_layer_step_jit = jax.jit(_layer_step, static_argnames=("step",),
                          donate_argnames=("x", "kv"))
_embed_jit = jax.jit(_embed, static_argnames=(
    "config", "partitioning", "q_offset", "rope_seq_len"))
_head_jit = jax.jit(_head, static_argnames=("config", "partitioning",
                                            "logits_for"))


def _top(params: Params) -> Params:
  return {k: v for k, v in params.items() if k != "layers"}


def _memory(compiled) -> dict[str, int] | None:
  """XLA's buffer sizes of an executable (bytes), where the backend has
  them."""
  try:
    m = compiled.memory_analysis()
  except (NotImplementedError, AttributeError):
    return None
  if m is None:
    return None
  return {f: int(getattr(m, f + "_size_in_bytes", 0)) for f in
          ("argument", "output", "alias", "temp")}


@dataclasses.dataclass(frozen=True, eq=False)
class LayerwisePrefill:
  """A prefill run layer by layer (module doc); same results as `forward`.

  `prefill(params, tokens, positions, cache, logits_idx, q_offset=...,
  logits_for=..., rope_seq_len=...)` takes `forward`'s arguments except
  decode steps (q_offset must be a static int); a given cache is donated
  layer by layer (use the returned one). `compile(...)` compiles every
  step ahead of time for one set of argument shapes.

  Attributes:
    config: the geometry.
    attention: the AttentionFn (a LayerAttentions for per-layer objects).
    chunk_size: tokens per chunk of the norms, projections and MLP (None:
      unchunked).
    partitioning: mesh + rules of a sharded model (None: one device).
  """

  config: ModelConfig
  attention: AttentionFn = layers.DenseAttention()
  chunk_size: int | None = None
  partitioning: Partitioning | None = None

  @functools.cached_property
  def _plans(self) -> dict:
    return {}

  def _plan(self, seq_len: int | None = None, q_offset: int = 0
            ) -> tuple[tuple[int, Hashable, tuple], ...]:
    """Per layer: (step layer index, attention static part, arrays), for a
    call of T = seq_len tokens at q_offset (None: any call)."""
    if (seq_len, q_offset) not in self._plans:
      first: dict[Hashable, int] = {}
      plan = []
      for i in range(self.config.num_layers):
        attn = layer_attention(self.attention, i)
        static, arrays = split_arrays(attn)
        key = (static, attention_layer_key(attn, i, self.config.num_heads,
                                           seq_len, q_offset))
        plan.append((first.setdefault(key, i), static, arrays))
      self._plans[(seq_len, q_offset)] = tuple(plan)
    return self._plans[(seq_len, q_offset)]

  def step_layers(self, seq_len: int | None = None,
                  q_offset: int = 0) -> tuple[int, ...]:
    """Per layer, the layer whose step it runs (the first with its key),
    for a call of seq_len tokens at q_offset (None: whatever the length)."""
    return tuple(p[0] for p in self._plan(seq_len, q_offset))

  def num_steps(self, seq_len: int | None = None, q_offset: int = 0) -> int:
    """Distinct layer steps (compiled programs besides embed and logits)."""
    return len(set(self.step_layers(seq_len, q_offset)))

  def _steps(self, seq_len: int, q_offset: int) -> list[_Step]:
    return [_Step(self.config, static, canon, self.chunk_size,
                  self.partitioning, q_offset)
            for canon, static, _ in self._plan(seq_len, q_offset)]

  def _check(self, params, tokens, cache, q_offset):
    if q_offset is None or isinstance(q_offset, bool) or not isinstance(
        q_offset, int):
      raise ValueError(f"a layerwise prefill needs a static int q_offset, "
                       f"got {q_offset!r} (decode steps run `forward`)")
    if tokens.ndim != 2:
      raise ValueError(f"tokens must be [B, T], got shape {tokens.shape}")
    check_call(tokens.shape, cache, q_offset)
    if len(params["layers"]) != self.config.num_layers:
      raise ValueError(f"params have {len(params['layers'])} layers, the "
                       f"config {self.config.num_layers}")

  def _statics(self, tokens, cache, q_offset, logits_for, rope_seq_len):
    rope = resolve_rope_seq_len(tokens.shape[1], cache, q_offset,
                                rope_seq_len)
    common = dict(config=self.config, partitioning=self.partitioning)
    return (dict(common, q_offset=q_offset, rope_seq_len=rope),
            dict(common, logits_for=logits_for))

  def __call__(
      self,
      params: Params,
      tokens: jax.Array,
      positions: jax.Array | None = None,
      cache: KVCache | None = None,
      logits_idx: jax.Array | None = None,
      *,
      q_offset: int = 0,
      logits_for: str | None = "last",
      rope_seq_len: int | None = None,
  ) -> tuple[jax.Array, KVCache | None]:
    """The prefill (arguments as `forward`); steps compile on first use.

    Returns:
      (logits, cache advanced by T or None).

    Raises:
      ValueError: for inconsistent shapes or a decode step.
    """
    self._check(params, tokens, cache, q_offset)
    embed_kw, head_kw = self._statics(tokens, cache, q_offset, logits_for,
                                      rope_seq_len)
    steps = self._steps(tokens.shape[1], q_offset)
    return self._run(
        functools.partial(_embed_jit, **embed_kw),
        [functools.partial(_layer_step_jit, step=s) for s in steps],
        functools.partial(_head_jit, **head_kw),
        params, tokens, positions, cache, logits_idx, q_offset)

  def _run(self, embed, steps, head, params, tokens, positions, cache,
           logits_idx, q_offset):
    top = _top(params)
    x, cos, sin = embed(top, tokens, positions)
    new_k, new_v = [], []
    plan = self._plan(tokens.shape[1], q_offset)
    for i, (step, (_, _, arrays)) in enumerate(zip(steps, plan)):
      kv = None if cache is None else (cache.k[i], cache.v[i])
      x, kv = step(params["layers"][i], x, cos, sin, kv, arrays)
      if kv is not None:
        new_k.append(kv[0])
        new_v.append(kv[1])
    logits = head(top, x, logits_idx)
    if cache is None:
      return logits, None
    length = jnp.asarray(q_offset + tokens.shape[1], jnp.int32)
    return logits, KVCache(k=tuple(new_k), v=tuple(new_v), length=length)

  def compile(
      self,
      params: Params,
      tokens: jax.Array,
      positions: jax.Array | None = None,
      cache: KVCache | None = None,
      logits_idx: jax.Array | None = None,
      *,
      q_offset: int = 0,
      logits_for: str | None = "last",
      rope_seq_len: int | None = None,
      workers: int | None = 1,
  ) -> "CompiledPrefill":
    """Compiles the embedding, every distinct layer step and the logits
    ahead of time for these arguments (arrays or ShapeDtypeStructs).

    Every program is traced and lowered first, then compiled by `workers`
    threads (XLA compiles outside the GIL), so a model whose layers all
    differ can compile its layer steps side by side.

    Args:
      workers: compile threads (1: one by one; None: one per CPU core;
        tested on CPU only so far).

    Raises:
      ValueError: as __call__.
    """
    self._check(params, tokens, cache, q_offset)
    embed_kw, head_kw = self._statics(tokens, cache, q_offset, logits_for,
                                      rope_seq_len)
    begin = time.perf_counter()
    top = _top(params)
    lowered = {"embed": _embed_jit.lower(top, tokens, positions, **embed_kw)}
    x, cos, sin = jax.eval_shape(
        functools.partial(_embed, **embed_kw), top, tokens, positions)
    t = tokens.shape[1]
    plan = self._plan(t, q_offset)
    for i, step in enumerate(self._steps(t, q_offset)):
      name = f"layer_{step.fields[2]}"
      if name not in lowered:
        kv = None if cache is None else (cache.k[i], cache.v[i])
        lowered[name] = _layer_step_jit.lower(
            params["layers"][i], x, cos, sin, kv, plan[i][2], step=step)
    lowered["logits"] = _head_jit.lower(top, x, logits_idx, **head_kw)
    workers = workers or os.cpu_count() or 1
    with concurrent.futures.ThreadPoolExecutor(workers) as pool:
      compiled = dict(zip(lowered, pool.map(lambda low: low.compile(),
                                            lowered.values())))
    return CompiledPrefill(
        self, compiled["embed"],
        [compiled[f"layer_{c}"] for c in self.step_layers(t, q_offset)],
        compiled["logits"], q_offset,
        {name: _memory(c) for name, c in compiled.items()},
        time.perf_counter() - begin)


@dataclasses.dataclass(frozen=True, eq=False)
class CompiledPrefill:
  """A LayerwisePrefill compiled for one set of shapes.

  `compiled(params, tokens, positions=None, cache=None, logits_idx=None)`
  runs it (the arguments as compiled). Attributes: `memory` (XLA's buffer
  sizes per executable: "embed", "layer_<i>" per distinct step, "logits"),
  `compile_s` and `executables` (their count).
  """

  prefill: LayerwisePrefill
  embed: Any
  steps: list
  head: Any
  q_offset: int
  memory: dict
  compile_s: float

  @property
  def executables(self) -> int:
    return len({id(s) for s in self.steps}) + 2

  def __call__(self, params, tokens, positions=None, cache=None,
               logits_idx=None):
    return self.prefill._run(self.embed, self.steps, self.head, params,
                             tokens, positions, cache, logits_idx,
                             self.q_offset)
