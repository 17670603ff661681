"""Risk probes measured in every evaluation: robustness, bias, privacy, factual drift (base.py)."""
