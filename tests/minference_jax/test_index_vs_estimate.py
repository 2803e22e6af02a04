"""The Vertical-Slash estimate against a sequential NumPy reference."""

import jax.numpy as jnp
import numpy as np
import kernel_test_utils as ktu
import numpy_reference as ref
from hypothesis import given, settings
from hypothesis import strategies as st
from index_test_utils import HEADS, assert_same_top, structured_qk

from minference_jax.index import vertical_slash_indices

SETTINGS = settings(max_examples=5, deadline=None)


@SETTINGS
@given(
    b=st.sampled_from([1, 2]),
    heads=st.sampled_from(HEADS),
    t=st.sampled_from([17, 64, 100, 200]),
    last_q=st.sampled_from([64, 16, 100]),
    per_head=st.booleans(),
    seed=st.integers(0, 2**31 - 1),
)
def test_vs_indices_match_reference(b, heads, t, last_q, per_head, seed):
  n, kv = heads
  rng = np.random.default_rng(seed)
  q, k = structured_qk(rng, b, t, n, kv)
  if per_head:  # different budgets per head, some above T, some inactive
    n_vertical = tuple(int(x) for x in rng.integers(0, 250, n))
    n_slash = tuple(int(x) for x in rng.integers(0, 250, n))
    active = tuple(bool(x) for x in rng.random(n) < 0.75)
  else:
    n_vertical, n_slash = int(rng.integers(0, 250)), int(rng.integers(0, 250))
    active = None
  got = vertical_slash_indices(
      jnp.asarray(q), jnp.asarray(k), n_vertical, n_slash, last_q,
      active=active,
  )
  want = ref.vs_indices_reference(q, k, n_vertical, n_slash, last_q, active)
  vertical, slash = np.asarray(got.vertical), np.asarray(got.slash)
  v_count, s_count = np.asarray(got.vertical_count), np.asarray(got.slash_count)
  assert vertical.dtype == slash.dtype == np.int32
  assert vertical.shape[-1] == max(
      [len(w["vertical"]) for w in want.values()] + [1]
  )
  assert slash.shape[-1] == max([len(w["slash"]) for w in want.values()] + [1])
  for (bi, h), w in want.items():
    nv, ns = v_count[bi, h], s_count[bi, h]
    assert nv == len(w["vertical"]) and ns == len(w["slash"])
    v, s = vertical[bi, h], slash[bi, h]
    assert np.all(np.diff(v[:nv]) > 0) and np.all(np.diff(s[:ns]) < 0)
    assert np.all(v[nv:] == t - 1) and np.all(s[ns:] == 0)
    if nv:
      assert_same_top(v[:nv], w["vertical"], w["vertical_score"], "vertical")
      assert_same_top(s[:ns], w["slash"], w["slash_score"], "slash")
      assert s[ns - 1] == 0  # offset 0 is always kept


def test_vs_forced_lines_kept_against_the_scores():
  # Attention sits on a band of far keys, so the sink columns 0..29 and the
  # local offsets 0..99 score low: only the forcing can keep them.
  t, d = 400, 16
  rng, seed = ktu.fresh_rng()
  with ktu.reports_seed(seed):
    q, k = structured_qk(rng, 1, t, 2, 1, d)
    u = np.zeros(d, np.float32)
    u[0] = 1.0
    q[:, :, :, :] += 8.0 * u
    k[:, 150:170, :, :] += 8.0 * u
    got = vertical_slash_indices(
        jnp.asarray(q), jnp.asarray(k), (40, 30), (130, 60)
    )
    want = ref.vs_indices_reference(q, k, (40, 30), (130, 60))
    for h, (nv, ns) in enumerate([(40, 130), (30, 60)]):
      v = np.asarray(got.vertical[0, h, :nv])
      s = np.asarray(got.slash[0, h, :ns])
      assert set(range(30)) <= set(v.tolist())
      assert set(range(min(ns, 100))) <= set(s.tolist())
      w = want[0, h]
      assert_same_top(v, w["vertical"], w["vertical_score"], "vertical")
      assert_same_top(s, w["slash"], w["slash_score"], "slash")
    # Without forcing, part of 0..29 and 0..99 would lose to the far band.
    vs, ss = ref.vs_scores(q[0, :, 0], k[0, :, 0], 64, force=False)
    assert not set(range(30)) <= set(np.argsort(-vs)[:40].tolist())
    assert not set(range(100)) <= set(np.argsort(-ss)[:130].tolist())
