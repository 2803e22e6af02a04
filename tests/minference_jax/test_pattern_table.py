"""Pattern tables (minference_jax/pattern_table.py): per-head patterns as
traced arrays compute MInferenceAttention's layers, and all layers of a
model share one compiled layer step."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from minference_jax import (
    AShape,
    BlockSparse,
    Dense,
    PatternConfig,
    PatternTableAttention,
    VerticalSlash,
    make_attention,
    pattern_tables,
)
from minference_jax.index_bs import (
    block_sparse_indices,
    block_sparse_indices_traced,
)
from minference_jax.index_vs_estimate import (
    vertical_slash_indices,
    vertical_slash_indices_traced,
)
from models import (
    CausalLM,
    LayerAttentions,
    LayerwisePrefill,
    ModelConfig,
    random_params,
    shared_step_attention,
)

N, KV, D = 6, 2, 16
T = 192  # one length for most tests: they share compiled index builders


def _qkv(seed: int, t: int = T):
  """Random [1, t, N / KV, D] q, k, v (numpy: no compile per shape)."""
  rng = np.random.default_rng(seed)
  return tuple(jnp.asarray(rng.standard_normal((1, t, heads, D)), jnp.float32)
               for heads in (N, KV, KV))


def _random_config(seed: int, num_layers: int) -> PatternConfig:
  """Every kind with random per-head budgets; layer 1 without Vertical-Slash
  heads, the last layer all dense. Budgets come from a few values each
  (below and above the Vertical-Slash minima 30 / 50), so the layers' index
  widths repeat and the test compiles few programs."""
  rng = np.random.default_rng(seed)

  def pick(values) -> int:
    return int(rng.choice(values))

  def head(kinds):
    kind = kinds[rng.integers(len(kinds))]
    if kind == "vs":
      return VerticalSlash(pick([10, 40, 100]), pick([20, 70, 150]),
                           last_q=pick([32, 64]))
    if kind == "bs":
      return BlockSparse(pick([1, 2, 3]))
    if kind == "a":
      return AShape(pick([0, 4, 16]), pick([8, 40, 90]))
    return Dense()

  every = ("vs", "bs", "a", "dense")
  layers = [tuple(head(every) for _ in range(N)) for _ in range(num_layers)]
  layers[1] = tuple(head(("bs", "a", "dense")) for _ in range(N))
  layers[-1] = (Dense(),) * N
  return PatternConfig(layers=tuple(layers))


def _assert_layers_equal(attn, seed, t, atol):
  cfg = attn.pattern_config
  tables = pattern_tables(attn, cfg.num_layers, N)
  q, k, v = _qkv(seed, t)
  for i, table in enumerate(tables):
    np.testing.assert_allclose(
        table(q, k, v, layer_idx=i), attn(q, k, v, layer_idx=i), atol=atol,
        rtol=0, err_msg=f"seed {seed}, T={t}, layer {i}: {cfg.layers[i]}")


@pytest.mark.parametrize("backend,seed,t", [
    ("xla", 11, 192), ("xla", 12, 200),
    ("pallas", 13, 192), ("pallas", 14, 200),
])
def test_tables_equal_minference_attention(backend, seed, t):
  """Layer by layer, T a multiple of 64 and not. The Pallas kernels read the
  same index sets from index arrays of another width: equal to the last
  bit; the XLA paths may sum in another order. (Pallas, slower to compile
  in interpret mode: a mixed and an all-dense layer.)"""
  pallas = backend == "pallas"
  cfg = _random_config(seed, 2 if pallas else 3)
  attn = make_attention(cfg, backend, interpret=pallas)
  _assert_layers_equal(attn, seed, t, atol=0 if pallas else 2e-5)


def test_one_static_part_for_every_layer():
  attn = make_attention(_random_config(14, 4), "xla")
  tables = pattern_tables(attn, 4, N)
  statics = {jax.tree.structure(t) for t in tables}
  assert len(statics) == 1
  assert all(t.layer_key(i) == () for i, t in enumerate(tables))
  # One Pattern for every head gives identical tables.
  uniform = pattern_tables(make_attention(VerticalSlash(40, 60), "xla"), 2, N)
  assert all(bool(jnp.all(a == b)) for a, b in zip(
      jax.tree.leaves(uniform[0]), jax.tree.leaves(uniform[1])))


def test_traced_index_builders_equal_static_ones():
  seed, t = 15, T
  q, k, _ = _qkv(seed, t)
  rng = np.random.default_rng(seed)
  nv = rng.integers(0, 300, N)  # below and above the clamps (30, T)
  ns = rng.integers(0, 300, N)
  on = rng.random(N) < 0.7
  static = vertical_slash_indices(q, k, tuple(map(int, nv)),
                                  tuple(map(int, ns)), 64,
                                  active=tuple(map(bool, on)))
  traced = jax.jit(vertical_slash_indices_traced, static_argnames=(
      "max_vertical", "max_slash", "last_q"))(
          q, k, jnp.asarray(nv), jnp.asarray(ns), jnp.asarray(on),
          max_vertical=400, max_slash=400, last_q=64)
  np.testing.assert_array_equal(traced.vertical_count, static.vertical_count,
                                err_msg=f"seed {seed}")
  np.testing.assert_array_equal(traced.slash_count, static.slash_count)
  # Width: the clamped bound, min(T, max(bound, 30 / 50)).
  assert (traced.vertical.shape[-1], traced.slash.shape[-1]) == (t, t)
  for name in ("vertical", "slash"):
    got, want = getattr(traced, name), getattr(static, name)
    count = np.asarray(getattr(static, f"{name}_count"))
    for h in range(N):  # the kept lines; padding widths differ
      np.testing.assert_array_equal(got[0, h, :count[0, h]],
                                    want[0, h, :count[0, h]],
                                    err_msg=f"seed {seed} {name} head {h}")
  top = rng.integers(0, 6, N)
  static_bs = block_sparse_indices(q, k, tuple(map(int, top)), 64,
                                   active=tuple(map(bool, on)))
  traced_bs = block_sparse_indices_traced(q, k, jnp.asarray(top),
                                          jnp.asarray(on), max_top_k=9)
  np.testing.assert_array_equal(traced_bs.block_count, static_bs.block_count)
  width = static_bs.block_index.shape[-1]
  counts = np.asarray(static_bs.block_count)
  got = np.asarray(traced_bs.block_index)
  want = np.asarray(static_bs.block_index)
  for h in range(N):
    for m in range(counts.shape[-1]):
      c = counts[0, h, m]
      np.testing.assert_array_equal(got[0, h, m, :c], want[0, h, m, :c])
  assert traced_bs.block_index.shape[-1] == 3 >= width  # min(9, T/64)


def test_traced_index_builders_clamp_to_the_static_widths():
  seed, t = 20, T
  q, k, _ = _qkv(seed, t)
  on = jnp.asarray([True, False] * (N // 2))
  small = jnp.asarray([5, 500] * (N // 2))  # 500: inactive heads
  vs = vertical_slash_indices_traced(q, k, small, small, on, max_vertical=5,
                                     max_slash=40)
  assert (vs.vertical.shape[-1], vs.slash.shape[-1]) == (30, 50)
  np.testing.assert_array_equal(vs.vertical_count[0], [30, 0] * (N // 2),
                                err_msg=f"seed {seed}")
  np.testing.assert_array_equal(vs.slash_count[0], [50, 0] * (N // 2))
  bs = block_sparse_indices_traced(q, k, small, on, max_top_k=5)
  assert bs.block_index.shape[-1] == 3  # min(5, T / 64)
  np.testing.assert_array_equal(bs.block_count[0, :, -1], [3, 0] * (N // 2))


def test_traced_index_builders_reject_bad_budgets():
  q, k, _ = _qkv(0)
  ok = jnp.ones(N, bool)
  ones = jnp.ones(N, jnp.int32)
  with pytest.raises(ValueError, match=r"n_vertical must have shape \(6,\)"):
    vertical_slash_indices_traced(q, k, jnp.ones(5, jnp.int32), ones, ok,
                                  max_vertical=1, max_slash=1)
  with pytest.raises(ValueError, match="top_k must hold integer values"):
    block_sparse_indices_traced(q, k, jnp.ones(N), ok, max_top_k=1)
  with pytest.raises(ValueError, match="active must hold bool values"):
    block_sparse_indices_traced(q, k, ones, ones, max_top_k=1)
  with pytest.raises(ValueError, match="max_top_k must be >= 0"):
    block_sparse_indices_traced(q, k, ones, ok, max_top_k=-1)
  with pytest.raises(ValueError, match="top_k must be >= 0"):
    block_sparse_indices_traced(q, k, -ones, ok, max_top_k=1)
  # Concrete budgets above the bound would overflow the index width.
  with pytest.raises(ValueError, match=r"budget of 40, above max_vertical=35"):
    vertical_slash_indices_traced(q, k, ones.at[2].set(40), ones, ok,
                                  max_vertical=35, max_slash=1)
  with pytest.raises(ValueError, match=r"budget of 2, above max_top_k=1"):
    block_sparse_indices_traced(q, k, 2 * ones, ok, max_top_k=1)


def test_dense_fallbacks_follow_minference_attention():
  seed = 16
  cfg = _random_config(seed, 3)
  attn = make_attention(cfg, "xla", dense_threshold=1024)  # above T
  tables = pattern_tables(attn, 3, N)
  q, k, v = _qkv(seed)
  np.testing.assert_allclose(tables[0](q, k, v, layer_idx=0),
                             attn.dense.attend(q, k, v), atol=0, rtol=0)
  # A threshold above T for one kind: its heads dense, the others sparse.
  attn = make_attention(cfg, "xla", dense_threshold={"vertical_slash": 1024})
  table = pattern_tables(attn, 3, N)[0]
  np.testing.assert_allclose(table(q, k, v, layer_idx=0),
                             attn(q, k, v, layer_idx=0), atol=2e-5, rtol=0,
                             err_msg=f"seed {seed}: {cfg.layers[0]}")
  # A chunked-prefill step (q_offset > 0) runs dense as well.
  attn = make_attention(cfg, "xla")
  table = pattern_tables(attn, 3, N)[0]
  np.testing.assert_allclose(
      table(q[:, 64:], k, v, layer_idx=0, q_offset=64),
      attn(q[:, 64:], k, v, layer_idx=0, q_offset=64), atol=1e-6, rtol=0)


def test_config_mismatch_is_refused():
  attn = make_attention(_random_config(17, 3), "xla")
  with pytest.raises(ValueError, match="3 layers x 6 heads.*4 layers x 6"):
    pattern_tables(attn, 4, N)
  with pytest.raises(TypeError, match="MInferenceAttention"):
    pattern_tables(make_attention(None, "dense"), 3, N)
  table = pattern_tables(attn, 3, N)[0]
  q, k, v = _qkv(17)
  with pytest.raises(ValueError, match="6 heads, the model has 4"):
    table(q[:, :, :4], k, v, layer_idx=0)
  assert isinstance(table, PatternTableAttention)


def test_layers_of_a_searched_like_config_share_one_compiled_step():
  seed, layers = 18, 3
  config = ModelConfig.tiny("llama", num_layers=layers)
  heads = config.num_heads
  patterns = PatternConfig(layers=(
      (VerticalSlash(30, 50), BlockSparse(1), AShape(2, 20), Dense()),
      (AShape(4, 40), VerticalSlash(40, 70), VerticalSlash(30, 60),
       BlockSparse(2)),
      (BlockSparse(2), Dense(), AShape(0, 30), VerticalSlash(50, 50)),
  ))
  assert patterns.num_heads == heads
  attn = make_attention(patterns, "xla")
  shared = shared_step_attention(attn, layers, heads)
  assert isinstance(shared, LayerAttentions)
  t = 128
  assert LayerwisePrefill(config, attn).num_steps(t) == layers
  assert LayerwisePrefill(config, shared).num_steps(t) == 1
  params = random_params(config, jax.random.key(seed), jnp.float32, std=0.2)
  tokens = jnp.asarray(np.random.default_rng(seed).integers(0, 96, (1, t)),
                       jnp.int32)
  want, _ = CausalLM(config, params, attention=attn).prefill(
      tokens, logits_for="all")
  model = CausalLM(config, params, attention=shared)
  compiled = model.layerwise.compile(params, tokens, logits_for="all")
  assert compiled.executables == 3  # embed, one layer step, logits
  got, _ = compiled(params, tokens)
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5,
                             err_msg=f"seed {seed}")
  # Anything else passes through unchanged.
  dense = make_attention(None, "dense")
  assert shared_step_attention(dense, layers, heads) is dense
  uniform = make_attention(VerticalSlash(30, 50), "xla")
  assert shared_step_attention(uniform, layers, heads) is uniform


def test_a_head_block_of_a_table_computes_those_heads():
  """`for_head_block` with a traced start (as on a mesh): the output of
  query heads [3, 6) from their KV head alone."""
  seed = 19
  attn = make_attention(_random_config(seed, 3), "xla")
  table = pattern_tables(attn, 3, N)[0]
  q, k, v = _qkv(seed)
  full = table(q, k, v, layer_idx=0)

  @jax.jit
  def block(start, q, k, v):
    return table.for_head_block(start, N // KV)(q, k, v, layer_idx=0)

  got = block(jnp.int32(3), q[:, :, 3:], k[:, :, 1:], v[:, :, 1:])
  np.testing.assert_allclose(got, full[:, :, 3:], atol=2e-5, rtol=0,
                             err_msg=f"seed {seed}")
  with pytest.raises(ValueError, match="block of 7 heads"):
    table.for_head_block(0, 7)
