"""Evaluation: batched generation, metrics, base-vs-tuned comparison."""
