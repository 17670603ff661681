"""The README's service-loop scenario (examples/service_loop.py) on the real built-in model, through tunelab's own
commands in their own processes: a shortened quick-start run is promoted as `support-bot`, `tunelab serve --jobs
--log-content` answers in-distribution and new-shape notes, each judged through POST /v1/feedback; `tunelab monitor`
and the dashboard flag the drift and the feedback; `tunelab retrain --with-feedback --wait` runs a job the gate
promotes or keeps with its reasons; a promoted retrain is rolled back."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from rich.console import Console

from tunelab.config.load import load_recipe
from tunelab.train.lifecycle import run_recipe

pytestmark = [pytest.mark.integration, pytest.mark.slow]
ROOT = Path(__file__).resolve().parents[2]


def test_the_service_loop_flags_retrains_gates_and_rolls_back(real_home, real_model, tmp_path):
    run = tmp_path / "quickstart"
    recipe = load_recipe(ROOT / "recipes/quickstart.yaml", [
        f"output.dir={run}", "data.generate.rows=200", "train.epochs=1", "eval.max_rows=20"])
    run_recipe(recipe, real_home, Console(quiet=True))
    serve = tmp_path / "serve"
    done = subprocess.run(
        [sys.executable, str(ROOT / "examples/service_loop.py"), str(run), "--serve-dir", str(serve), "--port", "8931",
         "--normal", "20", "--shifted", "40", "--after", "10"],
        env={**os.environ, "TUNELAB_HOME": str(real_home)}, text=True, capture_output=True, timeout=3000)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    figures = json.loads((serve / "scenario.json").read_text())
    flagged = " ".join(figures["flagged"])
    assert "drift" in flagged and "quality" in flagged, figures
    assert figures["ui_monitor_flagged"]
    assert figures["retrain_exit"] in (0, 3), done.stdout[-3000:]  # promoted, or kept as a candidate with reasons
    assert "Compared with support-bot v1 on" in done.stdout
    if figures["promoted"]:
        assert figures["serving_after_rollback"] == 1
    else:
        assert "Not promoted: kept as candidate support-bot v2" in done.stdout
