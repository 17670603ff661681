"""Metrics: row-level functions (rows.py) and the registry of named metrics with per-row statistics (registry.py).

Depends on nothing else in tunelab but errors.py, so the recipe schema can check metric names and the evaluator can
score them without an import cycle.
"""
