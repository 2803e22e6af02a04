"""The `minference-jax` commands (demo, generate, synthetic-demo,
bench-kernels, check-kernels, model-indices; `experiments/cli.py`), each
configured by a YAML file under `configs/experiments/` plus `key=value`
overrides, and the pieces they share (synthetic inputs, plots, timing)."""
