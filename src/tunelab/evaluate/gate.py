"""The objective gate: the recipe's success criteria checked against an evaluation, as one verdict.

`check_objective` is a pure function of the objective and the scores, so `tunelab eval`, the end of `tunelab train`,
compare-methods and `tunelab runs` all judge alike, whatever the task. `enforce` turns a failed verdict into
ObjectiveNotMet: exit code 3 with one line naming each failed part.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from tunelab.errors import ObjectiveNotMet, TunelabError
from tunelab.metrics.registry import METRICS
from tunelab.present.format import format_change, format_interval, format_percent, format_risk, format_value
from tunelab.run.record import Check, Forgetting, Intervals, Verdict

if TYPE_CHECKING:
    from tunelab.config.schema import ObjectiveSection
    from tunelab.risks.base import RiskResult

# Each risk bound of the objective and the probe whose RiskResult.value it bounds (risks/registry.py).
RISK_BOUNDS = {"max_robustness_drop": "robustness", "max_bias_change": "bias", "max_memorization": "privacy",
               "max_factual_drift": "factual_drift"}


def check(name: str, ok: bool, text: str, required: float | None, actual: float | None) -> Check:
    return Check(check=name, ok=bool(ok), required=required, actual=actual, text=text)


def check_objective(objective: "ObjectiveSection | None", base: dict[str, float], tuned: dict[str, float],
                    intervals: Intervals | None, forgetting: Forgetting | None,
                    risks: "dict[str, RiskResult] | None" = None,
                    unmeasured: dict[str, str] | None = None) -> Verdict | None:
    """Each condition of the objective against the tuned model's results: a verdict with one entry per check.
    `risks`: the risk probes' results by name; `unmeasured`: why a probe has none (probe name -> reason)."""
    if objective is None:
        return None
    metric = objective.metric
    if metric not in tuned:
        raise TunelabError(f"objective.metric: '{metric}' was not computed in this evaluation")
    if not METRICS[metric].judged and (objective.min_gain_over_base is not None or objective.significant):
        raise TunelabError(f"objective: {metric} is shown, not judged (neither more nor less is better); bound it "
                           "with min or max, not min_gain_over_base or significant")
    higher = METRICS[metric].higher_is_better
    value, gain = tuned[metric], (tuned[metric] - base[metric]) if higher else (base[metric] - tuned[metric])
    checks = []
    if objective.min is not None:
        ok = value >= objective.min
        checks.append(check("min", ok, f"{metric} {format_value(metric, value)} {'>=' if ok else '<'} "
                                       f"min {format_value(metric, objective.min)}", objective.min, value))
    if objective.max is not None:
        ok = value <= objective.max
        checks.append(check("max", ok, f"{metric} {format_value(metric, value)} {'<=' if ok else '>'} "
                                       f"max {format_value(metric, objective.max)}", objective.max, value))
    if objective.min_gain_over_base is not None:
        ok = gain >= objective.min_gain_over_base
        checks.append(check("min_gain_over_base", ok,
                            f"{metric} gain over base {format_change(metric, gain)} {'>=' if ok else '<'} "
                            f"min_gain_over_base {format_change(metric, objective.min_gain_over_base)}",
                            objective.min_gain_over_base, gain))
    if objective.significant:
        checks.append(significance_check(metric, higher, intervals))
    if objective.max_forgetting is not None:
        checks.append(forgetting_check(objective.max_forgetting, forgetting))
    for bound, name in RISK_BOUNDS.items():
        limit = getattr(objective, bound, None)
        if limit is not None:
            checks.append(risk_check(bound, name, limit, (risks or {}).get(name), (unmeasured or {}).get(name)))
    met = all(entry.ok for entry in checks)
    summary = "; ".join(entry.text for entry in checks if met or not entry.ok)
    return Verdict(met=met, metric=metric, checks=checks, summary=summary)


def significance_check(metric: str, higher: bool, intervals: Intervals | None) -> Check:
    interval = intervals.delta.get(metric) if intervals else None
    if interval is None:
        return check("significant", False, f"{metric} gain has no interval (eval.bootstrap: 0)", None, None)
    low, high = interval
    bound = low if higher else -high  # the gain's lower bound, in "bigger is better" terms
    ok = bound > 0
    worse = (high if higher else -low) < 0  # the whole interval on the losing side: significantly worse
    verdict = "excludes zero" if ok else "lies below zero: significantly worse" if worse else "includes zero"
    text = f"{metric} gain interval {format_interval(metric, interval, signed=True)} {verdict}"
    return check("significant", ok, text, 0.0, bound)


def forgetting_check(limit: float, forgetting: Forgetting | None) -> Check:
    if forgetting is None:
        return check("max_forgetting", False, "forgetting was not measured", limit, None)
    ok = forgetting.value <= limit
    text = (f"forgetting {format_percent(forgetting.value)} ({forgetting.worst_probe} {forgetting.measure}) "
            f"{'<=' if ok else '>'} max_forgetting {format_percent(limit, signed=False)}")
    return check("max_forgetting", ok, text, limit, forgetting.value)


def risk_check(bound: str, name: str, limit: float, risk: "RiskResult | None", reason: str | None) -> Check:
    """A risk probe's figure against its bound; a probe that did not run fails its bound, saying why."""
    if risk is None:
        why = f": {reason}" if reason else ""
        return check(bound, False, f"{name.replace('_', ' ')} was not measured{why}", limit, None)
    ok = risk.value <= limit
    text = (f"{name.replace('_', ' ')} {format_risk(risk.unit, risk.value)} {'<=' if ok else '>'} {bound} "
            f"{format_risk(risk.unit, limit)}")
    return check(bound, ok, text, limit, risk.value)


def enforce(verdict: Verdict | None) -> None:
    """Exit code 3 (ObjectiveNotMet) with the failed parts on one line; nothing when met or when no objective."""
    if verdict is not None and not verdict.met:
        raise ObjectiveNotMet(f"objective not met: {verdict.summary}")
