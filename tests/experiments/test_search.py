"""`minference-jax search`: option errors, the resumable record, MInference
format round trips, calibration prompts and the committed-config lookup."""

import json

import jax.numpy as jnp
import numpy as np
import pytest

from experiments import search
from experiments.search_data import make_samples
from experiments.search_pipeline import apply_rope_scaling, minference_export
from experiments.search_report import (
    search_summary,
    validation_summary,
    write_report,
)
from experiments.search_run import (
    RecordMismatch,
    SearchRecord,
    assemble_config,
    baseline_config,
    run_search,
    run_validation,
)
from experiments.searched_configs import (
    check_geometry,
    default_pattern_config,
    model_key,
)
from minference_jax.pattern_config import PatternConfig
from minference_jax.patterns import AShape, BlockSparse, VerticalSlash
from minference_jax.search import CostTarget, SearchSettings, SearchSpace
from models import ModelConfig, random_params


# ------------------------------------------------------------- options
def _fails(capsys, argv, *needles):
  with pytest.raises(SystemExit) as e:
    search.main(argv)
  assert e.value.code == 2
  err = capsys.readouterr().err
  assert err.startswith("error: ") and err.count("\n") == 1, err
  for needle in needles:
    assert needle in err, err


def test_user_mistakes_get_one_line_errors(tmp_path, capsys):
  out = str(tmp_path / "x.json")
  _fails(capsys, ["--model", str(tmp_path / "none.gguf"), "--out", out],
         "model path", "none.gguf", "does not exist")
  _fails(capsys, [], "no output file")
  _fails(capsys, ["--out", out, "space.streaming=[[1, 2]]"],
         "unknown config keys", "space.streaming")
  _fails(capsys, ["--out", out, "target.density=0.0001"],
         "below every candidate's minimum cost")
  _fails(capsys, ["--out", out, "scoring.objective=mse"],
         "scoring.objective", "'output', 'recall'")
  bad = tmp_path / "bad.yaml"
  bad.write_text("space:\n  vertical_slash: [[30, 2048, 7]]\n")
  _fails(capsys, ["--config", str(bad), "--out", out],
         "space.vertical_slash[0]", "2 items")
  bad.write_text("space:\n  a_shape: [[100, 0]]\n")
  _fails(capsys, ["--config", str(bad), "--out", out], "a_shape[0]",
         "n_local")


def test_flags_become_keys(tmp_path):
  cfg, path = search.parse_args(["--out", "a.json", "--minference-format",
                                 "--results=res", "seq_len=1024"])
  assert (cfg.out, cfg.minference_format, cfg.results, cfg.seq_len) == (
      "a.json", True, "res", 1024)
  assert path.endswith("paper.yaml")
  code, _ = search.parse_args(["--config", str(
      search.REPO_DIR / "configs/search/minference_code.yaml"), "--out",
                               "a.json"])
  assert code.scoring.objective == "recall"
  assert code.space.build().candidates[0] == AShape(100, 800)


# ------------------------------------------------------ record, resume
def test_a_record_of_other_settings_is_refused(tmp_path):
  path = tmp_path / "r.search.json"
  SearchRecord.open(path, {"seq_len": 256, "space": {"step": 50}}, {})
  again = SearchRecord.open(path, {"seq_len": 256, "space": {"step": 50}},
                            {})
  assert again.layers == {}
  with pytest.raises(RecordMismatch, match=r"space\.step"):
    SearchRecord.open(path, {"seq_len": 256, "space": {"step": 20}}, {})


@pytest.fixture(scope="module")
def tiny_model():
  config = ModelConfig.tiny("llama", num_layers=3)
  params = random_params(config, 0, jnp.float32, std=0.3)
  tokens = np.random.default_rng(0).integers(3, 96, (2, 256))
  return config, params, tokens


SPACE = SearchSpace.from_dict({
    "a_shape": [[1024, 4096]], "vertical_slash": [[30, 2048], [3000, 200]],
    "block_sparse": [100]})


def _search(model, path, on_layer=None):
  config, params, tokens = model
  record = SearchRecord.open(path, {"test": 1}, {})
  run_search(config, params, tokens, record, SPACE, CostTarget(),
             SearchSettings(key_chunk=128), baselines=(BlockSparse(100),),
             on_layer=on_layer)
  return record


def _without_time(record):
  return {i: {k: v for k, v in e.items() if k != "seconds"}
          for i, e in record.layers.items()}


def test_resume_after_a_kill_gives_the_same_config(tiny_model, tmp_path):
  whole = _search(tiny_model, tmp_path / "whole.search.json")

  def kill_after_layer_1(layer, res, seconds):
    if layer == 1:
      raise KeyboardInterrupt

  path = tmp_path / "killed.search.json"
  with pytest.raises(KeyboardInterrupt):
    _search(tiny_model, path, kill_after_layer_1)
  assert sorted(SearchRecord.open(path, {"test": 1}, {}).layers) == ["0",
                                                                     "1"]
  seen = []
  resumed = _search(tiny_model, path, lambda layer, r, s: seen.append(layer))
  assert seen == [2]  # finished layers were skipped
  assert _without_time(resumed) == _without_time(whole)
  n = tiny_model[0].num_heads
  a, b = (assemble_config(r, 3, n, "output", "mean") for r in (whole,
                                                               resumed))
  assert a == b
  assert a.scores == tuple(tuple(row) for row in a.scores)
  with pytest.raises(ValueError, match="4 heads, the model 9"):
    assemble_config(whole, 3, 9, "output", "mean")
  with pytest.raises(ValueError, match="no result for layer 3"):
    assemble_config(whole, 4, n, "output", "mean")


def test_held_out_validation_and_report(tiny_model, tmp_path):
  config, params, tokens = tiny_model
  record = _search(tiny_model, tmp_path / "r.search.json")
  searched = assemble_config(record, 3, config.num_heads, "output", "mean",
                             model="tiny")
  configs = {"searched": searched,
             "block_sparse": baseline_config(record, 0, 3)}
  run_validation(config, params, tokens[::-1].copy(), record, configs,
                 SearchSettings(key_chunk=128))
  table = validation_summary(record.data["validation"], 3, 256)
  assert list(table) == ["searched", "block_sparse"]
  for row in table.values():
    assert 0 < row["recall"] <= 1 and row["output_error"] >= 0
    assert 0 < row["density"] <= row["kernel_density"] * 1.01 + 0.05
  summary = search_summary(record.layers, searched, 256)
  assert sum(summary["kind_share"].values()) == pytest.approx(1.0)
  assert len(summary["layers"]) == 3
  files = write_report(tmp_path / "res", "search_tiny", summary, table,
                       {"model": "tiny", "command": "test"}, searched)
  assert [f.name for f in files] == ["search_tiny.json", "search_tiny.md",
                                     "search_tiny_map.png"]
  assert "| searched |" in files[1].read_text()


# ---------------------------------------------------- MInference format
def test_searched_configs_round_trip_through_minference_format():
  config = PatternConfig(layers=(
      (VerticalSlash(30, 512), AShape(70, 280), BlockSparse(100)),
      (VerticalSlash(750, 50), BlockSparse(7), AShape(0, 64)),
  ), scores=((0.1, 0.2, 0.3), (0.4, 0.5, 0.6)), model="m")
  data, rewritten = minference_export(config)
  assert rewritten == [[1, 1]]
  back = PatternConfig.from_minference_json(json.loads(json.dumps(data)))
  want = [list(row) for row in config.layers]
  want[1][1] = VerticalSlash(1000, 6096)  # MInference's own rewrite
  assert [list(row) for row in back.layers] == want
  assert back.scores == config.scores
  assert minference_export(back)[0] == data


def test_published_minference_files_round_trip(shared_dir):
  files = sorted((shared_dir / "data" / "minference_configs").glob("*.json"))
  assert files
  for file in files:
    data = json.loads(file.read_text())
    exported, rewritten = minference_export(
        PatternConfig.from_minference_json(data))
    assert exported == data, file.name
    assert rewritten == [], file.name


# ------------------------------------------------------------- prompts
class CharTokenizer:
  """A stand-in tokenizer: one id per character, no chat template."""

  chat_template = None

  def encode(self, text):
    return [ord(c) % 251 for c in text]


def test_prompts_have_the_length_and_are_seeded():
  tok = CharTokenizer()
  counts = {"kv_retrieval": 2, "haystack": 1}
  a = make_samples(tok, 700, counts, seed=3)
  assert [s.name for s in a] == ["kv_retrieval:3", "kv_retrieval:4",
                                 "haystack:3"]
  assert all(s.tokens.shape == (700,) for s in a)
  b = make_samples(tok, 700, counts, seed=3)
  assert all((x.tokens == y.tokens).all() for x, y in zip(a, b))
  held = make_samples(tok, 700, counts, seed=3, held_out=True)
  assert {s.seed for s in held}.isdisjoint({s.seed for s in a})
  # Middle truncation keeps the question at the end.
  assert "".join(map(chr, a[0].tokens[-40:])).rstrip().endswith("is:")
  with pytest.raises(ValueError, match="unknown sample kinds"):
    make_samples(tok, 700, {"books": 1}, seed=0)


# -------------------------------------------------- committed configs
def test_default_config_lookup_checks_the_geometry():
  assert model_key(None) == "smollm2-135m-instruct"
  assert model_key("path/to/SmolLM2-135M-Instruct.Q4_1.gguf") == (
      "smollm2-135m-instruct")
  assert model_key("llama-3-8b") is None
  assert default_pattern_config("llama-3-8b", ModelConfig.tiny()) is None
  smol = default_pattern_config(None, ModelConfig.smollm2_135m())
  assert (smol.num_layers, smol.num_heads) == (30, 9)
  assert smol.model == "SmolLM2-135M-Instruct" and smol.scores is not None
  # The committed MInference-format file is this config's export.
  export = search.REPO_DIR / "configs/patterns/smollm2-135m-instruct.json"
  minf = export.with_name("smollm2-135m-instruct.minference.json")
  assert json.loads(minf.read_text()) == minference_export(smol)[0]
  with pytest.raises(ValueError, match="but the model has 2 layers"):
    default_pattern_config(None, ModelConfig.tiny())
  config = PatternConfig.uniform(VerticalSlash(30, 100), 30, 9)
  assert check_geometry(config, ModelConfig.smollm2_135m(), "x") is config
  with pytest.raises(ValueError, match="30 layers x 9 heads, but the model"
                     " has 2 layers x 4"):
    check_geometry(config, ModelConfig.tiny(), "x.json")


def test_rope_scaling_for_lengths_past_training():
  config = ModelConfig.smollm2_135m()
  assert apply_rope_scaling(config, "none", 4.0) is config
  yarn = apply_rope_scaling(config, "yarn", 4.0)
  assert (yarn.rope.kind, yarn.rope.factor) == ("yarn", 4.0)
  assert yarn.rope.original_max_position_embeddings == (
      config.max_position_embeddings)
  slow = yarn.rope.inv_freq(32768)
  assert (slow <= config.rope.inv_freq(32768) + 1e-12).all()
  assert slow[-1] < config.rope.inv_freq(32768)[-1]  # low bands stretched
