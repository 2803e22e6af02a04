"""scripts/pattern_variant.py: heads of chosen kinds made dense or
Vertical-Slash, the rest kept, and the result loads as a pattern config."""

import importlib.util

import pytest
from paths import REPO_DIR

from minference_jax import PatternConfig
from minference_jax.patterns import Dense, PatternKind, VerticalSlash

_SCRIPT = REPO_DIR / "scripts" / "pattern_variant.py"
_spec = importlib.util.spec_from_file_location("pattern_variant", _SCRIPT)
variant = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(variant)

SEARCHED = REPO_DIR / "configs" / "patterns" / "smollm2-135m-instruct.json"


def test_dense_variant_of_the_searched_config(tmp_path):
  out = tmp_path / "v.json"
  variant.main([str(SEARCHED), str(out), "block_sparse"])
  before = PatternConfig.load_json(SEARCHED)
  after = PatternConfig.load_json(out)
  assert after.num_layers == before.num_layers
  changed = 0
  for old_layer, new_layer in zip(before.layers, after.layers):
    for old, new in zip(old_layer, new_layer):
      if old.kind is PatternKind.BLOCK_SPARSE:
        assert new.kind is PatternKind.DENSE
        changed += 1
      else:
        assert new == old
  assert changed > 0  # the committed config has Block-Sparse heads
  _, count = variant.replace_kinds(before, {PatternKind.BLOCK_SPARSE},
                                   Dense())
  assert count == changed


def test_vertical_slash_variant_of_the_searched_config(tmp_path):
  out = tmp_path / "v.json"
  variant.main([str(SEARCHED), str(out), "block_sparse", "a_shape",
                "--vertical-slash", "62", "381"])
  before = PatternConfig.load_json(SEARCHED)
  after = PatternConfig.load_json(out)
  kinds = {PatternKind.BLOCK_SPARSE, PatternKind.A_SHAPE}
  pairs = [(o, n) for ol, nl in zip(before.layers, after.layers)
           for o, n in zip(ol, nl)]
  assert all(n == VerticalSlash(62, 381) for o, n in pairs if o.kind in kinds)
  assert all(n == o for o, n in pairs if o.kind not in kinds)
  assert any(o.kind in kinds for o, _ in pairs)


def test_unknown_kind_is_refused(tmp_path):
  with pytest.raises(SystemExit, match="unknown kinds"):
    variant.main([str(SEARCHED), str(tmp_path / "v.json"), "blocky"])
