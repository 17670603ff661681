"""Every method: 5 training steps on a tiny random model lower the loss, and the saved run loads back to the very
same logits; a merged model is written where the method can merge, and only there."""

import json

import pytest
import torch
from transformers import TrainerCallback

from tests.conftest import run_record, tiny_recipe, train_recipe
from tunelab.errors import TunelabError
from tunelab.methods.registry import METHODS
from tunelab.run.models import open_run_models

PROBE = torch.tensor([[5, 17, 30, 42, 8, 66, 12, 3], [9, 9, 21, 50, 70, 2, 44, 13]])


class LogitsAtEnd(TrainerCallback):
    """The trained model's logits on a fixed batch, taken before anything is saved."""

    def on_train_end(self, args, state, control, model=None, **kwargs):
        model.eval()
        with torch.no_grad():
            self.logits = model(input_ids=PROBE, attention_mask=torch.ones_like(PROBE)).logits


def logged_losses(run_dir):
    return [json.loads(line)["loss"] for line in run_dir.train_log.read_text().splitlines() if '"loss"' in line]


@pytest.mark.parametrize("name", list(METHODS))
def test_method_trains_saves_and_loads(name, tiny_checkpoint, reverse_data, tmp_path, home):
    method = METHODS[name]
    recipe = tiny_recipe(tmp_path, tiny_checkpoint, reverse_data, method={"name": name},
                         train={"max_steps": 5, "lr": method.typical_lr, "save_every": 5, "eval_every": 5,
                                "batch_size": 48})  # one batch = all 48 training rows: the logged loss is comparable
    probe = LogitsAtEnd()
    run_dir = train_recipe(recipe, home, callbacks=(probe,))
    losses = logged_losses(run_dir)
    assert len(losses) == 5 and losses[-1] < losses[0], losses
    record = run_record(run_dir)
    assert record.padding_free == method.padding_free
    assert 0 < record.method.trainable_parameters <= record.method.total_parameters

    models = open_run_models(run_dir.root, home)
    tuned = models.tuned(models.causal_lm)  # as the method reloads it, unmerged: the trained function, bit for bit
    with torch.no_grad():
        reloaded = tuned(input_ids=PROBE, attention_mask=torch.ones_like(PROBE)).logits
    assert torch.equal(reloaded, probe.logits)
    merged = run_dir.root / "merged" / "model.safetensors"
    assert merged.exists() == (method.is_adapter and method.merge is not None)


@pytest.mark.parametrize("name", ["prefix", "prompt", "adapter"])
def test_asking_to_merge_a_method_that_cannot_is_refused(name, tiny_checkpoint, reverse_data, tmp_path, home):
    recipe = tiny_recipe(tmp_path, tiny_checkpoint, reverse_data, method={"name": name}, output={"merge": True})
    with pytest.raises(TunelabError, match=rf"output.merge: method '{name}' cannot be merged into the base weights"):
        train_recipe(recipe, home)
    assert not (tmp_path / "run").exists()
