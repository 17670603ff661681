"""The objective gate: the recipe's success criteria checked against an evaluation, as one verdict.

`check_objective` is a pure function of the objective and the evaluation report (eval.json), so `tunelab eval`,
the end of `tunelab train` and `tunelab runs` all judge alike. `enforce` turns a failed verdict into
ObjectiveNotMet: exit code 3 with one line naming each failed part.
"""

from __future__ import annotations

import math
from typing import Any

from tunelab.config.schema import ObjectiveSection
from tunelab.errors import ObjectiveNotMet, TunelabError
from tunelab.evaluate.registry import METRICS


def shown(metric: str, value: float | None, signed: bool = False) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    if METRICS[metric].unit == "rate":
        return f"{100 * value:+.1f} pts" if signed else f"{100 * value:.1f}%"
    return f"{value:+.4g}" if signed else f"{value:.4g}"


def check(name: str, ok: bool, text: str, required: float | None, actual: float | None) -> dict[str, Any]:
    return {"check": name, "ok": bool(ok), "required": required, "actual": actual, "text": text}


def check_objective(objective: ObjectiveSection | None, report: dict[str, Any]) -> dict[str, Any] | None:
    """Each condition of the objective against the tuned model's results: a verdict with one entry per check."""
    if objective is None:
        return None
    metric = objective.metric
    if metric not in report["tuned"]:
        raise TunelabError(f"objective.metric: '{metric}' was not computed in this evaluation")
    higher = METRICS[metric].higher_is_better
    tuned, base = report["tuned"][metric], report["base"][metric]
    gain = (tuned - base) if higher else (base - tuned)
    checks = []
    if objective.min is not None:
        checks.append(check("min", tuned >= objective.min,
                            f"{metric} {shown(metric, tuned)} {'>=' if tuned >= objective.min else '<'} "
                            f"min {shown(metric, objective.min)}", objective.min, tuned))
    if objective.max is not None:
        checks.append(check("max", tuned <= objective.max,
                            f"{metric} {shown(metric, tuned)} {'<=' if tuned <= objective.max else '>'} "
                            f"max {shown(metric, objective.max)}", objective.max, tuned))
    if objective.min_gain_over_base is not None:
        ok = gain >= objective.min_gain_over_base
        checks.append(check("min_gain_over_base", ok,
                            f"{metric} gain over base {shown(metric, gain, signed=True)} {'>=' if ok else '<'} "
                            f"min_gain_over_base {shown(metric, objective.min_gain_over_base, signed=True)}",
                            objective.min_gain_over_base, gain))
    if objective.significant:
        checks.append(significance_check(metric, higher, report))
    if objective.max_forgetting is not None:
        checks.append(forgetting_check(objective.max_forgetting, report.get("forgetting")))
    met = all(entry["ok"] for entry in checks)
    failed = [entry["text"] for entry in checks if not entry["ok"]]
    summary = "; ".join(entry["text"] for entry in checks) if met else "; ".join(failed)
    return {"met": met, "metric": metric, "checks": checks, "summary": summary}


def significance_check(metric: str, higher: bool, report: dict[str, Any]) -> dict[str, Any]:
    interval = (report.get("intervals") or {}).get("delta", {}).get(metric)
    if interval is None:
        return check("significant", False, f"{metric} gain has no interval (eval.bootstrap: 0)", None, None)
    low, high = interval
    bound = low if higher else -high  # the gain's lower bound, in "bigger is better" terms
    ok = bound > 0
    text = (f"{metric} gain interval [{shown(metric, low, True)}, {shown(metric, high, True)}] "
            f"{'excludes' if ok else 'includes'} zero")
    return check("significant", ok, text, 0.0, bound)


def forgetting_check(limit: float, forgetting: dict[str, Any] | None) -> dict[str, Any]:
    if not forgetting:
        return check("max_forgetting", False, "forgetting was not measured", limit, None)
    value = forgetting["value"]
    ok = value <= limit
    text = (f"forgetting {100 * value:+.1f}% ({forgetting['worst_probe']} perplexity) {'<=' if ok else '>'} "
            f"max_forgetting {100 * limit:.1f}%")
    return check("max_forgetting", ok, text, limit, value)


def enforce(verdict: dict[str, Any] | None) -> None:
    """Exit code 3 (ObjectiveNotMet) with the failed parts on one line; nothing when met or when no objective."""
    if verdict is not None and not verdict["met"]:
        raise ObjectiveNotMet(f"objective not met: {verdict['summary']}")
