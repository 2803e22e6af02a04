"""The whole-model executors bench-prefill times.

Every executor has `compile(tokens)` (ahead of time; returns compile_s and
the executable count), `__call__(tokens)` -> (logits [B, V], kept K/V or
None) dispatched asynchronously, `memory` (XLA's buffer sizes per
executable, where the backend has them) and `step_bytes()` (parameter
bytes of the largest executable, for XLA peak predictions).

* `LibraryPrefill` (executor "layerwise", the default):
  `models.LayerwisePrefill`, what `CausalLM` runs for prompts of at least
  `layerwise_from` tokens (also `CausalLM.prefill`, `models.prefill`): one
  compiled step per distinct layer, the residual and the KV cache donated.
* `ModelPrefill` (executor "model"): `models.forward` under one jit, what
  `CausalLM` runs for shorter prompts.
* `ShardedModelPrefill` (any case of a config with a multi-device mesh,
  online or replayed indices): `models.make_sharded_prefill(...)(tokens)`,
  DeepSpeed-Ulysses over the mesh, through `CausalLM` (layer by layer at
  long lengths).
* `experiments.prefill.pieces.PiecesPrefill` (executor "pieces", and every
  "cache_host" row): the benchmark's own executor, for K/V written to
  pinned host memory and for the phase breakdown.
"""

import time

import jax

from experiments.prefill.pieces import memory_analysis
from models import (
    CausalLM,
    KVCache,
    LayerwisePrefill,
    MeshConfig,
    ModelConfig,
    Params,
    forward_jit,
    make_sharded_prefill,
)


def _nbytes(tree) -> int:
  return sum(int(a.size) * a.dtype.itemsize for a in jax.tree.leaves(tree))


def _check_mode(mode: str, what: str) -> None:
  if mode not in ("prefill", "cache"):
    raise ValueError(f"{what} runs 'prefill' or 'cache', not {mode!r}")


class LibraryPrefill:
  """`models.LayerwisePrefill` compiled ahead of time (module doc).

  Args:
    config: the geometry of the running layers.
    params: their params.
    attention: the AttentionFn (a `models.LayerAttentions` for per-layer
      replayed lines).
    chunk_size: tokens per chunk.
    mode: "prefill" (no cache) or "cache" (a KV cache of T positions,
      donated and returned by every run, as `CausalLM` callers reuse it).
  """

  def __init__(self, config: ModelConfig, params: Params, attention,
               chunk_size: int | None, mode: str):
    _check_mode(mode, "the library's layerwise prefill")
    self.config, self.params, self.mode = config, params, mode
    self.prefill = LayerwisePrefill(config, attention, chunk_size)
    self._compiled = self._cache = None
    self.memory: dict[str, dict | None] = {}

  def compile(self, tokens: jax.Array) -> dict:
    begin = time.perf_counter()
    if self.mode == "cache":
      b, t = tokens.shape
      self._cache = KVCache.init(self.config, b, t,
                                 self.params["embed"].dtype)
    self._compiled = self.prefill.compile(self.params, tokens,
                                          cache=self._cache)
    self.memory = dict(self._compiled.memory)
    return {"compile_s": time.perf_counter() - begin,
            "executables": self._compiled.executables}

  def __call__(self, tokens: jax.Array):
    logits, cache = self._compiled(self.params, tokens, cache=self._cache)
    self._cache = cache  # donated: the next run writes the same buffers
    return logits, cache

  def step_bytes(self) -> int:
    return _nbytes(self.params["layers"][0])


class ModelPrefill:
  """`models.forward` under one jit (`forward_jit`, as `CausalLM` runs
  prompts shorter than `layerwise_from`).

  Args: as LibraryPrefill (a plain AttentionFn).
  """

  def __init__(self, config: ModelConfig, params: Params, attention,
               chunk_size: int | None, mode: str):
    _check_mode(mode, "ModelPrefill")
    self.config, self.params, self.attention = config, params, attention
    self.chunk_size, self.mode = chunk_size, mode
    self._compiled = self._cache = None
    self.memory: dict[str, dict | None] = {}

  def compile(self, tokens: jax.Array) -> dict:
    begin = time.perf_counter()
    if self.mode == "cache":
      b, t = tokens.shape
      self._cache = KVCache.init(self.config, b, t,
                                 self.params["embed"].dtype)
    self._compiled = forward_jit.lower(
        self.params, tokens, None, self._cache, None,
        config=self.config, attention=self.attention, q_offset=0,
        logits_for="last", chunk_size=self.chunk_size,
        rope_seq_len=None).compile()
    self.memory["forward"] = memory_analysis(self._compiled)
    return {"compile_s": time.perf_counter() - begin, "executables": 1}

  def __call__(self, tokens: jax.Array):
    logits, cache = self._compiled(self.params, tokens, None, self._cache,
                                   None)
    self._cache = cache  # donated: the next run writes the same buffers
    return logits, cache

  def step_bytes(self) -> int:
    return _nbytes(self.params)


class ShardedModelPrefill:
  """`models.make_sharded_prefill(model, mesh_config, logits_for="last")`:
  the prefill a user runs on several devices (prefill mode only).

  `compile` runs the prefill once (JAX compiles on the first call; the
  time includes that run). No XLA memory sizes (`memory` stays empty).

  Args:
    config, params, attention, chunk_size: the single-device model (a
      `models.LayerAttentions` of replayed lines is wrapped layer by layer:
      one compiled layer step, each device slicing its heads' lines).
    mesh_config: the mesh (more than one device).
  """

  def __init__(self, config: ModelConfig, params: Params, attention,
               chunk_size: int | None, mesh_config: MeshConfig):
    model = CausalLM(config, params, attention=attention,
                     chunk_size=chunk_size)
    self.run = make_sharded_prefill(model, mesh_config, logits_for="last")
    self.memory: dict[str, dict | None] = {}
    self.mode = "prefill"

  def compile(self, tokens: jax.Array) -> dict:
    begin = time.perf_counter()
    jax.block_until_ready(self.run(tokens))
    model = self.run.model
    t = tokens.shape[1]
    steps = (model.layerwise.num_steps(t)
             if t >= (model.layerwise_from or 1 << 62) else 0)
    return {"compile_s": time.perf_counter() - begin,
            "executables": steps + 2 if steps else 1,
            "compile_includes_one_run": True}

  def __call__(self, tokens: jax.Array):
    return self.run(tokens), None

  def step_bytes(self) -> int:
    return 0
