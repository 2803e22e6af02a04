"""Offline, seeded data for calibration and evaluation: long text and
synthetic long-context tasks whose answers are in the prompt."""
