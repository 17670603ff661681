"""What monitoring measures, in one shape: a score of one model over a window, with its interval and threshold.

Drift (monitor/drift.py) and live quality (monitor/quality.py) both produce `Score`s and `Series`; `tunelab monitor`,
the Prometheus gauges and the dashboard show them without knowing which kind they are.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal


@dataclass(frozen=True)
class Score:
    model: str  # the model id the requests named (a name in service, an adapter id, the base)
    name: str  # what is measured: "length_distance", "thumbs_up_rate", ...
    kind: Literal["drift", "quality"]
    value: float | None  # None: not measurable in this window (no rows, no content logged); `detail` says why
    threshold: float | None  # None: shown, never flagged
    flag_when: Literal["above", "below"]  # drift scores are flagged above their threshold, rates such as thumbs-up
    low: float | None = None  # the interval of `value` (95%), where one is computed
    high: float | None = None
    count: int = 0  # the rows (requests, feedback) the value was computed from
    version: str | None = None  # the version (run folder) that answered, where scores are per version
    detail: str = ""  # one line: how it was computed, or why there is no value

    @property
    def flagged(self) -> bool:
        if self.value is None or self.threshold is None:
            return False
        return self.value > self.threshold if self.flag_when == "above" else self.value < self.threshold


@dataclass(frozen=True)
class Point:
    ts: float  # the start of the bucket (unix time)
    value: float | None
    low: float | None = None
    high: float | None = None
    count: int = 0


@dataclass(frozen=True)
class Series:
    """A score over time, one point per bucket, for plots."""

    model: str
    name: str
    kind: Literal["drift", "quality", "traffic"]
    points: list[Point] = field(default_factory=list)
    threshold: float | None = None
    version: str | None = None
