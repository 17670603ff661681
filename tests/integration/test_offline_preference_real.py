"""KTO with LoRA on the real built-in SmolLM2-135M-Instruct, on the generated feedback rows (each order note with
its right JSON labelled desirable, or a worse answer labelled undesirable): held-out completions move toward the
desirable ones (feedback_margin rises)."""

import json

import pytest
from rich.console import Console

from tunelab.config.load import validate_recipe
from tunelab.models.catalog import DEFAULT_MODEL
from tunelab.train.lifecycle import run_recipe

# slow (~2 min): `make test` leaves it out; the offline-preference family's real-model test there is DPO's
# (test_preference_real.py). `make test-slow` runs it.
pytestmark = [pytest.mark.integration, pytest.mark.slow]


def test_kto_with_lora_leans_the_135m_model_toward_the_desirable_answers(real_home, real_model, tmp_path):
    recipe = validate_recipe({
        "task": {"name": "kto", "beta": 0.1},
        "model": {"name": DEFAULT_MODEL},
        "data": {"generate": {"task": "notes-to-json-feedback", "rows": 96, "seed": 3},
                 "split": {"validation": 0, "test": 1 / 6, "seed": 0}, "max_length": 192},
        "method": {"name": "lora", "r": 8, "alpha": 16, "dropout": 0.0},
        "train": {"max_steps": 12, "lr": 1e-3, "batch_size": 4, "save_every": 12, "log_every": 1, "warmup": 0},
        "eval": {"batch_size": 8, "forgetting": {"enabled": False}},
        "output": {"dir": str(tmp_path / "run"), "merge": False},
    })
    outcome = run_recipe(recipe, real_home, Console(quiet=True))
    losses = [json.loads(line)["loss"] for line in outcome.run.train_log.read_text().splitlines() if '"loss"' in line]
    assert sum(losses[-3:]) / 3 < sum(losses[:3]) / 3
    evaluation = outcome.evaluation
    assert evaluation.rows == 16 and evaluation.primary_metric == "feedback_margin"
    assert evaluation.tuned["feedback_margin"] > evaluation.base["feedback_margin"]
