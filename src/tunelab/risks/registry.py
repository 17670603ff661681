"""The risk probes every evaluation measures, in the order they run and are reported.

Adding a probe = one module with its options class and `PROBE = RiskProbe(...)`, one line here, one field in
config/schema.py's RisksSection and one max_* field in the objective.
"""

from __future__ import annotations

from tunelab.risks import bias, factual, privacy, robustness
from tunelab.risks.base import RiskProbe

PROBES: list[RiskProbe] = [
    robustness.PROBE,
    bias.PROBE,
    privacy.PROBE,
    factual.PROBE,
]

# The recipe's eval.risks section names each probe's options by this key (factual_drift's are under `factual`).
OPTION_KEYS = {"robustness": "robustness", "bias": "bias", "privacy": "privacy", "factual_drift": "factual"}


def probe_options(section: object, probe: RiskProbe) -> object | None:
    """A probe's options in the recipe's eval.risks section (None: the section has no field for it yet)."""
    return getattr(section, OPTION_KEYS.get(probe.name, probe.name), None)
