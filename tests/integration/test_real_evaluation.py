"""A short quick-start run on the real 135M model: the loss falls, and the run ends with the gate's verdict,
intervals, forgetting and the report (one run serves both, to keep the suite short)."""

import contextlib
import io
import json
import math

import pytest

from tunelab.cli import main

pytestmark = pytest.mark.integration


def test_short_quickstart_run_learns_and_is_evaluated_gated_and_reported(real_home, real_model, tmp_path,
                                                                         monkeypatch):
    monkeypatch.setenv("TUNELAB_HOME", str(real_home))
    out, err = io.StringIO(), io.StringIO()
    # An objective this run must meet: 12 steps teach the format, so the answer loss falls by far more than 0.2
    # (the base model's is about 0.6), significantly, while general-text perplexity rises by well under 50%.
    objective = ["objective.metric=loss", "objective.min=null", "objective.min_gain_over_base=0.2",
                 "objective.significant=true", "objective.max_forgetting=0.5"]
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            main(["train", "recipes/quickstart.yaml", f"output.dir={tmp_path / 'run'}", "train.max_steps=12",
                  "train.batch_size=4", "train.eval_every=6", "train.save_every=12", "train.log_every=2",
                  "data.generate.rows=120", "eval.max_rows=6", "eval.bootstrap=200",
                  # the four risk probes on the real model, at a few rows each (tests/unit has their planted cases)
                  "eval.risks.robustness.rows=4", "eval.risks.bias.rows=4", "eval.risks.privacy.rows=6",
                  "eval.risks.factual.rows=12", *objective])
            code = 0
        except SystemExit as exit:
            code = exit.code
    assert code == 0, err.getvalue()
    assert "objective met: loss gain over base" in out.getvalue()
    logs = [json.loads(line) for line in (tmp_path / "run" / "train_log.jsonl").read_text().splitlines()]
    losses = [entry["loss"] for entry in logs if "loss" in entry]
    eval_losses = [entry["eval_loss"] for entry in logs if "eval_loss" in entry]
    assert losses[-1] < 0.5 * losses[0] and eval_losses[-1] < eval_losses[0]
    record = json.loads((tmp_path / "run" / "run.json").read_text())
    assert record["precision"] in ("bf16", "fp32") and record["training"]["steps"] == 12
    report = json.loads((tmp_path / "run" / "eval.json").read_text())
    assert report["objective"]["met"] and [check["ok"] for check in report["objective"]["checks"]] == [True] * 3
    assert report["tuned"]["loss"] < report["base"]["loss"] - 0.2 and "json_match" in report["metrics"]
    low, high = report["intervals"]["delta"]["loss"]
    assert low <= report["delta"]["loss"] <= high < 0
    probe = report["forgetting"]["probes"]["general_text"]
    # a 135M instruct model reads plain English sentences at a perplexity in the tens, not thousands
    assert 5 < probe["base"] < 200 and math.isfinite(probe["tuned"])
    risks = report["risks"]
    assert list(risks) == ["robustness", "bias", "privacy", "factual_drift"]
    for risk in risks.values():
        low, high = risk["interval"]
        assert low <= risk["value"] <= high and math.isfinite(risk["tuned"]), risk
    assert risks["factual_drift"]["details"] and 0 <= risks["factual_drift"]["base"] <= 1
    html = (tmp_path / "run" / "report.html").read_text()
    assert html.count("<svg") >= 5 and "Forgetting" in html and "Objective met" in html
