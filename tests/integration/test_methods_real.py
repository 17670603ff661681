"""Real models and data: MiniLM-L6 with a head learns SMS spam; QLoRA and prefix tuning train on the 135M model."""

import json
from pathlib import Path

import pytest
from rich.console import Console

from tests.conftest import SHARED_DATA
from tunelab.config.load import load_recipe
from tunelab.train.lifecycle import run_recipe

pytestmark = pytest.mark.integration
SMS = SHARED_DATA / "sms_spam" / "SMSSpamCollection"


@pytest.fixture(scope="module")
def sms() -> Path:
    if not SMS.is_file():
        pytest.skip(f"{SMS} is absent (the shared data sets are not on this machine)")
    return SMS


def test_minilm_head_learns_sms_spam(sms, tmp_path):
    home = tmp_path / "home"
    recipe = load_recipe("recipes/sms-spam.yaml", [
        f"data.train={sms}", f"output.dir={tmp_path / 'run'}", "train.max_steps=60", "train.save_every=60",
        "data.split.validation=0", "eval.max_rows=200", "data.max_length=64", "eval.risks.enabled=false",
    ])
    outcome = run_recipe(recipe, home, Console(quiet=True))
    evaluation, record = outcome.evaluation, outcome.record
    assert evaluation.details["tuned"]["labels"]["labels"] == ["ham", "spam"] and evaluation.rows == 200
    assert evaluation.tuned["mcc"] > 0.5 and evaluation.tuned["f1"] > evaluation.base["f1"] + 0.2
    low, _ = evaluation.intervals.delta["f1"]
    assert low > 0  # the gain is significant
    assert evaluation.forgetting.measure == "drift" and 0 <= evaluation.forgetting.value < 1
    assert record.task_state["style"] == "head"
    assert record.data.doctor.rejected["duplicate"] >= 400  # the data doctor ran: the file repeats rows


@pytest.mark.parametrize("method", ["qlora", "prefix"])
def test_method_lowers_the_loss_on_the_135m_model(method, real_home, real_model, tmp_path):
    recipe = load_recipe(f"recipes/quickstart-{method}.yaml", [
        f"output.dir={tmp_path / 'run'}", "train.max_steps=8", "train.batch_size=2", "train.eval_every=8",
        "train.save_every=8", "train.log_every=1", "data.generate.rows=60", "output.merge=false",
    ])
    run = run_recipe(recipe, real_home, Console(quiet=True), evaluate=False).run
    losses = [json.loads(line)["loss"] for line in run.train_log.read_text().splitlines() if '"loss"' in line]
    assert sum(losses[-3:]) / 3 < sum(losses[:3]) / 3
