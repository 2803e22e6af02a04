"""Random inputs and random valid index layouts for the kernel tests."""

import contextlib

import jax
import jax.numpy as jnp
import numpy as np

from pallas_kernels.layouts import (
    AShapeLayout,
    BlockSparseLayout,
    VerticalSlashLayout,
)
from pallas_kernels.reference import masked_attention_reference

BS = 64


def fresh_rng() -> tuple[np.random.Generator, int]:
  """A generator seeded from OS entropy and its seed (for failure messages)."""
  seed = int(np.random.SeedSequence().entropy % (2**32))
  return np.random.default_rng(seed), seed


def random_qkv(rng, b, t, n, kv, d, dtype=jnp.float32, s=None):
  """Random q [B, T, N, D], k/v [B, S, K, D] in `dtype` (S = T unless
  given; never zeros)."""
  s = t if s is None else s

  def draw(shape):
    return jnp.asarray(rng.standard_normal(shape, np.float32), dtype)

  return draw((b, t, n, d)), draw((b, s, kv, d)), draw((b, s, kv, d))


def random_vs_layout(
    rng, b, n, t, n_slash, n_vert, *, inactive=(), bs=BS
) -> VerticalSlashLayout:
  """A random valid Vertical-Slash layout (numpy loops; test sizes only).

  Per row block: disjoint ascending bs-wide windows at arbitrary (unaligned)
  starts, usually one crossing the diagonal plus some left of the block, and
  ascending single columns < r0 outside every window. Padding entries hold
  random in-range values (the kernels must never read them as data). Heads in
  `inactive` get all counts 0.
  """
  tb = -(-t // bs)
  count = np.zeros((b, n, tb), np.int32)
  offset = rng.integers(0, t, (b, n, tb, max(n_slash, 1))).astype(np.int32)
  ccount = np.zeros((b, n, tb), np.int32)
  cindex = rng.integers(0, t, (b, n, tb, max(n_vert, 1))).astype(np.int32)
  for bb in range(b):
    for h in range(n):
      if h in inactive:
        continue
      for m in range(tb):
        r0, end = m * bs, min((m + 1) * bs, t)
        starts = []
        if n_slash and rng.random() < 0.85:
          # A window crossing the diagonal (start in [end - bs, r0 + ...]).
          lo = max(0, end - bs - bs // 2)
          starts.append(int(rng.integers(lo, end)))
        limit = starts[0] if starts else end
        left = []
        pos = int(rng.integers(0, bs))
        while pos + bs <= limit and len(left) + len(starts) < n_slash:
          if rng.random() < 0.6:
            left.append(pos)
            pos += bs + int(rng.geometric(0.3) - 1)
          else:
            pos += int(rng.integers(1, 2 * bs))
        wins = sorted(left + starts)
        count[bb, h, m] = len(wins)
        offset[bb, h, m, : len(wins)] = wins
        covered = np.zeros(t, bool)
        for o in wins:
          covered[o : o + bs] = True
        free = np.flatnonzero(~covered[:r0])
        k = min(len(free), int(rng.integers(0, n_vert + 1)))
        cols = np.sort(rng.choice(free, size=k, replace=False))
        ccount[bb, h, m] = k
        cindex[bb, h, m, :k] = cols
  return VerticalSlashLayout(
      block_count=jnp.asarray(count),
      block_offset=jnp.asarray(offset[..., :n_slash]),
      column_count=jnp.asarray(ccount),
      column_index=jnp.asarray(cindex[..., :n_vert]),
      block_size=bs,
  )


def random_bs_layout(
    rng, b, n, t, top_k, *, inactive=(), bs=BS
) -> BlockSparseLayout:
  """A random valid Block-Sparse layout: sorted distinct key blocks <= m.

  The diagonal block is present in most rows; padding entries are random
  in-range block ids. Heads in `inactive` get all counts 0.
  """
  tb = -(-t // bs)
  count = np.zeros((b, n, tb), np.int32)
  index = np.zeros((b, n, tb, max(top_k, 1)), np.int32)
  for bb in range(b):
    for h in range(n):
      for m in range(tb):
        index[bb, h, m] = rng.integers(0, m + 1, max(top_k, 1))
        if h in inactive:
          continue
        c = int(rng.integers(0, min(m + 1, top_k) + 1))
        if c == 0:
          continue
        pool = np.arange(m)
        if rng.random() < 0.8:
          chosen = np.append(rng.choice(pool, c - 1, replace=False), m)
        else:
          chosen = rng.choice(np.arange(m + 1), c, replace=False)
        chosen = np.sort(chosen)
        count[bb, h, m] = c
        index[bb, h, m, :c] = chosen
  return BlockSparseLayout(
      block_count=jnp.asarray(count),
      block_index=jnp.asarray(index[..., :top_k]),
      block_size=bs,
  )


def random_a_shape_layout(rng, n, t, *, inactive=()) -> AShapeLayout:
  """Random per-head sink/window sizes (some beyond T); inactive heads 0/0."""
  n_init = rng.integers(0, t + 8, n)
  n_local = rng.integers(1, t + 8, n)
  for h in inactive:
    n_init[h] = n_local[h] = 0
  return AShapeLayout(
      n_init=jnp.asarray(n_init, jnp.int32),
      n_local=jnp.asarray(n_local, jnp.int32),
  )


# Jitted: one compile per shape instead of op-by-op dispatch.
_masked_attention_reference = jax.jit(masked_attention_reference)


def reference(q, k, v, mask):
  """The f32 dense masked reference on upcast inputs."""
  f32 = lambda x: x.astype(jnp.float32)  # noqa: E731
  return np.asarray(_masked_attention_reference(f32(q), f32(k), f32(v),
                                                mask))


def assert_close(out, ref, dtype, seed, what=""):
  """f32: max abs error <= 2e-5 (values are O(1)); 16-bit: rel L2 <= 1e-2."""
  out = np.asarray(jnp.asarray(out).astype(jnp.float32))
  assert np.isfinite(out).all(), f"non-finite output ({what}, seed={seed})"
  err = np.abs(out - ref).max()
  rel = np.linalg.norm(out - ref) / max(np.linalg.norm(ref), 1e-30)
  if jnp.dtype(dtype) == jnp.float32:
    assert err <= 2e-5, f"max abs err {err:.2e} ({what}, seed={seed})"
  else:
    assert rel <= 1e-2, f"rel err {rel:.2e} ({what}, seed={seed})"


def check_vs_layout(layout: VerticalSlashLayout, t: int) -> None:
  """Asserts the layout contract: windows in [0, T) disjoint ascending,
  columns ascending, < r0 and outside every window, counts in range."""
  bs = layout.block_size
  cnt = np.asarray(layout.block_count)
  off = np.asarray(layout.block_offset)
  ccnt = np.asarray(layout.column_count)
  cidx = np.asarray(layout.column_index)
  assert (cnt >= 0).all() and (cnt <= off.shape[-1]).all()
  assert (ccnt >= 0).all() and (ccnt <= cidx.shape[-1]).all()
  for idx in np.ndindex(cnt.shape):
    r0 = idx[-1] * bs
    w = off[idx][: cnt[idx]]
    c = cidx[idx][: ccnt[idx]]
    assert ((w >= 0) & (w < t)).all(), (idx, w)
    assert (np.diff(w) >= bs).all(), (idx, w)
    assert (np.diff(c) > 0).all() and (c < r0).all() and (c >= 0).all()
    inside = ((c[:, None] >= w[None, :]) & (c[:, None] < w[None, :] + bs))
    assert not inside.any(), (idx, c, w)


def check_bs_layout(layout: BlockSparseLayout) -> None:
  """Asserts sorted distinct key blocks in [0, m] and counts <= min(m+1, KB)."""
  cnt = np.asarray(layout.block_count)
  ind = np.asarray(layout.block_index)
  for idx in np.ndindex(cnt.shape):
    m = idx[-1]
    blocks = ind[idx][: cnt[idx]]
    assert cnt[idx] <= min(m + 1, ind.shape[-1])
    assert (np.diff(blocks) > 0).all() and (blocks >= 0).all()
    assert (blocks <= m).all(), (idx, blocks)


def lower_for_gpu(fn, args, device_kind: str = "NVIDIA H200"):
  """Cross-lowers jit(fn) for an abstract GPU (e.g. "NVIDIA A100") on CPU:
  the full Pallas -> Triton / Mosaic GPU lowering, no ptxas (that runs only
  on a GPU), so GPU-only errors fail in CI (reference/jax_pallas.md §4)."""
  import jax
  from jax.sharding import AbstractDevice, AbstractMesh, AxisType

  mesh = AbstractMesh(
      (1,), ("x",), (AxisType.Explicit,),
      abstract_device=AbstractDevice(device_kind=device_kind,
                                     num_cores=None, platform="gpu"),
  )
  with jax.sharding.use_abstract_mesh(mesh):
    return jax.jit(fn).trace(*args).lower(lowering_platforms=("cuda",))


# name -> (jax.default_backend(), compute capability of device 0)
FAKE_DEVICES = {"h100": ("gpu", "9.0"), "a100": ("gpu", "8.0"),
                "cpu": ("cpu", None)}


def fake_device(monkeypatch, name: str) -> None:
  """Makes `jax.default_backend()` and `jax.devices()[0]` look like a device
  of FAKE_DEVICES (what the implementations' "not supported here" tests
  read); JAX itself keeps computing on the CPU."""
  import types

  backend, capability = FAKE_DEVICES[name]
  monkeypatch.setattr(jax, "default_backend", lambda: backend)
  if capability is not None:
    device = types.SimpleNamespace(platform="gpu",
                                   compute_capability=capability)
    monkeypatch.setattr(jax, "devices", lambda *args, **kwargs: [device])


@contextlib.contextmanager
def reports_seed(seed: int):
  """Appends the seed to the message of an assertion failing inside."""
  try:
    yield
  except AssertionError as e:
    raise AssertionError(f"{e} (seed={seed})") from e
