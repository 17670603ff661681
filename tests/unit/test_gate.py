"""The objective gate: each condition against a synthetic evaluation, and the exit codes of a failed gate."""

import pytest

from tunelab.config.schema import ObjectiveSection
from tunelab.errors import ObjectiveNotMet
from tunelab.evaluate.gate import check_objective, enforce
from tunelab.run.record import Forgetting, Intervals, ProbeResult

BASE, TUNED = {"f1": 0.70, "loss": 0.90}, {"f1": 0.85, "loss": 0.40}


def intervals(delta):
    return Intervals(confidence=0.95, resamples=100, method="paired percentile bootstrap", base={}, tuned={},
                     delta=delta)


INTERVALS = intervals({"f1": [0.05, 0.25], "loss": [-0.6, -0.4]})
FORGETTING = Forgetting(threshold=0.05, measure="perplexity", value=0.08, flagged=True, worst_probe="general_text",
                        probes={"general_text": ProbeResult(rows=3, tokens=30, measure="perplexity", base=10.0,
                                                            tuned=10.8, change=0.08, interval=None, flagged=True)})


def verdict(**objective):
    return check_objective(ObjectiveSection(**objective), BASE, TUNED, INTERVALS, FORGETTING)


def failed(result):
    return [entry.check for entry in result.checks if not entry.ok]


def test_each_condition():
    assert verdict(metric="f1", min=0.8).met
    assert failed(verdict(metric="f1", min=0.9)) == ["min"]
    assert failed(verdict(metric="f1", min_gain_over_base=0.2)) == ["min_gain_over_base"]
    assert verdict(metric="f1", min_gain_over_base=0.1, significant=True).met
    assert failed(verdict(metric="f1", max_forgetting=0.05)) == ["max_forgetting"]
    assert verdict(metric="f1", max_forgetting=0.1).met


def test_lower_is_better_metrics_gain_by_falling():
    assert verdict(metric="loss", max=0.5, min_gain_over_base=0.4, significant=True).met
    assert failed(verdict(metric="loss", max=0.3, min_gain_over_base=0.6)) == ["max", "min_gain_over_base"]


def test_gain_whose_interval_includes_zero_is_not_significant():
    result = check_objective(ObjectiveSection(metric="f1", significant=True), BASE, TUNED,
                             intervals({"f1": [-0.02, 0.3]}), FORGETTING)
    assert failed(result) == ["significant"] and "includes zero" in result.summary
    worse = check_objective(ObjectiveSection(metric="f1", significant=True), BASE, TUNED,
                            intervals({"f1": [-0.3, -0.1]}), FORGETTING)
    assert failed(worse) == ["significant"] and "lies below zero: significantly worse" in worse.summary
    falling = check_objective(ObjectiveSection(metric="loss", significant=True), BASE, TUNED,
                              intervals({"loss": [0.1, 0.3]}), FORGETTING)  # loss up: worse, for a lower-is-better
    assert "lies below zero: significantly worse" in falling.summary
    without = check_objective(ObjectiveSection(metric="f1", significant=True), BASE, TUNED, None, None)
    assert failed(without) == ["significant"] and "no interval (eval.bootstrap: 0)" in without.summary


def test_failed_gate_is_exit_code_3_with_one_line_naming_each_failed_part():
    result = verdict(metric="f1_macro", min=0.9, min_gain_over_base=0.1, max_forgetting=0.05)
    with pytest.raises(ObjectiveNotMet) as raised:
        enforce(result)
    message = str(raised.value)
    assert raised.value.exit_code == 3 and "\n" not in message
    assert message == ("objective not met: f1 85.0% < min 90.0%; forgetting +8.0% (general_text perplexity) > "
                       "max_forgetting 5.0%")
    enforce(verdict(metric="f1", min=0.8))  # met: nothing raised
    enforce(None)  # no objective: nothing raised
