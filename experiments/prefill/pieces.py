"""The decoder as separately jitted pieces: the phase breakdown and the
host-memory KV cache.

`DecoderPieces` splits one pre-norm decoder layer (models/decoder.py) into
qkv (norm, q/k/v projections, RoPE), attention and out_mlp (output
projection, residual, norm, SwiGLU MLP, residual), plus the embedding and
the last position's logits, all from the public functions of `models`.
`tests/experiments/test_bench_prefill_run.py` checks that the pieces
chained give `models.forward`'s logits.

`PiecesPrefill` runs a whole prefill from these pieces, one executable per
distinct layer, dispatched back to back without host synchronisation (the
residual stream donated from layer to layer), as `models.LayerwisePrefill`
does with the library's own layer step. The benchmark times the library's
executor (experiments/prefill/executors.py); this one serves what the
library does not offer: K/V of every layer written to pinned host memory by
the layer's own executable, and `phases`, each piece compiled and timed on
its own.
"""

import dataclasses
import functools
import time
from collections.abc import Callable, Hashable
from typing import Any

import jax
import jax.numpy as jnp
from jax.sharding import SingleDeviceSharding

from models import ModelConfig, Params, rope_cos_sin
from models import apply_rope as rope
from models import layers as ml

# (q, k, v, lines) -> o [B, T, N, D]; (q, k, lines) -> layouts
Attend = Callable[..., jax.Array]


@dataclasses.dataclass(frozen=True)
class DecoderPieces:
  """One decoder layer's pieces (hashable: a static jit argument).

  Attributes:
    config: the geometry.
    chunk_size: tokens per chunk of qkv and out_mlp (None: unchunked).
  """

  config: ModelConfig
  chunk_size: int | None

  def embed(self, embed: jax.Array, tokens: jax.Array):
    """Token ids [B, T] -> x [B, T, H] and the RoPE tables [B, T, R/2]."""
    b, t = tokens.shape
    positions = jnp.broadcast_to(jnp.arange(t, dtype=jnp.int32), (b, t))
    rope_cfg = self.config.rope
    cos, sin = rope_cos_sin(positions, rope_cfg.inv_freq(t),
                            rope_cfg.attention_scaling())
    return embed[tokens], cos, sin

  def qkv(self, p: dict, x, cos, sin):
    """norm -> q [B,T,N,D], k and v [B,T,K,D] (RoPE applied), chunked."""
    c = self.config

    def one(xc, cc, sc):
      b, t, _ = xc.shape
      h = ml.rms_norm(xc, p["attn_norm"], c.rms_norm_eps)
      q = ml.linear(h, p["wq"], p.get("bq")).reshape(
          b, t, c.num_heads, c.head_dim)
      k = ml.linear(h, p["wk"], p.get("bk")).reshape(
          b, t, c.num_kv_heads, c.head_dim)
      v = ml.linear(h, p["wv"], p.get("bv")).reshape(
          b, t, c.num_kv_heads, c.head_dim)
      il = c.rope.interleaved
      return (rope(q, cc, sc, interleaved=il), rope(k, cc, sc, interleaved=il),
              v)

    return ml.seq_chunked(one, self.chunk_size, x, cos, sin)

  def out_mlp(self, p: dict, x, o):
    """x + o-proj(o), then + MLP(norm(.)), chunked: [B, T, H]."""
    c = self.config
    b, t, _ = x.shape
    o = o.reshape(b, t, c.q_dim)

    def one(xc, oc):
      xc = xc + ml.linear(oc, p["wo"], p.get("bo"))
      hc = ml.rms_norm(xc, p["mlp_norm"], c.rms_norm_eps)
      return xc + ml.swiglu_mlp(hc, p)

    return ml.seq_chunked(one, self.chunk_size, x, o, in_place=True)

  def logits(self, head: dict, x):
    """Final norm + output projection of the last position: [B, V] f32."""
    c = self.config
    h = ml.rms_norm(x[:, -1], head["final_norm"], c.rms_norm_eps)
    if c.tie_word_embeddings:
      return jnp.einsum("bh,vh->bv", h, head["embed"].astype(h.dtype),
                        preferred_element_type=jnp.float32)
    return jnp.einsum("bh,hv->bv", h, head["lm_head"].astype(h.dtype),
                      preferred_element_type=jnp.float32)


def head_params(config: ModelConfig, params: Params) -> dict:
  """The parameters `DecoderPieces.logits` reads."""
  key = "embed" if config.tie_word_embeddings else "lm_head"
  return {"final_norm": params["final_norm"], key: params[key]}


@dataclasses.dataclass(frozen=True)
class LayerPlan:
  """One layer of a layerwise run.

  Attributes:
    param_index: index into the run's params["layers"].
    key: layers with equal keys share one executable (their attention's
      static setting; the traced `lines` may differ).
    attend: (q, k, v, lines) -> o.
    index: (q, k, lines) -> the index structures the attention builds
      (for the phase breakdown), or None when it builds none.
    lines: the layer's traced attention data (a pytree; None for none).
  """

  param_index: int
  key: Hashable
  attend: Attend
  index: Attend | None = None
  lines: Any = None


def layer_step(pieces: DecoderPieces, attend: Attend, keep_kv: bool,
               x, p, cos, sin, lines):
  """One decoder layer: x [B, T, H] -> x (and its k, v when keep_kv)."""
  q, k, v = pieces.qkv(p, x, cos, sin)
  o = attend(q, k, v, lines)
  x = pieces.out_mlp(p, x, o)
  return (x, k, v) if keep_kv else x


def layout_pairs(layouts) -> float:
  """q-k pairs the kernels compute for index layouts: block_size^2 per
  window or block and block_size per gathered column, over all heads."""
  total = 0.0
  for lay in jax.tree.leaves(layouts, is_leaf=lambda x: hasattr(
      x, "block_size")):
    bs = lay.block_size
    total += float(jnp.sum(lay.block_count, dtype=jnp.float32)) * bs * bs
    if hasattr(lay, "column_count"):
      total += float(jnp.sum(lay.column_count, dtype=jnp.float32)) * bs
  return total


def _nbytes(tree) -> int:
  return sum(int(a.size) * a.dtype.itemsize for a in jax.tree.leaves(tree))


def memory_analysis(compiled) -> dict[str, int] | None:
  """XLA's buffer-assignment sizes of one executable (bytes), or None."""
  try:
    m = compiled.memory_analysis()
  except (NotImplementedError, AttributeError):  # some backends lack it
    return None
  if m is None:
    return None
  return {f: int(getattr(m, f + "_size_in_bytes", 0)) for f in
          ("argument", "output", "alias", "temp", "host_output")}


class PiecesPrefill:
  """A whole prefill from the pieces, one executable per distinct layer.

  Args:
    pieces: the decoder pieces.
    params: the run's params (its "layers" are the running layers).
    plans: one LayerPlan per running layer, in order.
    mode: "prefill" | "cache" | "cache_host".
  """

  def __init__(self, pieces: DecoderPieces, params: Params,
               plans: list[LayerPlan], mode: str):
    self.pieces, self.params, self.plans, self.mode = (pieces, params, plans,
                                                       mode)
    self.head = head_params(pieces.config, params)
    self._embed = self._logits = None
    self._steps: dict[Hashable, Any] = {}
    self.memory: dict[str, dict | None] = {}

  @property
  def keep_kv(self) -> bool:
    return self.mode != "prefill"

  def _jit_step(self, plan: LayerPlan):
    fn = functools.partial(layer_step, self.pieces, plan.attend,
                           self.keep_kv)
    if self.mode != "cache_host":
      return jax.jit(fn, donate_argnums=0)
    dev = SingleDeviceSharding(jax.devices()[0])
    host = SingleDeviceSharding(jax.devices()[0], memory_kind="pinned_host")
    return jax.jit(fn, donate_argnums=0, out_shardings=(dev, host, host))

  def compile(self, tokens: jax.Array) -> dict:
    """Compiles every executable ahead of time.

    Returns:
      {"compile_s", "executables": count, "memory": XLA sizes of the
      largest layer executable}.
    """
    begin = time.perf_counter()
    self._embed = jax.jit(self.pieces.embed).lower(
        self.params["embed"], tokens).compile()
    x, cos, sin = jax.eval_shape(self.pieces.embed, self.params["embed"],
                                 tokens)
    for plan in self.plans:
      if plan.key in self._steps:
        continue
      p = self.params["layers"][plan.param_index]
      compiled = self._jit_step(plan).lower(x, p, cos, sin,
                                            plan.lines).compile()
      self._steps[plan.key] = compiled
      self.memory[repr(plan.key)] = memory_analysis(compiled)
    self._logits = jax.jit(self.pieces.logits).lower(self.head, x).compile()
    return {"compile_s": time.perf_counter() - begin,
            "executables": len(self._steps) + 2}

  def __call__(self, tokens: jax.Array):
    """(logits [B, V] f32, [(k, v) per layer] or None), dispatched async."""
    x, cos, sin = self._embed(self.params["embed"], tokens)
    kv = []
    for plan in self.plans:
      out = self._steps[plan.key](
          x, self.params["layers"][plan.param_index], cos, sin, plan.lines)
      if self.keep_kv:
        x, k, v = out
        kv.append((k, v))
      else:
        x = out
    return self._logits(self.head, x), (kv if self.keep_kv else None)

  def step_bytes(self) -> int:
    """Bytes one layer's params take (for XLA peak predictions)."""
    return _nbytes(self.params["layers"][0])

  # ------------------------------------------------------------- phases
  def phases(self, tokens: jax.Array, index_keys: int = 1 << 30) -> dict:
    """One synchronised run, each piece its own executable, timed.

    Per layer: qkv, index (the attention's index build alone, on the same
    q/k; extra work outside the pipeline), attention (index + kernel) and
    out_mlp, each compiled separately and blocked on. The index build is
    compiled and timed for the first `index_keys` distinct layer
    settings only (None for the other layers). Returns seconds:
    {"embed", "logits", "qkv": [L], "index": [L or None], "attention": [L],
    "out_mlp": [L], "compile_s", "pairs" (q-k pairs computed over the
    "pairs_layers" layers whose index build ran)}.
    """
    begin = time.perf_counter()
    embed = jax.jit(self.pieces.embed).lower(self.params["embed"],
                                             tokens).compile()
    x, cos, sin = embed(self.params["embed"], tokens)
    p0 = self.params["layers"][self.plans[0].param_index]
    qkv = jax.jit(self.pieces.qkv).lower(p0, x, cos, sin).compile()
    q, k, v = qkv(p0, x, cos, sin)
    attend, index = {}, {}
    for plan in self.plans:
      if plan.key not in attend:
        attend[plan.key] = jax.jit(plan.attend).lower(
            q, k, v, plan.lines).compile()
        if plan.index is not None and len(index) < index_keys:
          index[plan.key] = jax.jit(plan.index).lower(q, k,
                                                      plan.lines).compile()
    o = jax.eval_shape(plan.attend, q, k, v, plan.lines)
    mlp = jax.jit(self.pieces.out_mlp).lower(p0, x, o).compile()
    logits = jax.jit(self.pieces.logits).lower(self.head, x).compile()
    compile_s = time.perf_counter() - begin
    warmed: set = set()

    def timed(fn, *args):
      t0 = time.perf_counter()
      out = jax.block_until_ready(fn(*args))
      return out, time.perf_counter() - t0

    # Warm every executable once (first runs load modules) before timing.
    q, k, v = jax.block_until_ready(qkv(p0, x, cos, sin))
    for plan in self.plans:
      if plan.key in attend and plan.key not in warmed:
        warmed.add(plan.key)
        jax.block_until_ready(attend[plan.key](q, k, v, plan.lines))
        if plan.key in index:
          jax.block_until_ready(index[plan.key](q, k, plan.lines))
    jax.block_until_ready(mlp(p0, x, jnp.zeros(o.shape, o.dtype)))
    jax.block_until_ready(logits(self.head, x))
    del q, k, v
    times: dict[str, Any] = {"qkv": [], "index": [], "attention": [],
                             "out_mlp": [], "pairs": 0.0, "pairs_layers": 0}
    b, t = tokens.shape
    causal = b * self.pieces.config.num_heads * t * (t + 1) / 2
    x, times["embed"] = timed(embed, self.params["embed"], tokens)
    x, cos, sin = x
    for plan in self.plans:
      p = self.params["layers"][plan.param_index]
      (q, k, v), s = timed(qkv, p, x, cos, sin)
      times["qkv"].append(s)
      if plan.key in index:
        layouts, s = timed(index[plan.key], q, k, plan.lines)
        times["pairs"] += layout_pairs(layouts)
        times["pairs_layers"] += 1
        del layouts
        times["index"].append(s)
      elif plan.index is None:  # the attention runs dense
        times["pairs"] += causal
        times["pairs_layers"] += 1
        times["index"].append(0.0)
      else:
        times["index"].append(None)
      o, s = timed(attend[plan.key], q, k, v, plan.lines)
      times["attention"].append(s)
      del q, k, v
      x, s = timed(mlp, p, x, o)
      times["out_mlp"].append(s)
      del o
    _, times["logits"] = timed(logits, self.head, x)
    times["compile_s"] = compile_s
    return times
