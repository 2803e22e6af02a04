"""One entry point per op over its implementations, tried in order.

An op package (`a_shape`, `vertical_slash`, `block_sparse`, `flash`) holds
one module per implementation and an `Op`: its implementations by name and
its default order for the device. The entry point tries the requested
implementations in order and falls through on an explicit "not supported
here" error: the implementation's `unsupported` test names a reason (a
device it does not run on, a dtype, head dim, sequence length or layout it
does not take), or its run raises `NotImplementedError`. With a single
implementation requested, it runs without that test and whatever it raises
propagates (tokamax's `dot_product_attention` behaves the same way).
"""

import dataclasses
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

# Implementation names.
PALLAS_MOSAIC_GPU = "pallas_mosaic_gpu"  # Hopper: wgmma + TMA, Mosaic GPU
PALLAS_TRITON = "pallas_triton"  # any CUDA GPU from A100; interpret on CPU
XLA = "xla"  # plain JAX, any device
CUDNN = "cudnn"  # dense only: jax.nn.dot_product_attention on cuDNN

Implementations = str | Sequence[str] | None


class NotSupportedError(NotImplementedError):
  """No requested implementation of an op runs these inputs on this device."""


def _always_supported(*args, **kwargs) -> None:
  del args, kwargs
  return None


@dataclasses.dataclass(frozen=True)
class Implementation:
  """One way to compute an op.

  Attributes:
    run: `run(*args, config=None, interpret=False, **kwargs)` -> output.
    unsupported: `unsupported(*args, interpret=False, **kwargs)` -> a
      reason (str) when `run` cannot serve these inputs here, else None.
  """

  run: Callable[..., jax.Array]
  unsupported: Callable[..., str | None] = _always_supported


def sparse_default_order(*, interpret: bool) -> tuple[str, ...]:
  """The sparse ops' order when no implementation is named.

  Interpret mode (CPU tests): Pallas-Triton, then XLA (Mosaic GPU runs in
  interpret mode only when named). On a GPU: Mosaic GPU where it takes the
  inputs (a Hopper GPU), then Pallas-Triton, then XLA. Elsewhere: XLA.
  """
  if interpret:
    return (PALLAS_TRITON, XLA)
  if jax.default_backend() == "gpu":
    return (PALLAS_MOSAIC_GPU, PALLAS_TRITON, XLA)
  return (XLA,)


@dataclasses.dataclass(frozen=True, eq=False)
class Op:
  """An op's implementations and its default order.

  Attributes:
    name: the entry point's name, for error messages.
    implementations: name -> Implementation (a dict tests may patch).
    default_order: `default_order(interpret=...)` -> names, for the device.
  """

  name: str
  implementations: dict[str, Implementation]
  default_order: Callable[..., tuple[str, ...]]

  def order(self, implementation: Implementations,
            interpret: bool) -> tuple[str, ...]:
    """The names to try: `implementation` (a name or a sequence of names)
    or, if None, the default order.

    Raises:
      ValueError: on an unknown name or an empty sequence.
    """
    if implementation is None:
      names = self.default_order(interpret=interpret)
    elif isinstance(implementation, str):
      names = (implementation,)
    else:
      names = tuple(implementation)
    if not names or any(n not in self.implementations for n in names):
      raise ValueError(
          f"{self.name}: implementation must be one of"
          f" {tuple(self.implementations)}, a sequence of them or None;"
          f" got {implementation!r}"
      )
    return names

  def chosen(self, *args, implementation: Implementations = None,
             interpret: bool = False, **kwargs) -> str:
    """The implementation a call with these arguments runs (by the
    `unsupported` tests; a lone name is not tested).

    Raises:
      ValueError: on unknown names.
      NotSupportedError: when none of several implementations applies.
    """
    names = self.order(implementation, interpret)
    if len(names) == 1:
      return names[0]
    reasons = []
    for name in names:
      reason = self.implementations[name].unsupported(
          *args, interpret=interpret, **kwargs)
      if reason is None:
        return name
      reasons.append(f"{name}: {reason}")
    raise NotSupportedError(
        f"{self.name}: no implementation runs here ({'; '.join(reasons)})")

  def __call__(self, *args, implementation: Implementations = None,
               config: Any = None, interpret: bool = False,
               **kwargs) -> jax.Array:
    """Runs the first requested implementation that supports the inputs.

    Args:
      *args: positional arguments of every implementation (q, k, v, ...).
      implementation: a name, a sequence of names tried in order, or None
        for the default order.
      config: the launch config of a single named implementation (its own
        Config type); None: each implementation's default.
      interpret: run Pallas kernels in interpret mode.
      **kwargs: keyword arguments of every implementation.

    Returns:
      The output of the implementation that ran.

    Raises:
      ValueError: on unknown names, or a config with several names.
      NotSupportedError: when none of several implementations supports the
        inputs here (each one's reason is in the message).
    """
    names = self.order(implementation, interpret)
    if len(names) == 1:
      return self.implementations[names[0]].run(
          *args, config=config, interpret=interpret, **kwargs)
    if config is not None:
      raise ValueError(
          f"{self.name}: a config belongs to one implementation; name it"
          f" with implementation= (got {names} and config={config!r})"
      )
    reasons = []
    for name in names:
      impl = self.implementations[name]
      reason = impl.unsupported(*args, interpret=interpret, **kwargs)
      if reason is None:
        try:
          return impl.run(*args, config=None, interpret=interpret, **kwargs)
        except NotImplementedError as e:
          reason = str(e) or type(e).__name__
      reasons.append(f"{name}: {reason}")
    raise NotSupportedError(
        f"{self.name}: no implementation runs here ({'; '.join(reasons)})")


def no_config(op: str, name: str, config: Any) -> None:
  """Raises TypeError for a config given to an implementation with none."""
  if config is not None:
    raise TypeError(f"{op}: the {name} implementation takes no config, got"
                    f" {config!r}")


def entry_arrays(op: str, q, k, v) -> tuple[jax.Array, jax.Array, jax.Array]:
  """q, k, v as JAX arrays (NumPy arrays are converted), checked for the
  shapes and dtypes every implementation shares.

  Raises:
    TypeError: a non-array, a non-float dtype or dtypes that differ.
    ValueError: wrong ranks, k and v of different shapes, batch or head
      dim mismatch, N % K != 0.
  """
  arrays = []
  for name, x in (("q", q), ("k", k), ("v", v)):
    if isinstance(x, np.ndarray):
      x = jnp.asarray(x)
    if not isinstance(x, jax.Array):
      raise TypeError(f"{op}: {name} must be a JAX or NumPy array, got"
                      f" {type(x).__name__}")
    arrays.append(x)
  q, k, v = arrays
  if q.ndim != 4 or k.ndim != 4 or v.ndim != 4:
    raise ValueError(
        f"{op}: q must be [B, T, N, D] and k, v [B, S, K, D]; got"
        f" q{tuple(q.shape)}, k{tuple(k.shape)}, v{tuple(v.shape)}")
  if k.shape != v.shape:
    raise ValueError(f"{op}: k{tuple(k.shape)} and v{tuple(v.shape)} must"
                     " have the same shape")
  b, _, n, d = q.shape
  if k.shape[0] != b or k.shape[3] != d:
    raise ValueError(f"{op}: q{tuple(q.shape)} and k{tuple(k.shape)}"
                     " disagree on batch B or head dim D")
  if k.shape[2] == 0 or n % k.shape[2]:
    raise ValueError(f"{op}: query heads N={n} (q{tuple(q.shape)}) must be"
                     f" a multiple of the KV heads K={k.shape[2]}"
                     f" (k{tuple(k.shape)})")
  if not jnp.issubdtype(q.dtype, jnp.floating):
    raise TypeError(f"{op}: q must be floating point, got {q.dtype}")
  if not q.dtype == k.dtype == v.dtype:
    raise TypeError(f"{op}: q, k, v must share a dtype, got {q.dtype},"
                    f" {k.dtype}, {v.dtype}")
  return q, k, v


def check_layout_type(op: str, layout: Any, types: tuple[type, ...]) -> None:
  """Raises TypeError unless `layout` is one of `types`."""
  if not isinstance(layout, types):
    names = " or ".join(t.__name__ for t in types)
    raise TypeError(f"{op}: layout must be a {names}, got"
                    f" {type(layout).__name__}")
