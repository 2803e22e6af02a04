"""HF tensor-name mapping tables and state-dict <-> params conversion.

Params pytree (the same layout for every architecture; linear weights are
stored [in, out], i.e. transposed from HF's [out, in]):

  {"embed": [V, H], "final_norm": [H], "lm_head": [H, V] (untied only),
   "layers": [ {"attn_norm": [H], "wq": [H, N*D], "wk": [H, K*D],
                "wv": [H, K*D], "wo": [N*D, H],
                "bq": [N*D], "bk": [K*D], "bv": [K*D]  (attention_bias),
                "bo": [H]                              (attention_out_bias),
                "mlp_norm": [H], "w_gate": [H, I], "w_up": [H, I],
                "w_down": [I, H],
                "b_gate": [I], "b_up": [I], "b_down": [H]  (mlp_bias)}, ...]}

Fused HF tensors (Phi-3 qkv_proj/gate_up_proj, GLM gate_up_proj, ChatGLM
query_key_value/dense_h_to_4h) are split by rows [q | k | v] and
[gate | up] at load time.
"""

import dataclasses
import functools
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from models.config import ModelConfig
from models.decoder import abstract_params, param_axes
from models.partitioning import Partitioning

Params = dict[str, Any]

# Buffers some checkpoints carry that are not parameters.
_IGNORED_SUFFIXES = ("rotary_emb.inv_freq", "rotary_pos_emb.inv_freq")


@dataclasses.dataclass(frozen=True)
class TensorSpec:
  """Where one parameter comes from in an HF state dict.

  Attributes:
    path: location in the params pytree, e.g. ("layers", 3, "wq").
    source: the HF tensor name.
    source_shape: the full HF tensor's shape (checked before slicing).
    rows: (start, stop) rows of a fused source tensor, or None for all.
    transpose: HF [out, in] -> our [in, out].
  """

  path: tuple[str | int, ...]
  source: str
  source_shape: tuple[int, ...]
  rows: tuple[int, int] | None = None
  transpose: bool = False


def _linear(path, source, out_dim, in_dim, rows=None, full_out=None):
  shape = (full_out if full_out is not None else out_dim, in_dim)
  return TensorSpec(path, source, shape, rows, transpose=True)


def _vector(path, source, size, rows=None, full=None):
  return TensorSpec(path, source, (full if full is not None else size,), rows)


def _split_rows(sizes: list[int]) -> list[tuple[int, int]]:
  bounds, start = [], 0
  for s in sizes:
    bounds.append((start, start + s))
    start += s
  return bounds


def _attention_specs(c: ModelConfig, i: int, prefix: str) -> list[TensorSpec]:
  """q/k/v/o, separate (llama, qwen2, glm) or fused (phi3, chatglm)."""
  h, qd, kd = c.hidden_size, c.q_dim, c.kv_dim
  lp = ("layers", i)
  specs: list[TensorSpec] = []
  if c.arch in ("phi3", "chatglm"):
    fused = (f"{prefix}.self_attn.qkv_proj" if c.arch == "phi3" else
             f"{prefix}.self_attention.query_key_value")
    total = qd + 2 * kd
    names = ("q", "k", "v")
    for name, rows in zip(names, _split_rows([qd, kd, kd])):
      specs.append(_linear((*lp, f"w{name}"), f"{fused}.weight",
                           rows[1] - rows[0], h, rows, total))
      if c.attention_bias:
        specs.append(_vector((*lp, f"b{name}"), f"{fused}.bias",
                             rows[1] - rows[0], rows, total))
    out = (f"{prefix}.self_attn.o_proj" if c.arch == "phi3" else
           f"{prefix}.self_attention.dense")
  else:
    for name, dim in (("q", qd), ("k", kd), ("v", kd)):
      src = f"{prefix}.self_attn.{name}_proj"
      specs.append(_linear((*lp, f"w{name}"), f"{src}.weight", dim, h))
      if c.attention_bias:
        specs.append(_vector((*lp, f"b{name}"), f"{src}.bias", dim))
    out = f"{prefix}.self_attn.o_proj"
  specs.append(_linear((*lp, "wo"), f"{out}.weight", h, qd))
  if c.attention_out_bias:
    specs.append(_vector((*lp, "bo"), f"{out}.bias", h))
  return specs


def _mlp_specs(c: ModelConfig, i: int, prefix: str) -> list[TensorSpec]:
  """gate/up/down, separate (llama, qwen2) or fused gate|up (others)."""
  h, m = c.hidden_size, c.intermediate_size
  lp = ("layers", i)
  specs: list[TensorSpec] = []
  if c.arch in ("phi3", "glm", "chatglm"):
    fused = (f"{prefix}.mlp.dense_h_to_4h" if c.arch == "chatglm" else
             f"{prefix}.mlp.gate_up_proj")
    down = (f"{prefix}.mlp.dense_4h_to_h" if c.arch == "chatglm" else
            f"{prefix}.mlp.down_proj")
    for name, rows in zip(("gate", "up"), _split_rows([m, m])):
      specs.append(_linear((*lp, f"w_{name}"), f"{fused}.weight", m, h, rows,
                           2 * m))
      if c.mlp_bias:
        specs.append(_vector((*lp, f"b_{name}"), f"{fused}.bias", m, rows,
                             2 * m))
  else:
    for name in ("gate", "up"):
      src = f"{prefix}.mlp.{name}_proj"
      specs.append(_linear((*lp, f"w_{name}"), f"{src}.weight", m, h))
      if c.mlp_bias:
        specs.append(_vector((*lp, f"b_{name}"), f"{src}.bias", m))
    down = f"{prefix}.mlp.down_proj"
  specs.append(_linear((*lp, "w_down"), f"{down}.weight", h, m))
  if c.mlp_bias:
    specs.append(_vector((*lp, "b_down"), f"{down}.bias", h))
  return specs


def mapping_table(config: ModelConfig) -> list[TensorSpec]:
  """The explicit HF-name mapping for one config (one entry per param).

  Raises:
    ValueError: for an architecture without a table.
  """
  c = config
  if c.arch == "chatglm":
    layer_fmt = "transformer.encoder.layers.{}"
    embed = "transformer.embedding.word_embeddings.weight"
    final = "transformer.encoder.final_layernorm.weight"
    head = "transformer.output_layer.weight"
  elif c.arch in ("llama", "qwen2", "phi3", "glm"):
    layer_fmt = "model.layers.{}"
    embed = "model.embed_tokens.weight"
    final = "model.norm.weight"
    head = "lm_head.weight"
  else:
    raise ValueError(f"no weight-name table for architecture {c.arch!r}")
  h = c.hidden_size
  specs = [TensorSpec(("embed",), embed, (c.vocab_size, h))]
  for i in range(c.num_layers):
    prefix = layer_fmt.format(i)
    specs.append(_vector(("layers", i, "attn_norm"),
                         f"{prefix}.input_layernorm.weight", h))
    specs += _attention_specs(c, i, prefix)
    specs.append(_vector(("layers", i, "mlp_norm"),
                         f"{prefix}.post_attention_layernorm.weight", h))
    specs += _mlp_specs(c, i, prefix)
  specs.append(_vector(("final_norm",), final, h))
  if not c.tie_word_embeddings:
    specs.append(_linear(("lm_head",), head, c.vocab_size, h))
  return specs


def expected_tensors(config: ModelConfig) -> dict[str, tuple[int, ...]]:
  """{HF tensor name: shape} a checkpoint of this config must contain."""
  return {s.source: s.source_shape for s in mapping_table(config)}


def _param_shape(spec: TensorSpec) -> tuple[int, ...]:
  shape = list(spec.source_shape)
  if spec.rows is not None:
    shape[0] = spec.rows[1] - spec.rows[0]
  return tuple(reversed(shape)) if spec.transpose else tuple(shape)


def _empty_tree(config: ModelConfig) -> Params:
  return {"layers": [{} for _ in range(config.num_layers)]}


def _set(tree: Params, path: tuple[str | int, ...], value: Any) -> None:
  node = tree
  for key in path[:-1]:
    node = node[key]
  node[path[-1]] = value


def _get(tree: Params, path: tuple[str | int, ...]) -> Any:
  node = tree
  for key in path:
    node = node[key]
  return node


def param_shapes(config: ModelConfig, dtype: Any = jnp.bfloat16) -> Params:
  """The params pytree as jax.ShapeDtypeStruct leaves (no memory used).

  The Flax decoder's abstract init (`models.decoder.abstract_params`); the
  mapping table yields the same shapes (tested).
  """
  return abstract_params(config, dtype)


def param_shardings(config: ModelConfig, partitioning: Partitioning) -> Params:
  """The NamedSharding of every parameter, from its logical axes.

  Raises:
    ValueError: naming the parameter when a dimension does not split.
  """
  return jax.tree_util.tree_map_with_path(
      lambda path, shape, names: partitioning.array_sharding(
          shape.shape, names, f"parameter {jax.tree_util.keystr(path)}"),
      param_shapes(config), param_axes(config))


def mapped_shapes(config: ModelConfig) -> Params:
  """The params pytree of shapes the mapping table produces."""
  tree = _empty_tree(config)
  for spec in mapping_table(config):
    _set(tree, spec.path, _param_shape(spec))
  return tree


@functools.partial(jax.jit, static_argnames=("shape", "dtype", "std",
                                              "offset", "sharding"))
def _normal_draw(key, *, shape, dtype, std, offset, sharding):
  """std * N(0, 1) + offset in `dtype`, drawn on the device (placed by
  `sharding` when given); XLA fuses the float32 draw into the cast, so no
  float32 copy of the array is kept."""
  value = (std * jax.random.normal(key, shape, jnp.float32)
           + offset).astype(dtype)
  if sharding is not None:
    value = jax.lax.with_sharding_constraint(value, sharding)
  return value


def random_params(
    config: ModelConfig,
    key: jax.Array | int,
    dtype: Any = jnp.bfloat16,
    std: float = 0.02,
    *,
    on_device: bool = False,
    partitioning: Partitioning | None = None,
) -> Params:
  """Random-normal params (norm gains 1 + noise), for tests and benchmarks.

  Args:
    config: the geometry.
    key: a jax PRNG key or an int seed.
    dtype: parameter dtype.
    std: standard deviation of the weights.
    on_device: draw with jax.random on the device, one jitted draw per
      parameter straight into `dtype` (for large models: the peak is the
      model in `dtype` plus one parameter's draw, never a float32 copy of
      the model); otherwise numpy on the host (fast for small ones).
    partitioning: draw on the device (as on_device) with each parameter
      placed in its shards over this mesh (param_shardings).

  Raises:
    ValueError: when a parameter does not split over the partitioning.
  """
  shapes = param_shapes(config, dtype)
  flat, treedef = jax.tree_util.tree_flatten_with_path(shapes)
  if isinstance(key, int):
    key = jax.random.key(key)
  offsets = [1.0 if "norm" in jax.tree_util.keystr(path) else 0.0
             for path, _ in flat]
  if on_device or partitioning is not None:
    shardings = ([None] * len(flat) if partitioning is None else
                 jax.tree.leaves(param_shardings(config, partitioning)))
    keys = jax.random.split(key, len(flat))
    out = [_normal_draw(k, shape=tuple(leaf.shape), dtype=jnp.dtype(dtype),
                        std=float(std), offset=offset, sharding=sharding)
           for k, (_, leaf), offset, sharding in zip(keys, flat, offsets,
                                                     shardings, strict=True)]
    return jax.tree.unflatten(treedef, out)
  seed = np.asarray(jax.random.key_data(key)).ravel().tolist()
  rng = np.random.default_rng(seed)
  out = []
  for (_, leaf), offset in zip(flat, offsets):
    value = std * rng.standard_normal(leaf.shape, np.float32)
    if offset:
      value = value + offset
    out.append(jnp.asarray(value).astype(dtype))
  return jax.tree.unflatten(treedef, out)


def _is_ignored(name: str, config: ModelConfig) -> bool:
  if name.endswith(_IGNORED_SUFFIXES):
    return True
  # Tied checkpoints sometimes still store the (identical) output matrix.
  return config.tie_word_embeddings and name in (
      "lm_head.weight", "transformer.output_layer.weight")


def params_from_state_dict(
    config: ModelConfig,
    state_dict: Mapping[str, Any],
    dtype: Any = jnp.bfloat16,
    *,
    strict: bool = True,
    partitioning: Partitioning | None = None,
) -> Params:
  """Converts an HF-named state dict into our params pytree.

  Tensors are read, sliced, transposed and cast to `dtype` one source
  tensor at a time (a lazy Mapping, e.g. SafetensorsStateDict, is read
  tensor by tensor; no full float32 copy of the model is made). With a
  partitioning each tensor goes straight to its devices, split by the
  logical rules (`jax.make_array_from_callback`: every process places only
  its own devices' shards), so a model larger than one device loads.

  Args:
    config: the model geometry (selects the mapping table).
    state_dict: {HF name: array} (numpy, ml_dtypes bfloat16 or jax).
    dtype: parameter dtype.
    strict: reject tensors the table does not use (besides rotary
      buffers and a tied lm_head).
    partitioning: mesh + rules to shard the params over (see
      models.sharded.param_shardings); None: the default device.

  Returns:
    The params pytree (see the module docstring).

  Raises:
    ValueError: for missing tensors, a shape mismatch (naming the tensor)
      or, with strict, unexpected tensors; or an unknown architecture.
  """
  specs = mapping_table(config)
  by_source: dict[str, list[TensorSpec]] = {}
  for spec in specs:
    by_source.setdefault(spec.source, []).append(spec)
  missing = [name for name in by_source if name not in state_dict]
  if missing:
    shown = ", ".join(repr(m) for m in missing[:5])
    more = f" (and {len(missing) - 5} more)" if len(missing) > 5 else ""
    raise ValueError(f"state dict lacks {len(missing)} tensor(s) needed for "
                     f"arch {config.arch!r}: {shown}{more}")
  if strict:
    unexpected = [n for n in state_dict
                  if n not in by_source and not _is_ignored(n, config)]
    if unexpected:
      shown = ", ".join(repr(u) for u in unexpected[:5])
      raise ValueError(f"state dict has {len(unexpected)} tensor(s) that arch "
                       f"{config.arch!r} does not use: {shown} "
                       "(pass strict=False to ignore them)")
  np_dtype = np.dtype(jnp.dtype(dtype))
  axes = None if partitioning is None else param_axes(config)
  tree = _empty_tree(config)
  for source, group in by_source.items():
    array = state_dict[source]
    expected = group[0].source_shape
    if tuple(array.shape) != expected:
      raise ValueError(f"tensor {source!r} has shape {tuple(array.shape)}, "
                       f"expected {expected} for arch {config.arch!r}")
    host = np.asarray(array)
    for spec in group:
      part = host if spec.rows is None else host[spec.rows[0]:spec.rows[1]]
      if spec.transpose:
        part = part.T
      part = np.ascontiguousarray(part.astype(np_dtype, copy=False))
      if partitioning is None:
        _set(tree, spec.path, jnp.asarray(part))
        continue
      sharding = partitioning.array_sharding(
          part.shape, _get(axes, spec.path), jax.tree_util.keystr(spec.path))
      _set(tree, spec.path, jax.make_array_from_callback(
          part.shape, sharding, lambda index, part=part: part[index]))
    del host, array
  return tree


def params_to_state_dict(
    config: ModelConfig, params: Params
) -> dict[str, np.ndarray]:
  """Inverse of params_from_state_dict: an HF-named {name: numpy array}.

  Fused HF tensors are reassembled from their row blocks. Arrays keep the
  params' dtype (bfloat16 via ml_dtypes).
  """
  out: dict[str, np.ndarray] = {}
  for spec in mapping_table(config):
    value = np.asarray(_get(params, spec.path))
    if spec.transpose:
      value = value.T
    if spec.rows is None:
      out[spec.source] = np.ascontiguousarray(value)
      continue
    if spec.source not in out:
      out[spec.source] = np.zeros(spec.source_shape, value.dtype)
    out[spec.source][spec.rows[0]:spec.rows[1]] = value
  return out
