"""The training lifecycle's promises on a tiny model: early stopping, gradient checkpointing, a recipe's chat
template, plain-text rows (continued pre-training), a user's forgetting text, row kinds no task trains on, and the
device placement every command shares."""

import json

import pytest
import torch
import yaml
from safetensors.torch import load_file
from transformers import TrainerCallback

from tests.conftest import reverse_rows, run_record, tiny_recipe, train_recipe, write_jsonl
from tests.unit.test_cli import invoke, one_error_line
from tunelab.errors import TunelabError


def adapter(run) -> dict:
    return load_file(str(run.model / "adapter_model.safetensors"))


def test_early_stopping_stops_and_keeps_the_best_checkpoint(tiny_checkpoint, reverse_data, tmp_path, home):
    # A learning rate this high makes validation loss rise after the first evaluations: patience 1 stops it.
    recipe = tiny_recipe(tmp_path, tiny_checkpoint, reverse_data, method={"name": "full"},
                         train={"max_steps": 40, "lr": 0.5, "eval_every": 2, "early_stopping_patience": 1,
                                "scheduler": "constant"})
    run = train_recipe(recipe, home)
    training = run_record(run).training
    log = [json.loads(line) for line in run.train_log.read_text().splitlines()]
    eval_losses = [(entry["step"], entry["eval_loss"]) for entry in log if "eval_loss" in entry]
    assert training.stopped_early and training.steps < 40
    best_step, best = min(eval_losses, key=lambda pair: pair[1])
    assert training.best_eval_loss == pytest.approx(best)
    assert training.best_checkpoint.endswith(f"checkpoint-{best_step}")
    assert eval_losses[-1][1] > best  # it stopped because validation got worse, patience 1


def test_early_stopping_without_validation_rows_is_refused(tiny_checkpoint, reverse_data, tmp_path, home):
    recipe = tiny_recipe(tmp_path, tiny_checkpoint, reverse_data, train={"early_stopping_patience": 2})
    recipe["data"]["split"]["validation"] = 0
    with pytest.raises(TunelabError, match="early_stopping_patience needs validation rows"):
        train_recipe(recipe, home)


class CheckpointingSeen(TrainerCallback):
    def on_train_begin(self, args, state, control, model=None, **kwargs):
        self.enabled = model.is_gradient_checkpointing


def test_gradient_checkpointing_trains_the_same_weights(tiny_checkpoint, reverse_data, tmp_path, home):
    plain = train_recipe(tiny_recipe(tmp_path / "a", tiny_checkpoint, reverse_data), home)
    seen = CheckpointingSeen()
    checkpointed = train_recipe(tiny_recipe(tmp_path / "b", tiny_checkpoint, reverse_data,
                                            train={"gradient_checkpointing": True}), home, callbacks=(seen,))
    assert seen.enabled is True
    first, second = adapter(plain), adapter(checkpointed)
    assert first.keys() == second.keys()
    assert all(torch.allclose(first[name], second[name], atol=1e-6) for name in first)


def test_a_recipe_chat_template_is_what_trains_and_what_is_saved(tiny_checkpoint, reverse_data, tmp_path, home):
    template = tmp_path / "template.jinja"
    template.write_text("{% for m in messages %}[{{ m['role'] }}] {{ m['content'] }}<|im_end|>\n{% endfor %}"
                        "{% if add_generation_prompt %}[assistant] {% endif %}")
    recipe = tiny_recipe(tmp_path, tiny_checkpoint, reverse_data, model={"chat_template": str(template)})
    run = train_recipe(recipe, home)
    saved = json.loads((run.model / "tokenizer_config.json").read_text())
    saved_template = saved.get("chat_template") or (run.model / "chat_template.jinja").read_text()
    assert "[assistant] " in saved_template
    report = json.loads((run.data / "data_report.json").read_text())
    rendered = "".join(text for text, _ in report["lint"]["examples"][0]["segments"])
    assert rendered.startswith("[user] ") and "[assistant] " in rendered
    assert all(check["passed"] for check in report["lint"]["checks"])


def test_plain_text_rows_train_and_are_evaluated_by_perplexity(tiny_checkpoint, tmp_path, home, capsys):
    """Before: the default recipe refused text rows (its evaluation wanted reference answers)."""
    texts = write_jsonl(tmp_path / "text.jsonl", [{"text": f"{row['prompt']} is {row['completion']}"}
                                                  for row in reverse_rows(60)])
    recipe = tiny_recipe(tmp_path, tiny_checkpoint, texts, method={"name": "full"}, train={"lr": 1e-2})
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe))
    code, out, err = invoke(capsys, "train", str(path))
    assert code == 0, err
    saved = json.loads((tmp_path / "run" / "eval.json").read_text())
    assert saved["kind"] == "text" and saved["metrics"] == ["loss", "perplexity"] and saved["flips"] is None
    assert saved["tuned"]["loss"] < saved["base"]["loss"]  # the held-out text became more likely
    assert "base vs tuned on 6 held-out rows" in out and "flips" not in out
    assert "Base vs tuned" in (tmp_path / "run" / "report.html").read_text()


def test_a_users_forgetting_text_is_probed(tiny_checkpoint, reverse_data, tmp_path, home, capsys):
    own = tmp_path / "mine.txt"
    own.write_text("The river runs past the mill.\nBread is baked at dawn.\n\nSnow fell on the hills.\n")
    recipe = tiny_recipe(tmp_path, tiny_checkpoint, reverse_data, eval={"forgetting": {"text": str(own)}})
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe))
    code, out, err = invoke(capsys, "train", str(path))
    assert code == 0, err
    probes = json.loads((tmp_path / "run" / "eval.json").read_text())["forgetting"]["probes"]
    assert set(probes) == {"general_text", "user_text"} and probes["user_text"]["rows"] == 3
    assert "forgetting user_text: perplexity" in out
    recipe["eval"]["forgetting"]["text"] = str(tmp_path / "missing.txt")
    path.write_text(yaml.safe_dump({**recipe, "output": {"dir": str(tmp_path / "other")}}))
    code, _, err = invoke(capsys, "train", str(path))
    assert code == 2 and "eval.forgetting.text: " in one_error_line(err) and "missing.txt: file not found" in err
    assert not (tmp_path / "other").exists()


def test_preference_rows_are_refused_in_one_line(tiny_checkpoint, tmp_path, home, capsys):
    rows = [{"prompt": f"q{i}", "chosen": f"good {i}", "rejected": f"bad {i}"} for i in range(30)]
    data = write_jsonl(tmp_path / "prefs.jsonl", rows)
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(tiny_recipe(tmp_path, tiny_checkpoint, data)))
    code, _, err = invoke(capsys, "train", str(path))
    line = one_error_line(err)
    assert code == 2 and f"{data}: 24 'preference' row(s), and task 'sft' trains on chat and text rows" in line
    assert line.endswith("use task: dpo or reward_model or kto or orpo or simpo") and not (tmp_path / "run").exists()


def test_device_placement_is_decided_in_one_place(monkeypatch):
    from tunelab import device

    monkeypatch.setattr(device, "cuda_available", lambda: False)
    assert device.resolve_placement("auto", "fp32") == device.Placement("cpu", "fp32")
    with pytest.raises(TunelabError, match="--device cuda: no CUDA GPU is visible"):
        device.resolve_placement("cuda")
    with pytest.raises(TunelabError, match="fp16 on a CPU is hundreds of times slower"):
        device.resolve_placement("cpu", "fp16")
    assert device.resolve_placement("cpu", "auto", cpu_auto="fp32").precision == "fp32"


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU: --device cuda is valid here")
def test_device_cuda_without_a_gpu_is_one_line_for_every_command(capsys, tmp_path, tiny_checkpoint, reverse_data,
                                                                 home):
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(tiny_recipe(tmp_path, tiny_checkpoint, reverse_data)))
    code, _, err = invoke(capsys, "train", str(path), "--device", "cuda")
    assert code == 2 and "--device cuda: no CUDA GPU is visible to torch here" in one_error_line(err)
    assert not (tmp_path / "run").exists()
    assert invoke(capsys, "train", str(path), "--device", "cpu", "--no-eval")[0] == 0
    for command in (["eval", str(tmp_path / "run")], ["generate", str(tmp_path / "run"), "abc"],
                    ["export", str(tmp_path / "run"), "--format", "merged", "--out", str(tmp_path / "m")],
                    ["serve", str(tmp_path / "run"), "--port", "0"]):
        code, _, err = invoke(capsys, *command, "--device", "cuda")
        assert code == 2 and "--device cuda: no CUDA GPU" in one_error_line(err), command


def test_the_merge_loads_its_base_once_training_has_let_go_of_the_model(tiny_checkpoint, reverse_data, tmp_path,
                                                                        home):
    """Merging while the trained model, its trainer and optimizer state were still held made the merge's fresh base
    stack on training's memory: that phase was the run's peak (QLoRA: 4.8 GB against 2.2 GB while training)."""
    import gc
    import weakref
    from dataclasses import replace

    from rich.console import Console

    from tunelab.config.load import validate_recipe
    from tunelab.train.lifecycle import build_model, finish, fit, set_up, start

    console = Console(quiet=True)
    recipe = validate_recipe(tiny_recipe(tmp_path, tiny_checkpoint, reverse_data, output={"merge": True}))
    setup = set_up(recipe, home, console, resume=False, overwrite=False, device="cpu")
    model = build_model(setup)
    trained = weakref.ref(model)
    alive_at_merge = []

    def load(load_base, folder):  # the method's own load, noting whether the trained model is still alive
        gc.collect()
        alive_at_merge.append(trained() is not None)
        return method.load(load_base, folder)

    method = setup.method
    setup = replace(setup, method=replace(method, load=load))
    run, record = start(setup, model, console)
    fit(setup, run, record, model, console, ())
    del model  # what run_recipe does between the two
    finish(setup, run, record, console)
    assert alive_at_merge == [False]
    assert (run.merged / "model.safetensors").is_file()
    assert run_record(run).status == "completed" and run_record(run).merged
