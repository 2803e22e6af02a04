"""Tests for PatternConfig: our JSON, MInference's JSON, validation."""

import collections
import copy
import dataclasses
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from minference_jax.pattern_config import (
    FORMAT_NAME,
    FORMAT_VERSION,
    PatternConfig,
)
from minference_jax.patterns import (
    MINFERENCE_DEFAULT_VS,
    AShape,
    BlockSparse,
    Dense,
    PatternKind,
    VerticalSlash,
)
from paths import SHARED_DIR

_SHARED = SHARED_DIR
_CONFIG_DIR = _SHARED / "data" / "minference_configs"
_CONFIG_FILES = (
    sorted(_CONFIG_DIR.glob("*.json")) if _CONFIG_DIR.is_dir() else []
)


def _random_pattern(rng: np.random.Generator):
  kind = rng.integers(4)
  if kind == 0:
    return Dense()
  if kind == 1:
    return AShape(int(rng.integers(0, 300)), int(rng.integers(1, 5000)))
  if kind == 2:
    return VerticalSlash(
        int(rng.integers(0, 4000)),
        int(rng.integers(0, 9000)),
        int(rng.choice([16, 64])),
    )
  return BlockSparse(top_k=int(rng.integers(1, 200)))


def _random_minference(rng: np.random.Generator, layers: int, heads: int):
  """A random MInference-format list; some heads absent, mixed score types."""
  data = []
  for _ in range(layers):
    layer = {}
    for h in range(heads):
      if rng.random() < 0.2:
        continue  # absent head
      name = rng.choice(["vertical_and_slash", "stream_llm", "block_sparse"])
      v, s = int(rng.integers(0, 5000)), int(rng.integers(1, 9000))
      score = rng.choice(
          [float(rng.random()), int(rng.integers(0, 30000)), None]
      )
      layer[str(h)] = [str(name), v, s, score]
    data.append(layer)
  return data


# --------------------------------------------------------- the shared files
@pytest.mark.skipif(
    not _CONFIG_FILES,
    reason="shared/data/minference_configs beside the checkout is absent",
)
@pytest.mark.parametrize("path", _CONFIG_FILES, ids=lambda p: p.stem[:30])
def test_published_files_round_trip_exactly(path):
  text = path.read_text()
  data = json.loads(text)
  config = PatternConfig.from_minference_json(data)
  assert config.num_layers == len(data)
  exported = config.to_minference_json()
  # Same values, same Python types (int vs float scores) and same key order.
  assert json.dumps(exported) == json.dumps(data)
  assert exported == data
  # Through our JSON and back.
  ours = json.loads(json.dumps(config.to_json_dict()))
  again = PatternConfig.from_json_dict(ours)
  assert again == config and hash(again) == hash(config)
  assert json.dumps(again.to_minference_json()) == json.dumps(data)
  # Pattern mapping spot checks against the raw entries.
  for l, layer in enumerate(data):
    for key, (name, v, s, score) in layer.items():
      p = config.pattern_for(l, int(key))
      if name == "vertical_and_slash":
        assert p == VerticalSlash(v, s)
      elif name == "stream_llm":
        assert p == AShape(n_init=v, n_local=s)
      else:
        assert p == BlockSparse(top_k=100)
      assert config.score_for(l, int(key)) == score


@pytest.mark.skipif(
    not _CONFIG_FILES,
    reason="shared/data/minference_configs beside the checkout is absent",
)
def test_published_summary_counts_match_raw_entries():
  path = next(p for p in _CONFIG_FILES if "Phi_3" in p.name)
  data = json.loads(path.read_text())
  config = PatternConfig.from_minference_json(data)
  raw = collections.Counter(e[0] for layer in data for e in layer.values())
  kinds = config.count_by_kind()
  assert kinds.get(PatternKind.A_SHAPE, 0) == raw["stream_llm"]
  assert kinds[PatternKind.VERTICAL_SLASH] == raw["vertical_and_slash"]
  budgets = collections.Counter(
      (e[0], e[1], e[2]) for layer in data for e in layer.values()
  )
  for pattern, n in config.count_by_pattern().items():
    if isinstance(pattern, VerticalSlash):
      key = ("vertical_and_slash", pattern.n_vertical, pattern.n_slash)
    else:
      key = ("stream_llm", pattern.n_init, pattern.n_local)
    assert budgets[key] == n
  assert "a_shape" in config.summary()


# ------------------------------------------------------- random round trips
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_random_minference_round_trip_with_missing_heads(seed):
  rng = np.random.default_rng(seed)
  heads = 6
  data = _random_minference(rng, layers=4, heads=heads)
  data[0]["5"] = ["vertical_and_slash", 7, 9, 0.5]  # pins num_heads = 6
  data[1].pop("2", None)  # at least one absent head
  config = PatternConfig.from_minference_json(data)
  assert config.num_heads == heads
  absent = [
      (l, h) for l, layer in enumerate(data) for h in range(heads)
      if str(h) not in layer
  ]
  assert list(config.defaulted) == absent
  for l, h in absent:
    assert config.pattern_for(l, h) == VerticalSlash(*MINFERENCE_DEFAULT_VS)
    assert config.score_for(l, h) is None
  # Block-sparse sizes are kept for the export only.
  for l, layer in enumerate(data):
    for key, entry in layer.items():
      if entry[0] == "block_sparse":
        assert config.pattern_for(l, int(key)) == BlockSparse(top_k=100)
  assert json.dumps(config.to_minference_json()) == json.dumps(data)
  full = config.to_minference_json(include_defaulted=True)
  for l, h in absent:
    assert full[l][str(h)] == ["vertical_and_slash", 1000, 6096, None]
  ours = json.loads(json.dumps(config.to_json_dict()))
  ours = PatternConfig.from_json_dict(ours)
  assert ours == config
  first = f"layer {absent[0][0]}, head {absent[0][1]}: head missing"
  with pytest.raises(ValueError, match=first):
    PatternConfig.from_minference_json(data, missing="error")


@pytest.mark.parametrize("seed", [3, 4])
def test_random_config_our_json_round_trip(seed, tmp_path):
  rng = np.random.default_rng(seed)
  layers = tuple(
      tuple(_random_pattern(rng) for _ in range(5)) for _ in range(3)
  )
  scores = tuple(
      tuple(float(rng.random()) for _ in range(5)) for _ in range(3)
  )
  config = PatternConfig(layers=layers, scores=scores, model="tiny")
  path = tmp_path / "cfg.json"
  config.save_json(path)
  loaded = PatternConfig.load_json(path)
  assert loaded == config
  assert hash(loaded) == hash(config)
  raw = json.loads(path.read_text())
  assert raw["format"] == FORMAT_NAME and raw["version"] == FORMAT_VERSION
  assert raw["num_layers"] == 3 and raw["num_heads"] == 5
  assert raw["layers"][1][2]["kind"] == layers[1][2].kind.value
  no_scores = PatternConfig(layers=layers)
  assert "score" not in json.dumps(no_scores.to_json_dict())
  assert PatternConfig.from_json_dict(no_scores.to_json_dict()) == no_scores


def test_minference_file_io_and_explicit_num_heads(tmp_path):
  data = [{"0": ["stream_llm", 4, 16, 1]}, {"1": ["block_sparse", 8, 1, 0.25]}]
  path = tmp_path / "m.json"
  path.write_text(json.dumps(data))
  config = PatternConfig.load_minference_json(path, num_heads=3)
  assert config.num_heads == 3
  assert config.defaulted == ((0, 1), (0, 2), (1, 0), (1, 2))
  assert config.minference_sizes == ((1, 1, 8, 1),)
  out = tmp_path / "o.json"
  config.save_minference_json(out)
  assert json.loads(out.read_text()) == data
  with pytest.raises(ValueError, match="layer 1, head 1: head index out of"):
    PatternConfig.from_minference_json(data, num_heads=1)


# --------------------------------------------------------------- malformed
_GOOD = [{"0": ["vertical_and_slash", 10, 20, 0.5],
          "1": ["stream_llm", 4, 16, 3]}]


def _mutate(fn):
  data = copy.deepcopy(_GOOD)
  fn(data)
  return data


@pytest.mark.parametrize(
    "data, message",
    [
        ({"0": {}}, "JSON list"),
        ([], "JSON list"),
        ([["vertical_and_slash", 1, 2, 3]], "layer 0: expected an object"),
        (_mutate(lambda d: d[0]["1"].__setitem__(0, "dilated")),
         "layer 0, head 1: unknown pattern 'dilated'"),
        (_mutate(lambda d: d[0]["0"].pop()),
         r"layer 0, head 0: expected \[pattern, v, s, score\]"),
        (_mutate(lambda d: d[0].__setitem__("1", "stream_llm")),
         r"layer 0, head 1: expected \[pattern"),
        (_mutate(lambda d: d[0]["0"].__setitem__(1, 10.5)),
         "layer 0, head 0: size v=10.5 is not an integer"),
        (_mutate(lambda d: d[0]["0"].__setitem__(2, "20")),
         "layer 0, head 0: size s='20' is not an integer"),
        (_mutate(lambda d: d[0]["1"].__setitem__(1, True)),
         "layer 0, head 1: size v=True is not an integer"),
        (_mutate(lambda d: d[0]["1"].__setitem__(2, -5)),
         "layer 0, head 1: size s=-5 is negative"),
        (_mutate(lambda d: d[0]["1"].__setitem__(2, 0)),
         "layer 0, head 1: n_local must be >= 1"),
        (_mutate(lambda d: d[0]["0"].__setitem__(3, "high")),
         "layer 0, head 0: score 'high' is not a number"),
        (_mutate(lambda d: d[0].__setitem__("01", d[0].pop("1"))),
         "layer 0, head '01': head keys must be decimal"),
        (_mutate(lambda d: d[0].__setitem__("-1", d[0].pop("1"))),
         "layer 0, head '-1'"),
        (_mutate(lambda d: d.append({"x": ["stream_llm", 1, 2, 3]})),
         "layer 1, head 'x'"),
    ],
)
def test_malformed_minference_raises_naming_layer_and_head(data, message):
  with pytest.raises(ValueError, match=message):
    PatternConfig.from_minference_json(data)


def test_minference_bad_arguments():
  with pytest.raises(ValueError, match="missing must be"):
    PatternConfig.from_minference_json(_GOOD, missing="skip")
  with pytest.raises(ValueError, match="num_heads must be"):
    PatternConfig.from_minference_json(_GOOD, num_heads=0)
  with pytest.raises(ValueError, match="no heads in any layer"):
    PatternConfig.from_minference_json([{}])


@pytest.mark.parametrize(
    "pattern",
    [Dense(), VerticalSlash(10, 20, last_q=32), BlockSparse(top_k=7)],
)
def test_export_of_patterns_minference_cannot_express(pattern):
  config = PatternConfig.uniform(pattern, 2, 3)
  with pytest.raises(ValueError, match="layer 0, head 0: .* no MInference"):
    config.to_minference_json()


def _ours(**overrides):
  good = PatternConfig(
      layers=((VerticalSlash(10, 20), AShape(4, 16)),) * 2
  ).to_json_dict()
  good.update(overrides)
  return good


def _ours_head(layer, head, entry):
  data = _ours()
  data["layers"][layer][head] = entry
  return data


@pytest.mark.parametrize(
    "data, message",
    [
        ([], "expected a JSON object"),
        (_ours(format="other"), "format must be"),
        (_ours(version=2), "unsupported version 2"),
        (_ours(extra=1), "unknown top-level fields"),
        (_ours(num_layers=3), "num_layers=3 but the file has 2 layers"),
        (_ours(num_heads=3), "layer 0: expected 3 heads, got 2"),
        (_ours(model=5), "model must be a string"),
        (_ours_head(1, 0, {"kind": "diagonal"}),
         "layer 1, head 0: unknown kind 'diagonal'"),
        (_ours_head(1, 1, {"kind": "a_shape", "n_init": 4}),
         "layer 1, head 1: a_shape needs the field 'n_local'"),
        (_ours_head(0, 1, {"kind": "a_shape", "n_init": 4, "n_local": 1.5}),
         "layer 0, head 1: n_local must be an int"),
        (_ours_head(0, 0, {"kind": "vertical_slash", "n_vertical": 1,
                           "n_slash": -2}),
         "layer 0, head 0: n_slash must be >= 0"),
        (_ours_head(0, 0, {"kind": "dense", "vertical": 3}),
         r"layer 0, head 0: unknown fields \['vertical'\]"),
        (_ours_head(1, 0, {"kind": "dense", "score": "x"}),
         "layer 1, head 0: score must be"),
        (_ours_head(1, 0, {"kind": "dense", "minference_sizes": [1, 2]}),
         "layer 1, head 0: minference_sizes must be"),
        (_ours_head(0, 1, "dense"), "layer 0, head 1: expected an object"),
    ],
)
def test_malformed_our_json_raises(data, message):
  with pytest.raises(ValueError, match=message):
    PatternConfig.from_json_dict(data)


# ------------------------------------------------------------ the dataclass
def test_uniform_access_and_validation():
  config = PatternConfig.uniform(AShape(8, 32), num_layers=3, num_heads=4)
  assert (config.num_layers, config.num_heads) == (3, 4)
  assert config.pattern_for(2, 3) == AShape(8, 32)
  assert config.layer_kinds(1) == (PatternKind.A_SHAPE,)
  assert config.count_by_kind() == {PatternKind.A_SHAPE: 12}
  with pytest.raises(ValueError, match="layer=3 out of range"):
    config.pattern_for(3, 0)
  with pytest.raises(ValueError, match="head=-1 out of range"):
    config.pattern_for(0, -1)
  with pytest.raises(ValueError, match="num_heads must be a positive int"):
    PatternConfig.uniform(Dense(), 2, 0)
  with pytest.raises(ValueError, match="layer 1 has 1 heads, layer 0 has 2"):
    PatternConfig(layers=((Dense(), Dense()), (Dense(),)))
  with pytest.raises(TypeError, match="layer 0, head 1: expected a Pattern"):
    PatternConfig(layers=((Dense(), ("vertical_and_slash", 1, 2)),))
  with pytest.raises(ValueError, match="scores"):
    PatternConfig(layers=((Dense(),),), scores=((0.1, 0.2),))
  with pytest.raises(ValueError, match="only apply to BlockSparse"):
    PatternConfig(layers=((Dense(),),), minference_sizes=((0, 0, 1, 2),))
  with pytest.raises(dataclasses.FrozenInstanceError):
    config.model = "x"  # type: ignore[misc]


def test_mixed_layer_kinds_and_hash_as_jit_static():
  layer = (Dense(), BlockSparse(), VerticalSlash(30, 50), AShape(1, 2))
  config = PatternConfig(layers=(layer, layer[:1] * 4))
  assert config.layer_kinds(0) == (
      PatternKind.DENSE,
      PatternKind.A_SHAPE,
      PatternKind.VERTICAL_SLASH,
      PatternKind.BLOCK_SPARSE,
  )
  assert config.layer_kinds(1) == (PatternKind.DENSE,)
  same = PatternConfig(layers=(layer, (Dense(),) * 4))
  assert same == config and hash(same) == hash(config)
  assert {config: 1}[same] == 1

  def dense_heads(x, cfg, layer_idx):
    n = sum(p.kind is PatternKind.DENSE for p in cfg.layers[layer_idx])
    return x * n

  f = jax.jit(dense_heads, static_argnums=(1, 2))
  assert float(f(jnp.float32(2.0), config, 0)) == 2.0
  assert float(f(jnp.float32(2.0), same, 1)) == 8.0
