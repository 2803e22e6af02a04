"""Config files and overrides: nested keys, types, and errors that name the
file or key."""

import dataclasses
from typing import Literal

import pytest

from experiments.config import (
    ConfigError,
    command,
    load_config,
    parse_cli,
    read_yaml,
    save_resolved,
)


@dataclasses.dataclass(frozen=True)
class Inner:
  path: str | None = None
  dtype: Literal["float32", "bfloat16"] = "float32"


@dataclasses.dataclass(frozen=True)
class Outer:
  lengths: tuple[int, ...] = (1024,)
  scale: float = 1.0
  dense: bool = True
  model: Inner = Inner()


def test_yaml_and_dotted_overrides(tmp_path):
  f = tmp_path / "c.yaml"
  f.write_text("lengths: [2048, 4096]\nmodel:\n  dtype: bfloat16\n")
  cfg = load_config(Outer, f, ["scale=2", "model.path=x.gguf", "dense=false"])
  assert cfg == Outer((2048, 4096), 2.0, False, Inner("x.gguf", "bfloat16"))


def test_resolved_config_round_trips(tmp_path):
  cfg = Outer((8,), 0.5, False, Inner("m", "bfloat16"))
  path = save_resolved(cfg, tmp_path / "out" / "config.yaml")
  assert load_config(Outer, path) == cfg


@pytest.mark.parametrize("override,match", [
    (["nope=1"], "unknown config keys \\['nope'\\]"),
    (["model.nope=1"], "model.nope"),
    (["lengths=[1, x]"], "lengths\\[1\\]"),
    (["dense=3"], "dense"),
    (["model.dtype=float16"], "model.dtype"),
    (["scale"], "not key=value"),
])
def test_bad_overrides_name_the_key(override, match):
  with pytest.raises(ConfigError, match=match):
    load_config(Outer, None, override)


def test_bad_files_are_named(tmp_path):
  missing = tmp_path / "absent.yaml"
  with pytest.raises(ConfigError, match="absent.yaml does not exist"):
    read_yaml(missing)
  bad = tmp_path / "bad.yaml"
  bad.write_text("[1, 2")
  with pytest.raises(ConfigError, match="bad.yaml is not valid YAML"):
    read_yaml(bad)
  listy = tmp_path / "list.yaml"
  listy.write_text("- 1\n")
  with pytest.raises(ConfigError, match="list.yaml must hold a mapping"):
    read_yaml(listy)
  empty = tmp_path / "empty.yaml"
  empty.write_text("")
  assert load_config(Outer, empty) == Outer()


def test_cli_options_and_one_line_errors(capsys):
  cfg, path = parse_cli(Outer, ["scale=3"], None)
  assert cfg.scale == 3.0 and path is None
  with pytest.raises(ConfigError, match="unknown option '--bogus'"):
    parse_cli(Outer, ["--bogus"], None)

  @command
  def main(argv):
    parse_cli(Outer, argv, None)

  with pytest.raises(SystemExit) as e:
    main(["nope=1"])
  assert e.value.code == 2
  err = capsys.readouterr().err
  assert err.startswith("error: unknown config keys") and err.count("\n") == 1
