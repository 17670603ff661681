"""~20 LoRA steps on the real 135M model and the quick-start data: the loss falls."""

import json

import pytest
from rich.console import Console

from tunelab.config.load import load_recipe
from tunelab.train.sft import train

pytestmark = pytest.mark.integration


def test_quickstart_data_loss_falls(real_home, real_model, tmp_path):
    recipe = load_recipe("recipes/quickstart.yaml", [
        f"output.dir={tmp_path / 'run'}", "train.max_steps=20", "train.batch_size=4", "train.eval_every=10",
        "train.save_every=20", "train.log_every=2", "data.generate.rows=120",
    ])
    run = train(recipe, real_home, Console(quiet=True))
    logs = [json.loads(line) for line in run.train_log.read_text().splitlines()]
    losses = [entry["loss"] for entry in logs if "loss" in entry]
    eval_losses = [entry["eval_loss"] for entry in logs if "eval_loss" in entry]
    assert losses[-1] < 0.5 * losses[0]
    assert eval_losses[-1] < eval_losses[0]
    record = run.read_record()
    assert record["precision"] in ("bf16", "fp32") and record["steps"] == 20
