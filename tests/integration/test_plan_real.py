"""The plan's estimates against a real run of the built-in SmolLM2-135M-Instruct: the quick start with LoRA, whole
(its own two epochs: a plan must hold for the run the recipe makes, not only its first steps), its peak RSS sampled
from outside the process (as bench/plan_accuracy.py does for all nine cases)."""

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def tunelab(*args):
    return [sys.executable, "-m", "tunelab", *args]


def environment(home):
    return {**os.environ, "TUNELAB_HOME": str(home), "PYTHONPATH": str(REPO / "src"), "TOKENIZERS_PARALLELISM": "false"}


def peak_rss_mib(command, env):
    child = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env,
                             cwd=REPO)
    peak = 0
    while child.poll() is None:
        try:
            with open(f"/proc/{child.pid}/status") as status:
                for line in status:
                    if line.startswith(("VmHWM:", "VmRSS:")):
                        peak = max(peak, int(line.split()[1]))
        except (FileNotFoundError, ProcessLookupError):
            break
        time.sleep(0.05)
    assert child.wait() == 0, child.stderr.read()[-2000:]
    return peak / 1024


@pytest.mark.slow
def test_the_quick_start_plan_is_within_20_percent_of_the_real_run(real_model, real_home, tmp_path):
    env = environment(real_home)
    overrides = [f"output.dir={tmp_path / 'run'}"]
    planned = subprocess.run(tunelab("plan", "recipes/quickstart.yaml", *overrides, "--calibrate", "--json"),
                             capture_output=True, text=True, env=env, cwd=REPO, check=True)
    text = planned.stdout  # the JSON object is the last thing printed (a library may log to stdout before it)
    plan = json.loads(text if text.startswith("{") else text[text.index("\n{") + 1:])
    measured = peak_rss_mib(tunelab("train", "recipes/quickstart.yaml", *overrides, "--no-eval"), env)
    record = json.loads((tmp_path / "run" / "run.json").read_text())
    assert plan["memory"]["peak_mib"] == pytest.approx(measured, rel=0.2)
    assert plan["time"]["train_seconds"] == pytest.approx(record["training"]["train_runtime_seconds"], rel=0.2)
    assert plan["parameters"]["trainable"] == record["method"]["trainable_parameters"]
