"""The `minference-jax` commands (`experiments/cli.py` lists them), each
configured by a YAML file under `configs/` plus `key=value` overrides, and
the pieces they share (synthetic inputs, plots, timing)."""
