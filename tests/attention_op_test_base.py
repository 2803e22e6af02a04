"""One battery for every implementation of every attention op.

A test class per (op, implementation) subclasses `AttentionOpTestBase`,
names the op (`OP`) and the implementation (`IMPLEMENTATION`, run through
the op's entry point with `implementation=`), and states what it supports;
`tests/conftest.py` gives each test one parameter per supported case. Every
case runs the op on fresh random inputs and a random layout with one
inactive head, and compares with the dense masked float32 reference
(`pallas_kernels.reference`): f32 by max abs error, 16-bit by relative L2
error; the seed is in every failure message. Cases cover T < 64, T a
multiple of 64 and not, GQA groups of 1, 2 and 4, batch 2, head dims 64 to
256, float32, bfloat16 and float16. (Anchor: tokamax's
`AttentionTestBase`.)
"""

import dataclasses
import functools
from typing import Any, ClassVar

import chex
import jax
import jax.numpy as jnp
import kernel_test_utils as ktu
import numpy as np
import random_layouts as rl

from pallas_kernels import reference as ref_lib
from pallas_kernels.a_shape import a_shape_attention
from pallas_kernels.block_sparse import block_sparse_attention
from pallas_kernels.flash import flash_attention
from pallas_kernels.vertical_slash import vertical_slash_attention

# One jitted reference per shape: compiled once, not dispatched op by op.
_MASKS = {
    "vertical_slash": jax.jit(ref_lib.vertical_slash_mask,
                              static_argnums=(1, 2)),
    "block_sparse": jax.jit(ref_lib.block_sparse_mask, static_argnums=(1, 2)),
    "a_shape": jax.jit(ref_lib.a_shape_mask, static_argnums=(1, 2)),
}
_reference = jax.jit(ref_lib.masked_attention_reference)


@dataclasses.dataclass(frozen=True)
class Case:
  """One battery case: shapes, dtype and the layout's budgets.

  `budget` is (NS, NV) for Vertical-Slash and (KB,) for Block-Sparse;
  `style` picks the random layout: "diagonal" (windows or blocks mostly at
  the diagonal, `kernel_test_utils`) or "anywhere" (anywhere in [0, T),
  `random_layouts`).
  """

  b: int
  t: int
  n: int
  kv: int
  d: int
  dtype: Any
  budget: tuple[int, ...] = ()
  style: str = "diagonal"

  @property
  def id(self) -> str:
    extra = "-".join(map(str, self.budget)) + (
        "-anywhere" if self.style == "anywhere" else "")
    return (f"b{self.b}-t{self.t}-n{self.n}-k{self.kv}-d{self.d}-"
            f"{jnp.dtype(self.dtype).name}" + (f"-{extra}" if extra else ""))


F32, BF16, F16 = jnp.float32, jnp.bfloat16, jnp.float16
CASES = {
    "vertical_slash": (
        Case(1, 200, 4, 2, 64, F32, (5, 70)),
        Case(2, 130, 4, 1, 96, F32, (3, 20)),
        Case(1, 50, 2, 2, 128, BF16, (2, 10), "anywhere"),
        Case(1, 320, 4, 4, 128, BF16, (6, 130)),
        Case(1, 128, 2, 1, 256, F32, (2, 8), "anywhere"),
    ),
    "block_sparse": (
        Case(1, 200, 4, 2, 64, F32, (3,)),
        Case(2, 130, 4, 1, 96, F32, (2,), "anywhere"),
        Case(1, 50, 2, 2, 128, BF16, (1,)),
        Case(1, 400, 4, 4, 128, BF16, (5,)),
        Case(1, 128, 2, 1, 256, F32, (2,), "anywhere"),
    ),
    "a_shape": (
        Case(1, 200, 4, 2, 64, F32),
        Case(2, 130, 4, 1, 96, F32),
        Case(1, 50, 2, 2, 128, BF16),
        Case(1, 300, 4, 4, 128, BF16),
        Case(1, 96, 2, 1, 256, F32),
    ),
    "flash": (
        Case(1, 200, 4, 2, 64, F32),
        Case(2, 130, 4, 1, 96, F32),
        Case(1, 50, 2, 2, 128, BF16),
        Case(1, 300, 4, 4, 128, F16),
        Case(1, 96, 2, 1, 256, F32),
    ),
}
# Cases the Mosaic GPU kernels take (bf16/fp16, D in {64, 128, 256}, T a
# multiple of 64), for implementations that take little else.
CASES_64 = {
    "vertical_slash": (Case(1, 256, 4, 2, 64, BF16, (4, 40)),
                       Case(2, 128, 4, 1, 128, F16, (2, 70), "anywhere")),
    "block_sparse": (Case(1, 256, 4, 2, 64, BF16, (3,)),
                     Case(2, 128, 4, 1, 128, F16, (2,), "anywhere")),
    "a_shape": (Case(1, 256, 4, 2, 64, BF16), Case(2, 128, 4, 1, 128, F16)),
    "flash": (Case(1, 256, 4, 2, 64, BF16), Case(2, 128, 4, 1, 128, F16)),
}
ENTRY_POINTS = {
    "vertical_slash": vertical_slash_attention,
    "block_sparse": block_sparse_attention,
    "a_shape": a_shape_attention,
    "flash": None,
}
# The head each op's random layout leaves inactive (zero output).
INACTIVE_HEAD = {"vertical_slash": -1, "block_sparse": 0, "a_shape": 1}


def random_layout(op: str, rng, case: Case):
  """A random valid layout of `op` for the case, one head inactive."""
  b, n, t = case.b, case.n, case.t
  inactive = (INACTIVE_HEAD[op] % n,)
  if op == "vertical_slash":
    ns, nv = case.budget
    if case.style == "anywhere":
      return rl.random_vs_layout(rng, b, n, t, ns, nv, inactive=inactive)
    return ktu.random_vs_layout(rng, b, n, t, ns, nv, inactive=inactive)
  if op == "block_sparse":
    (kb,) = case.budget
    if case.style == "anywhere":
      return rl.random_bs_layout(rng, b, n, t, kb, inactive=inactive)
    return ktu.random_bs_layout(rng, b, n, t, kb, inactive=inactive)
  return ktu.random_a_shape_layout(rng, n, t, inactive=inactive)


def reference(op: str, q, k, v, layout) -> np.ndarray:
  """The f32 dense masked reference on upcast inputs: [B, T, N, D]."""
  t, s = q.shape[1], k.shape[1]
  if op == "flash":
    mask = ref_lib.causal_mask(t, s)[None, None]
  else:
    mask = _MASKS[op](layout, t, s)
  f32 = lambda x: x.astype(jnp.float32)  # noqa: E731
  return np.asarray(_reference(f32(q), f32(k), f32(v), mask))


class AttentionOpTestBase:
  """The battery; subclasses set OP, IMPLEMENTATION and what they support.

  Attributes:
    OP: "vertical_slash", "block_sparse", "a_shape" or "flash".
    IMPLEMENTATION: the name given to the entry point's `implementation=`.
    INTERPRET: run Pallas kernels in interpret mode.
    DTYPES: the dtypes it takes; HEAD_DIMS: the head dims (None: any);
    T_MULTIPLE: T must be a multiple of this; ONLY: case ids to keep (None:
      all); EXTRA_CASES: cases beside the op's CASES (e.g. CASES_64).
    F32_ATOL: max abs error allowed for float32 inputs (values are O(1)).
  """

  OP: ClassVar[str]
  IMPLEMENTATION: ClassVar[str]
  INTERPRET: ClassVar[bool] = False
  DTYPES: ClassVar[tuple] = (F32, BF16, F16)
  HEAD_DIMS: ClassVar[tuple[int, ...] | None] = None
  T_MULTIPLE: ClassVar[int] = 1
  ONLY: ClassVar[tuple[str, ...] | None] = None
  EXTRA_CASES: ClassVar[tuple[Case, ...]] = ()
  F32_ATOL: ClassVar[float] = 2e-5

  @classmethod
  def supports(cls, case: Case) -> bool:
    return (jnp.dtype(case.dtype) in map(jnp.dtype, cls.DTYPES)
            and (cls.HEAD_DIMS is None or case.d in cls.HEAD_DIMS)
            and case.t % cls.T_MULTIPLE == 0
            and (cls.ONLY is None or case.id in cls.ONLY))

  @classmethod
  def cases(cls) -> list[Case]:
    return [c for c in CASES[cls.OP] + cls.EXTRA_CASES if cls.supports(c)]

  def config(self, case: Case):
    """The implementation's config for a case (None: its default)."""
    del case
    return None

  def attend(self, q, k, v, layout, *, config=None):
    """The op through its entry point with this class's implementation."""
    kwargs = dict(implementation=self.IMPLEMENTATION, config=config,
                  interpret=self.INTERPRET)
    if self.OP == "flash":
      return flash_attention(q, k, v, **kwargs)
    return ENTRY_POINTS[self.OP](q, k, v, layout, **kwargs)

  def inputs(self, case: Case):
    """(q, k, v, layout, seed) for a case, from a fresh seed."""
    rng, seed = ktu.fresh_rng()
    q, k, v = ktu.random_qkv(rng, case.b, case.t, case.n, case.kv, case.d,
                             case.dtype)
    layout = None if self.OP == "flash" else random_layout(self.OP, rng, case)
    return q, k, v, layout, seed

  def check(self, out, want, case: Case, seed: int, what: str = ""):
    """Finite, shape and dtype kept, close to the reference."""
    what = f"{self.IMPLEMENTATION} {case.id} {what}"
    assert out.shape == want.shape and out.dtype == case.dtype, (
        out.shape, out.dtype, what)
    got = np.asarray(jnp.asarray(out).astype(jnp.float32))
    assert np.isfinite(got).all(), f"non-finite output ({what}, seed={seed})"
    if jnp.dtype(case.dtype) == jnp.float32:
      err = np.abs(got - want).max()
      assert err <= self.F32_ATOL, (
          f"max abs err {err:.2e} ({what}, seed={seed})")
    else:
      rel = np.linalg.norm(got - want) / max(np.linalg.norm(want), 1e-30)
      assert rel <= 1e-2, f"rel err {rel:.2e} ({what}, seed={seed})"

  def test_matches_reference(self, case):
    q, k, v, layout, seed = self.inputs(case)
    out = self.attend(q, k, v, layout, config=self.config(case))
    self.check(out, reference(self.OP, q, k, v, layout), case, seed)
    if self.OP in INACTIVE_HEAD:
      head = INACTIVE_HEAD[self.OP] % case.n
      assert not np.asarray(out[:, :, head].astype(jnp.float32)).any(), (
          f"inactive head {head} must be zero (seed={seed})")


class JitMatchesEager:
  """Mixin for an AttentionOpTestBase subclass: the op under an outer jit
  (layouts traced) gives the eager output (chex: with and without jit)."""

  def test_jit_matches_eager(self):
    """Under an outer jit (layouts traced) the output is the eager one."""
    case = self.cases()[0]
    q, k, v, layout, seed = self.inputs(case)
    config = self.jit_config(case, layout)
    run = functools.partial(self.attend, config=config)
    eager = run(q, k, v, layout)
    # The same computation; XLA may fuse it differently under the outer jit.
    chex.assert_trees_all_close(jax.jit(run)(q, k, v, layout), eager,
                                atol=2e-6, rtol=0)
    self.check(eager, reference(self.OP, q, k, v, layout), case, seed, "jit")

  def jit_config(self, case: Case, layout) -> Any:
    """The config for `test_jit_matches_eager` (static bounds for XLA
    A-shape, whose layout is traced there)."""
    del layout
    return self.config(case)

