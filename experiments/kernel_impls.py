"""The kernel implementations `bench-kernels` times, through public entry
points only.

Each sparse op has one entry point, `<op>_attention(q, k, v, layout, *,
implementation=None, config=None, interpret=False)` in
`pallas_kernels.<op>`, which runs the named implementation
("pallas_mosaic_gpu", "pallas_triton" or "xla") with `config` (None: that
implementation's default). A benchmark "impl" names one implementation and,
where it needs one, the kernel config to pass; the dense flash kernel has
one implementation (Pallas-Triton).
"""

import functools
from collections.abc import Callable, Sequence

from pallas_kernels import a_shape, block_sparse, flash, vertical_slash
from pallas_kernels.vertical_slash import pallas_mosaic_gpu as vs_mosaic_gpu

# benchmark impl -> the entry points' `implementation=`.
IMPLEMENTATIONS = {
    "triton": "pallas_triton",
    "mosaic_gpu": "pallas_mosaic_gpu",
    "mosaic_gpu_k64": "pallas_mosaic_gpu",
    "mosaic_gpu_k128": "pallas_mosaic_gpu",
    "xla": "xla",
}
# Vertical-Slash only: Mosaic GPU steps of 64 / 128 keys, each with the
# default config for those steps ("mosaic_gpu" is the library's default).
VS_STEP_KEYS = {"mosaic_gpu_k64": 64, "mosaic_gpu_k128": 128}
OPS = {
    "vertical_slash": vertical_slash.vertical_slash_attention,
    "block_sparse": block_sparse.block_sparse_attention,
    "a_shape": a_shape.a_shape_attention,
}
# Pallas-Triton launch knobs a sweep lists per op, in this order.
TRITON_KNOBS = {
    "vertical_slash": ("num_warps", "num_stages", "block_c"),
    "block_sparse": ("num_warps", "num_stages"),
    "a_shape": ("block_q", "block_k", "num_warps", "num_stages"),
    "flash": ("block_q", "block_k", "num_warps", "num_stages"),
}
_TRITON_CONFIGS = {"vertical_slash": vertical_slash.Config,
                   "block_sparse": block_sparse.Config,
                   "a_shape": a_shape.Config, "flash": flash.Config}

KernelFn = Callable[..., object]  # fn(q, k, v, layout) -> o [B, T, N, D]


def kernel_fn(pattern: str, impl: str, *, head_dim: int, config=None,
              interpret: bool = False) -> KernelFn:
  """fn(q, k, v, layout) running `pattern`'s op as benchmark impl `impl`.

  Args:
    pattern: "vertical_slash", "block_sparse" or "a_shape".
    impl: a key of IMPLEMENTATIONS.
    head_dim: D (picks the default config of a step-keys impl).
    config: the implementation's kernel config (None: its default);
      ignored for the step-keys impls, which bring their own.
    interpret: the entry point's interpret mode (CPU dry runs).

  Raises:
    ValueError: an unknown pattern or impl, or a Vertical-Slash-only impl
      asked for another pattern.
  """
  if pattern not in OPS:
    raise ValueError(f"unknown pattern {pattern!r}; known: {list(OPS)}")
  if impl not in IMPLEMENTATIONS:
    raise ValueError(f"unknown kernel impl {impl!r}; known:"
                     f" {list(IMPLEMENTATIONS)}")
  if impl in VS_STEP_KEYS:
    if pattern != "vertical_slash":
      raise ValueError(f"{impl} is a Vertical-Slash kernel, not {pattern}")
    config = vs_mosaic_gpu.default_config(head_dim, VS_STEP_KEYS[impl])
  return functools.partial(OPS[pattern],
                           implementation=IMPLEMENTATIONS[impl],
                           config=config, interpret=interpret)


def flash_fn(config=None, interpret: bool = False) -> KernelFn:
  """fn(q, k, v) for the dense causal flash kernel (Pallas-Triton)."""
  return functools.partial(flash.flash_attention, config=config,
                           interpret=interpret)


def triton_config(op: str, values: Sequence[int]):
  """A Pallas-Triton config from a sweep's list (`TRITON_KNOBS[op]` order;
  trailing knobs may be left out).

  Raises:
    ValueError: more values than the op has knobs, or values the config
      rejects.
  """
  names = TRITON_KNOBS[op]
  if len(values) > len(names):
    raise ValueError(f"{op} configs list at most {len(names)} values"
                     f" {list(names)}, got {list(values)}")
  return _TRITON_CONFIGS[op](**dict(zip(names, values)))


def describe(config) -> str:
  """"default" for None, else `name=value,...` of the config's fields."""
  if config is None:
    return "default"
  fields = getattr(config, "__dataclass_fields__", {})
  return ",".join(f"{name}={getattr(config, name)}" for name in fields)
