"""Shared fixtures: a tiny random Llama checkpoint, small data files, a private TUNELAB_HOME."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
from hypothesis import settings

# Property tests draw the same examples on every run, so CI is repeatable; a failure found once stays found.
settings.register_profile("tunelab", derandomize=True)
settings.load_profile("tunelab")

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory) -> Path:
    from tests.tiny import save_tiny_checkpoint

    return save_tiny_checkpoint(tmp_path_factory.mktemp("tiny") / "tiny-llama")


@pytest.fixture
def home(tmp_path, monkeypatch) -> Path:
    """A private tunelab home so tests never touch the user's cache."""
    folder = tmp_path / "home"
    monkeypatch.setenv("TUNELAB_HOME", str(folder))
    return folder


def unique_words(count: int, letters: str, seed: int = 0) -> list[str]:
    """`count` distinct random words of 3 to 6 `letters`, the same for the same seed."""
    rng = random.Random(seed)
    words: list[str] = []
    seen = set()
    while len(words) < count:
        word = "".join(rng.choice(letters) for _ in range(rng.randint(3, 6)))
        if word not in seen:
            seen.add(word)
            words.append(word)
    return words


def reverse_rows(count: int, seed: int = 0) -> list[dict[str, str]]:
    """A tiny learnable task: write the word backwards."""
    return [{"prompt": word, "completion": word[::-1]} for word in unique_words(count, "abcdefgh", seed)]


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    return path


@pytest.fixture
def reverse_data(tmp_path) -> Path:
    return write_jsonl(tmp_path / "reverse.jsonl", reverse_rows(60))


def train_recipe(recipe: dict, home: Path, **options):
    """Train a recipe (as a dict) through the lifecycle, without the evaluation at its end; the run folder."""
    from rich.console import Console

    from tunelab.config.load import validate_recipe
    from tunelab.train.lifecycle import run_recipe

    return run_recipe(validate_recipe(recipe), home, Console(quiet=True), evaluate=False, **options).run


def run_record(run):
    """The run's run.json as the typed record."""
    from tunelab.run.record import read_record

    return read_record(run)


def tiny_recipe(tmp_path: Path, checkpoint: Path, data: Path, **sections) -> dict:
    """A recipe (as a dict) that trains the tiny model for a few steps."""
    recipe = {
        "model": {"name": str(checkpoint)},
        "data": {"train": str(data), "split": {"validation": 0.1, "test": 0.1, "seed": 1}, "max_length": 64},
        "method": {"name": "lora", "r": 4, "alpha": 8, "dropout": 0.0},
        "train": {"max_steps": 6, "lr": 5e-3, "batch_size": 4, "save_every": 3, "eval_every": 3, "log_every": 1,
                  "warmup": 0, "precision": "fp32"},
        # the risk probes cost a generation pass each; tests of other features leave them out, and the tests of the
        # probes (test_risks, test_robustness, test_bias, test_privacy) name `risks` and so measure them
        "eval": {"max_new_tokens": 12, "batch_size": 8, "risks": {"enabled": False}},
        "output": {"dir": str(tmp_path / "run")},
    }
    for name, values in sections.items():
        if name == "method":  # another method: its options replace LoRA's
            recipe["method"] = values
        else:
            recipe.setdefault(name, {}).update(values)
    return recipe
