"""A short quick-start run on the real 135M model ends with the gate verdict, intervals, forgetting and the report."""

import contextlib
import io
import json
import math

import pytest

from tunelab.cli import main

pytestmark = pytest.mark.integration


def test_short_quickstart_run_is_evaluated_gated_and_reported(real_home, real_model, tmp_path, monkeypatch):
    monkeypatch.setenv("TUNELAB_HOME", str(real_home))
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            main(["train", "recipes/quickstart.yaml", f"output.dir={tmp_path / 'run'}", "train.max_steps=8",
                  "train.batch_size=4", "train.eval_every=8", "train.save_every=8", "data.generate.rows=120",
                  "eval.max_rows=6", "eval.bootstrap=200"])
            code = 0
        except SystemExit as exit:
            code = exit.code
    report = json.loads((tmp_path / "run" / "eval.json").read_text())
    verdict = report["objective"]
    assert code == (0 if verdict["met"] else 3), err.getvalue()
    assert ("objective met" if verdict["met"] else "objective NOT met") in out.getvalue()
    # 8 steps do teach the format: the tuned model's answer loss falls well below the base model's
    assert report["tuned"]["loss"] < 0.7 * report["base"]["loss"]
    low, high = report["intervals"]["delta"]["loss"]
    assert low <= report["delta"]["loss"] <= high
    probe = report["forgetting"]["probes"]["general_text"]
    # a 135M instruct model reads plain English sentences at a perplexity in the tens, not thousands
    assert 5 < probe["base_perplexity"] < 200 and math.isfinite(probe["tuned_perplexity"])
    html = (tmp_path / "run" / "report.html").read_text()
    assert html.count("<svg") >= 5 and "Forgetting" in html
