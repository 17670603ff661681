"""The one way tunelab writes a metric's value, change and interval: terminal tables, report.html, the model card
and the gate's messages all call these, so a value reads the same everywhere.

Rates (0-1) are shown in percent and their changes in points; 0-100 scores (BLEU, chrF) with two decimals; token
counts with one; other scores and losses with four; a relative change (forgetting) as a signed percent.
"""

from __future__ import annotations

import math

from tunelab.metrics.registry import METRICS


def missing(value: float | None) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


def format_value(metric: str, value: float | None, signed: bool = False) -> str:
    """A metric's value as people read it: rates in percent (a change in points), losses to four places."""
    if missing(value):
        return "n/a"
    known = METRICS.get(metric)
    sign = "+" if signed else ""
    if known is not None and known.unit == "rate":
        return f"{100 * value:{sign}.1f}" + (" pts" if signed else "%")
    if known is not None and known.unit == "tokens":
        return f"{value:{sign}.1f}"
    digits = 2 if known is not None and known.scale == 100 else 4  # the same decimals for a value and its interval
    return f"{value:{sign}.{digits}f}"


def format_change(metric: str, value: float | None) -> str:
    return format_value(metric, value, signed=True)


def format_interval(metric: str, interval: list[float] | None, signed: bool = False) -> str:
    """`[low, high]` (a change's unit written once: `[+2.5, +10.0 pts]`); empty without an interval."""
    if not interval:
        return ""
    show = format_change if signed else format_value
    return f"[{show(metric, interval[0]).replace(' pts', '')}, {show(metric, interval[1])}]"


def format_percent(value: float | None, signed: bool = True) -> str:
    """A relative change or a share: 0.172 -> +17.2%."""
    if missing(value):
        return "n/a"
    return f"{100 * value:{'+' if signed else ''}.1f}%"


def format_percent_interval(interval: list[float] | None) -> str:
    return f"[{format_percent(interval[0])}, {format_percent(interval[1])}]" if interval else ""


def better(metric: str, delta: float | None) -> bool | None:
    """Whether a change is an improvement (None: no change, or unknown)."""
    if missing(delta) or not delta or (metric in METRICS and not METRICS[metric].judged):
        return None
    higher = METRICS[metric].higher_is_better if metric in METRICS else False
    return delta > 0 if higher else delta < 0


def format_number(value: object) -> str:
    """A plain fact (steps, seconds, tokens/s) in a table: '-' when absent."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def format_risk(unit: str, value: float | None, signed: bool = True) -> str:
    """A risk probe's figure (risks/base.py RiskResult.unit): a rate in percent (a change or drop in points), bits,
    or a metric's own unit (a loss: four places)."""
    if missing(value):
        return "n/a"
    sign = "+" if signed else ""
    if unit == "rate":
        return f"{100 * value:{sign}.1f}" + (" pts" if signed else "%")
    if unit == "bits":
        return f"{value:{sign}.2f} bits"
    if unit == "points":
        return f"{value:{sign}.2f} pts"
    return f"{value:{sign}.4f}"


def format_risk_interval(unit: str, interval: list[float] | tuple[float, float] | None, signed: bool = True) -> str:
    if not interval:
        return ""
    low = format_risk(unit, interval[0], signed).replace(" pts", "").replace(" bits", "")
    return f"[{low}, {format_risk(unit, interval[1], signed)}]"
