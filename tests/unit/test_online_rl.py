"""The online RL tasks grpo, rloo and ppo on a tiny random model, through the lifecycle: prompt rows judged by a
recipe's rule reward (the share of the answer's characters among a..h, about 0.1 for the random model) that training
raises; resume gives the weights of an uninterrupted run; the LoRA reference shares the base weights; one-line
refusals before anything is written."""

from __future__ import annotations

import json

import pytest
import torch

from tests.conftest import run_record, tiny_recipe, train_recipe, unique_words, write_jsonl
from tests.unit.test_training import StopAt, adapter_weights

LETTERS = ("def grade(sample, item):\n"
           "    text = sample['output_text']\n"
           "    return sum(ch in 'abcdefgh' for ch in text) / max(len(text), 1)\n")
LETTER_REWARD = {"type": "python", "name": "letters", "source": LETTERS}
TASKS = {
    "grpo": {"name": "grpo", "num_generations": 4, "max_completion_length": 8},
    "rloo": {"name": "rloo", "num_generations": 4, "max_completion_length": 8},
    "ppo": {"name": "ppo", "max_new_tokens": 8, "ppo_epochs": 2},
}


@pytest.fixture(scope="module")
def sharp_checkpoint(tmp_path_factory):
    """The tiny model with its (tied) embeddings scaled up: at random init's scale the logits stay within about
    +-0.6 whatever an adapter on the layers does (the final norm bounds the hidden state), so no reward could make
    its answers differ from uniform noise; scaled, adapters on the layers can sharpen them."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from tests.tiny import save_tiny_checkpoint

    source = save_tiny_checkpoint(tmp_path_factory.mktemp("tiny") / "tiny-llama")
    model = AutoModelForCausalLM.from_pretrained(str(source))
    with torch.no_grad():
        model.get_input_embeddings().weight.mul_(SCALE)
    folder = tmp_path_factory.mktemp("sharp") / "tiny-llama"
    model.save_pretrained(str(folder))
    AutoTokenizer.from_pretrained(str(source)).save_pretrained(str(folder))
    return folder


SCALE = 10.0


def prompt_rows(count=48):
    return [{"prompt": word, "reference": word[::-1]} for word in unique_words(count, "abcdefgh")]


@pytest.fixture
def prompts(tmp_path):
    return write_jsonl(tmp_path / "prompts.jsonl", prompt_rows())


def online_recipe(tmp_path, checkpoint, data, task, rewards=(LETTER_REWARD,), **sections):
    recipe = tiny_recipe(tmp_path, checkpoint, data, **sections)
    recipe["task"] = dict(task)
    recipe["rewards"] = list(rewards)
    recipe["data"]["split"] = {"validation": 0, "test": 0, "seed": 1}
    recipe["eval"]["after_train"] = False
    return recipe


def logged(run_dir, key):
    rows = [json.loads(line) for line in run_dir.train_log.read_text().splitlines()]
    return [row[key] for row in rows if key in row]


REWARD_KEY = {"grpo": "rewards/letters/mean", "rloo": "rewards/letters/mean", "ppo": "reward"}
LORA = {"name": "lora", "r": 8, "alpha": 16, "dropout": 0.0, "target_modules": "all-linear"}


@pytest.mark.parametrize("task, steps", [("grpo", 30), ("rloo", 30), ("ppo", 60)])
def test_online_rl_raises_a_toy_rule_reward(task, steps, sharp_checkpoint, prompts, tmp_path, home):
    recipe = online_recipe(tmp_path, sharp_checkpoint, prompts, TASKS[task], method=LORA,
                           train={"max_steps": steps, "lr": 1e-2, "batch_size": 8, "save_every": steps})
    run_dir = train_recipe(recipe, home)
    record = run_record(run_dir)
    assert record.task == task and record.status == "completed" and record.training.steps == steps
    assert record.data.splits["train"].kept == 48 and record.task_state["rewards"][0]["name"] == "letters"
    rewards = logged(run_dir, REWARD_KEY[task])
    first, last = sum(rewards[:6]) / 6, sum(rewards[-6:]) / 6
    assert last > 3 * first and last > 0.4, (first, last)


@pytest.mark.parametrize("task", ["grpo", "rloo", "ppo"])
def test_resume_gives_the_weights_of_an_uninterrupted_run(task, tiny_checkpoint, prompts, tmp_path, home):
    """Stopped at step 3 and resumed to 6; for ppo (a rollout every 2 steps) step 3 falls inside a rollout, which
    the checkpoint keeps."""
    train = {"max_steps": 6, "batch_size": 8, "save_every": 3}
    whole = train_recipe(online_recipe(tmp_path / "a", tiny_checkpoint, prompts, TASKS[task], train=train), home)
    recipe = online_recipe(tmp_path / "b", tiny_checkpoint, prompts, TASKS[task], train=train)
    part = train_recipe(recipe, home, callbacks=(StopAt(3),))
    assert run_record(part).training.steps == 3
    resumed = train_recipe(recipe, home, resume=True)
    assert run_record(resumed).training.steps == 6
    first, second = adapter_weights(whole), adapter_weights(resumed)
    assert first.keys() == second.keys()
    for name in first:
        assert torch.equal(first[name], second[name]), name


@pytest.mark.parametrize("task", [{**TASKS["grpo"], "beta": 0.1}, TASKS["rloo"]], ids=["grpo", "rloo"])
def test_the_lora_reference_is_the_base_weights_with_the_adapter_off(task, tiny_checkpoint, prompts, tmp_path,
                                                                     home):
    """With beta > 0, TRL holds no reference model and the policy one adapter: the reference pass disables it."""
    from rich.console import Console
    from transformers import AutoModelForCausalLM, TrainerCallback

    from tunelab.config.load import validate_recipe
    from tunelab.run.folder import RunDir
    from tunelab.tasks.base import TrainerParts
    from tunelab.tasks.registry import get_task
    from tunelab.train.lifecycle import build_model, set_up
    from tunelab.train.trainer import training_arguments, training_callbacks

    recipe = validate_recipe(online_recipe(tmp_path, tiny_checkpoint, prompts, task))
    setup = set_up(recipe, home, Console(quiet=True), resume=False, overwrite=False, device="cpu")
    run = RunDir(tmp_path / "run")
    parts = TrainerParts(build_model(setup), setup.tokenizer, setup.data,
                         training_arguments(recipe.train, run, setup.placement, has_validation=False),
                         training_callbacks(recipe.train, run, TrainerCallback()))
    trainer = get_task(task["name"]).build_trainer(parts)
    assert trainer.beta > 0 and trainer.ref_model is None and list(trainer.model.peft_config) == ["default"]
    base = AutoModelForCausalLM.from_pretrained(str(tiny_checkpoint))
    lora = sum(p.numel() for name, p in trainer.model.named_parameters() if "lora_" in name)
    assert sum(p.numel() for p in trainer.model.parameters()) == sum(p.numel() for p in base.parameters()) + lora
    with torch.no_grad():
        for name, parameter in trainer.model.named_parameters():
            if "lora_B" in name:
                parameter.add_(0.5)
        ids = torch.tensor([[5, 6, 7, 8, 9]])
        with trainer.model.disable_adapter():
            reference = trainer.model(input_ids=ids).logits
        assert torch.allclose(reference, base(input_ids=ids).logits, atol=1e-6)
        assert not torch.allclose(trainer.model(input_ids=ids).logits, reference, atol=1e-4)


# ---- refused in one line, exit 2, nothing written ----------------------------------------------------------------

BAD_REWARD_FILE = "def letters(prompts, completions):\n    return [0.0 for _ in completions]\n"


@pytest.mark.parametrize("task, change, message", [
    ("grpo", {"rewards": []}, "rewards: task grpo learns from what its rewards say of its answers, and the recipe "
                              "names none"),
    ("rloo", {"rewards": [{"type": "function", "function": "missing.py:letters"}]},
     "missing.py: reward file not found"),
    ("ppo", {"rewards": [{"type": "function", "function": "{tmp}/bad.py:letters"}]},
     "a reward function takes (prompts, completions, **kwargs)"),
    ("grpo", {"rewards": [{"type": "string_check", "name": "exact", "input": "{{ sample.output_text }}",
                           "reference": "{{ item.answer }}", "operation": "eq"}]},
     "rewards[0] (string_check 'exact') reads item.answer, and 48 of 48 row(s) have no 'answer'"),
    ("ppo", {"method": {"name": "full"}}, "method: task ppo's reference is the model with its adapter disabled"),
    ("grpo", {"task": {"name": "grpo", "num_generations": 3}},
     "task.num_generations: 3 answers per prompt do not divide a generation batch of train.batch_size * "
     "train.grad_accum = 8 answers"),
    ("rloo", {"data": {"train": "{chat}"}}, "'chat' row(s), and task 'rloo' trains on prompt rows"),
])
def test_bad_input_is_one_line_exit_2_and_nothing_written(task, change, message, capsys, tmp_path, home,
                                                         tiny_checkpoint, prompts, reverse_data):
    import yaml

    from tests.unit.test_cli import invoke, one_error_line, write_recipe

    (tmp_path / "bad.py").write_text(BAD_REWARD_FILE)
    recipe = online_recipe(tmp_path, tiny_checkpoint, prompts, TASKS[task], train={"batch_size": 8})
    for key, value in yaml.safe_load(yaml.safe_dump(change).replace("{tmp}", str(tmp_path))
                                     .replace("'{chat}'", str(reverse_data))).items():
        if isinstance(value, dict) and key in ("data",):
            recipe[key].update(value)
        else:
            recipe[key] = value
    given = prompts.read_bytes()
    code, _, err = invoke(capsys, "train", str(write_recipe(tmp_path, recipe)))
    assert code == 2, err
    assert message in one_error_line(err)
    assert not (tmp_path / "run").exists() and prompts.read_bytes() == given
