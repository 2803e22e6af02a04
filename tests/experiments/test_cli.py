"""The console command's argument handling (the model paths are tested elsewhere)."""

import pytest

from experiments import cli


def test_generate_needs_a_prompt():
  with pytest.raises(SystemExit):
    cli.main(["generate"])


def test_unknown_backend_is_rejected():
  with pytest.raises(SystemExit):
    cli.main(["generate", "--prompt", "hi", "--backend", "nope"])


def test_missing_model_path_is_a_clear_error(tmp_path):
  with pytest.raises(SystemExit, match="does not exist"):
    cli.main(["generate", "--prompt", "hi", "--model",
              str(tmp_path / "absent.gguf")])
