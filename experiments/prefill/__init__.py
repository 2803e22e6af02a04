"""Whole-model long-context prefill benchmark (`minference-jax bench-prefill`).

Modules: `settings` (the YAML config), `weights` (device-initialised random
weights, model slices, tokens), `pieces` (the decoder layer as separately
jitted pieces and the layer-by-layer executor), `replay` (Vertical-Slash
index sets recorded from a real model's heads, replayed over a larger
model's layers and heads), `ops` (the one place that reaches library
entry points below `make_attention`), `accounting` (phases, scaling to all
layers, memory statistics, crossovers), `report` (JSON, markdown, plot) and
`inspect_hlo` (CPU-side inspection of the compiled prefill).
"""
