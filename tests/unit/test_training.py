"""Training on a tiny random model: the run folder, resume equivalence, gradient-accumulation equivalence."""

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from transformers import TrainerCallback

from tests.conftest import run_record, tiny_recipe, train_recipe
from tunelab.errors import TunelabError


def run(recipe_dict, home, **options):
    return train_recipe(recipe_dict, home, **options)


def adapter_weights(run_dir) -> dict[str, torch.Tensor]:
    return load_file(str(Path(run_dir.root) / "model" / "adapter_model.safetensors"))


def assert_same_weights(first, second, atol):
    assert first.keys() == second.keys()
    for name in first:
        assert torch.allclose(first[name], second[name], atol=atol), name


class StopAt(TrainerCallback):
    """Ends training after `step`, as an interruption would (the checkpoint at that step is already saved)."""

    def __init__(self, step):
        self.step = step

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step == self.step:
            control.should_training_stop = True


def test_run_folder_holds_everything(tiny_checkpoint, reverse_data, tmp_path, home):
    run_dir = run(tiny_recipe(tmp_path, tiny_checkpoint, reverse_data), home)
    record = run_record(run_dir)
    assert record.status == "completed" and record.training.steps == 6 and record.task == "sft"
    assert record.training.tokens_seen > 0
    assert record.data.files[0].sha256 and record.data.files[0].rows == 60
    assert record.data.splits["train"].kept == 48
    assert record.environment.packages["transformers"]
    assert record.training.train_loss > 0 and record.training.final_eval_loss is not None
    for name in ("recipe.yaml", "data/train.jsonl", "data/test.jsonl", "model/adapter_config.json",
                 "merged/model.safetensors", "train_log.jsonl", "checkpoints/checkpoint-6"):
        assert (run_dir.root / name).exists(), name


def test_loss_falls(tiny_checkpoint, reverse_data, tmp_path, home):
    recipe = tiny_recipe(tmp_path, tiny_checkpoint, reverse_data, method={"name": "full"},
                         train={"max_steps": 30, "lr": 1e-2})
    run_dir = run(recipe, home)
    import json

    losses = [json.loads(line)["loss"] for line in run_dir.train_log.read_text().splitlines() if '"loss"' in line]
    assert losses[-1] < losses[0] * 0.8


def test_resume_gives_the_same_weights_as_an_uninterrupted_run(tiny_checkpoint, reverse_data, tmp_path, home):
    whole = run(tiny_recipe(tmp_path / "a", tiny_checkpoint, reverse_data), home)
    recipe = tiny_recipe(tmp_path / "b", tiny_checkpoint, reverse_data)
    part = run(recipe, home, callbacks=(StopAt(3),))
    assert run_record(part).training.steps == 3
    resumed = run(recipe, home, resume=True)
    assert run_record(resumed).training.steps == 6
    assert_same_weights(adapter_weights(whole), adapter_weights(resumed), atol=1e-6)


def test_gradient_accumulation_matches_a_bigger_batch(tiny_checkpoint, reverse_data, tmp_path, home):
    big = run(tiny_recipe(tmp_path / "a", tiny_checkpoint, reverse_data, train={"batch_size": 4, "max_steps": 3}), home)
    accumulated = run(tiny_recipe(tmp_path / "b", tiny_checkpoint, reverse_data,
                                  train={"batch_size": 1, "grad_accum": 4, "max_steps": 3}), home)
    assert_same_weights(adapter_weights(big), adapter_weights(accumulated), atol=1e-5)


def test_existing_run_is_refused_without_overwrite_and_kept(tiny_checkpoint, reverse_data, tmp_path, home):
    recipe = tiny_recipe(tmp_path, tiny_checkpoint, reverse_data, train={"max_steps": 2, "save_every": 2})
    first = run(recipe, home)
    started = run_record(first).started_at
    with pytest.raises(TunelabError, match="already holds a run; use --resume .* or --overwrite"):
        run(recipe, home)
    assert run_record(first).started_at == started
    run(recipe, home, overwrite=True)


def test_bad_input_leaves_an_earlier_run_untouched(tiny_checkpoint, reverse_data, tmp_path, home):
    recipe = tiny_recipe(tmp_path, tiny_checkpoint, reverse_data, train={"max_steps": 2, "save_every": 2})
    first = run(recipe, home)
    before = sorted(p.name for p in first.root.iterdir())
    broken = tmp_path / "broken.jsonl"
    broken.write_text('{"prompt": "a", "completion": "b"}\n{oops\n')
    recipe["data"]["train"] = str(broken)
    with pytest.raises(TunelabError, match=r"broken.jsonl:2: not valid JSON"):
        run(recipe, home, overwrite=True)
    assert sorted(p.name for p in first.root.iterdir()) == before


def test_folder_that_is_not_a_run_is_never_overwritten(tiny_checkpoint, reverse_data, tmp_path, home):
    precious = tmp_path / "run"
    precious.mkdir()
    (precious / "notes.txt").write_text("mine")
    with pytest.raises(TunelabError, match="is not a tunelab run"):
        run(tiny_recipe(tmp_path, tiny_checkpoint, reverse_data), home, overwrite=True)
    assert (precious / "notes.txt").read_text() == "mine"


def test_resume_refuses_a_changed_recipe(tiny_checkpoint, reverse_data, tmp_path, home):
    recipe = tiny_recipe(tmp_path, tiny_checkpoint, reverse_data, train={"max_steps": 2, "save_every": 2})
    run(recipe, home)
    recipe["train"]["lr"] = 0.5
    with pytest.raises(TunelabError, match=r"recipe changed since the run started \(train.lr"):
        run(recipe, home, resume=True)


def test_resume_takes_a_run_recorded_before_newer_recipe_fields(tiny_checkpoint, reverse_data, tmp_path, home):
    """A run started by an earlier tunelab has no record of fields added since (here data.canaries and
    train.distributed): they take their defaults, and --resume goes on; a changed value is still refused."""
    import json

    recipe = tiny_recipe(tmp_path, tiny_checkpoint, reverse_data, train={"max_steps": 2, "save_every": 2})
    run(recipe, home)
    record_path = Path(recipe["output"]["dir"]) / "run.json"
    record = json.loads(record_path.read_text())
    del record["recipe"]["data"]["canaries"], record["recipe"]["train"]["distributed"]
    record["status"] = "interrupted"
    record_path.write_text(json.dumps(record))
    run(recipe, home, resume=True)
    assert json.loads(record_path.read_text())["status"] == "completed"
    recipe["data"]["canaries"] = 2
    with pytest.raises(TunelabError, match=r"recipe changed since the run started \(data.canaries: 0 -> 2"):
        run(recipe, home, resume=True)


def test_test_rows_seen_in_train_are_refused(tiny_checkpoint, reverse_data, tmp_path, home):
    # Evaluation rows that repeat train rows are taken out of the evaluation split (and listed, see
    # test_doctor.py); when that leaves no held-out row at all, training is refused.
    recipe = tiny_recipe(tmp_path, tiny_checkpoint, reverse_data)
    recipe["data"]["split"] = {"validation": 0, "test": 0}
    recipe["data"]["test"] = str(reverse_data)  # the same rows again
    with pytest.raises(TunelabError, match="all 60 test row\\(s\\) also appear in train"):
        run(recipe, home)
    assert not (tmp_path / "run").exists()
