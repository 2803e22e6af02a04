"""Config-driven experiment scripts: demos, benchmarks, evaluations, plots."""
