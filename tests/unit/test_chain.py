"""Chained runs (model.from_run) on a tiny model: sft, then dpo and reward_model starting from the sft run's tuned
weights. The chained run's base is that checkpoint everywhere (training, evaluation's base side, generate --base),
held once in memory with LoRA; an unmerged start is merged once into the cache; bad starts are one line, exit 2."""

import json
import shutil

import pytest
import torch
import yaml
from rich.console import Console
from safetensors.torch import load_file

from tests.conftest import reverse_rows, run_record, tiny_recipe, train_recipe, write_jsonl
from tests.unit.test_cli import invoke, one_error_line
from tests.unit.test_dpo import planted_pairs
from tunelab.config.load import validate_recipe
from tunelab.run.models import open_run_models

QUIET = Console(quiet=True)


@pytest.fixture(scope="module")
def chain(tmp_path_factory, tiny_checkpoint):
    """An sft run (high learning rate, so its tuned weights are far from the base) and its data, home, folders."""
    root = tmp_path_factory.mktemp("chain")
    home = root / "home"
    recipe = tiny_recipe(root / "sft", tiny_checkpoint, write_jsonl(root / "reverse.jsonl", reverse_rows(40)),
                         train={"max_steps": 4, "lr": 5e-2})
    sft = train_recipe(recipe, home)
    return {"root": root, "home": home, "sft": sft, "pairs": write_jsonl(root / "pairs.jsonl", planted_pairs(40)),
            "checkpoint": tiny_checkpoint}


def chained_recipe(chain, folder, task="dpo", from_run=None, **sections):
    recipe = tiny_recipe(chain["root"] / folder, chain["checkpoint"], chain["pairs"], **sections)
    recipe["task"] = {"name": task}
    recipe["model"] = {"from_run": str(from_run or chain["sft"].root)}  # model.name left out: taken from the run
    recipe["train"]["max_steps"] = 2
    recipe["eval"]["forgetting"] = {"enabled": False}
    return recipe


@pytest.fixture(scope="module")
def dpo_run(chain):
    return train_recipe(chained_recipe(chain, "dpo"), chain["home"])


def merged_weights(run_dir):
    return load_file(str(run_dir.root / "merged" / "model.safetensors"))


def moved_tensor(chain):
    """A weight the sft run changed: the test that a model holds the sft run's weights cannot pass on the base's."""
    merged, base = merged_weights(chain["sft"]), load_file(str(chain["checkpoint"] / "model.safetensors"))
    name = next(name for name in merged if not torch.equal(merged[name], base[name]))
    return name, merged[name]


def test_dpo_from_an_sft_run_records_its_start_and_loads_it_as_its_base(chain, dpo_run):
    record = run_record(dpo_run)
    start = record.started_from
    sft_merged = chain["sft"].root / "merged"
    assert record.status == "completed" and start.run == str(chain["sft"].root) and start.task == "sft"
    assert start.checkpoint == str(sft_merged) and start.base_model == str(chain["checkpoint"])
    assert list(start.sha256) == ["model.safetensors"] and len(start.sha256["model.safetensors"]) == 64
    assert record.base_model.kind == "run" and record.base_model.path == str(sft_merged)
    assert record.recipe["model"] == {"name": str(chain["checkpoint"]), "from_run": str(chain["sft"].root),
                                      "chat_template": None}  # the root of the chain, filled in from the sft run
    name, tensor = moved_tensor(chain)
    models = open_run_models(dpo_run.root, chain["home"], "cpu")
    assert models.base_path() == sft_merged
    assert torch.equal(models.causal_lm().state_dict()[name], tensor)


def test_evaluation_compares_with_the_starting_model(chain, dpo_run):
    """The base side of the chained run's evaluation is the sft run's tuned model: the same margins on every pair."""
    from tunelab.data.dataset import read_splits
    from tunelab.evaluate.outputs import load_outputs
    from tunelab.evaluate.preference import preference_outputs
    from tunelab.train.lifecycle import evaluate_and_record

    evaluate_and_record(dpo_run.root, chain["home"], QUIET, "cpu")
    base = load_outputs(dpo_run.model_outputs("base"))
    sft = open_run_models(chain["sft"].root, chain["home"], "cpu")
    pairs = read_splits(dpo_run.data).test
    tuned_sft = preference_outputs(sft.inference().load_tuned(), sft.tokenizer(), pairs, 64, 8, sft.placement)
    original = open_run_models(chain["sft"].root, chain["home"], "cpu").inference().load_base()
    from_base = preference_outputs(original, sft.tokenizer(), pairs, 64, 8, sft.placement)
    assert base.margins == pytest.approx(tuned_sft.margins, abs=1e-4)
    assert base.losses[0][0] == pytest.approx(tuned_sft.losses[0][0], abs=1e-4)
    assert base.margins != pytest.approx(from_base.margins, abs=1e-2)  # and not the original base's


def test_generate_base_of_the_chained_run_loads_the_sft_runs_tuned_model(chain, dpo_run, capsys, monkeypatch):
    """`generate --base` of the chained run answers with the model it started from (the tiny random model's greedy
    answers are too alike to tell models apart, so its loader's weights are compared too)."""
    from tunelab.cli.run import text_model

    monkeypatch.setenv("TUNELAB_HOME", str(chain["home"]))
    code, _, err = invoke(capsys, "generate", str(dpo_run.root), "abcd", "--base", "--max-new-tokens", "4")
    assert code == 0, err
    _, model, _ = text_model(dpo_run.root, True, "cpu")
    name, tensor = moved_tensor(chain)
    assert torch.equal(model.state_dict()[name], tensor)


def test_serve_holds_the_starting_model_as_the_base_of_a_chained_adapter(chain, dpo_run, tmp_path):
    """Given the chained run alone, the server's base is the sft run's merged model (its id names the run), and the
    chained run's adapter on the original base is refused naming the start."""
    from tunelab.errors import TunelabError
    from tunelab.serve.server import build_service
    from tunelab.serve.settings import ServeSettings

    service = build_service([f"dpo={dpo_run.root}"], None, ServeSettings(serve_dir=tmp_path / "s"), chain["home"],
                            say=lambda _: None)
    try:
        assert service.registry.base.id == "run-merged" and service.registry.base.root == str(chain["sft"].root /
                                                                                                "merged")
        assert set(service.registry.ids()) == {"run-merged", "dpo"}
    finally:
        service.close()
    with pytest.raises(TunelabError, match=r"trained on base model '.*sft/run/merged', but the server holds"):
        build_service([str(dpo_run.root)], str(chain["checkpoint"]), ServeSettings(serve_dir=tmp_path / "t"),
                      chain["home"], say=lambda _: None)


def unique_storage(model):
    """(parameters, elements) over distinct storages: a second copy of the base weights would double them."""
    seen, elements = set(), 0
    for parameter in model.parameters():
        pointer = parameter.untyped_storage().data_ptr()
        if pointer not in seen:
            seen.add(pointer)
            elements += parameter.numel()
    return len(seen), elements


def dpo_trainer(recipe, home, folder):
    from transformers import TrainerCallback

    from tunelab.run.folder import RunDir
    from tunelab.tasks.base import TrainerParts
    from tunelab.tasks.dpo import build_trainer
    from tunelab.train.lifecycle import build_model, set_up
    from tunelab.train.trainer import training_arguments, training_callbacks

    setup = set_up(validate_recipe(recipe), home, QUIET, resume=False, overwrite=False, device="cpu")
    run = RunDir(folder)
    arguments = training_arguments(setup.recipe.train, run, setup.placement, has_validation=True)
    model = build_model(setup)
    return build_trainer(TrainerParts(model, setup.tokenizer, setup.data, arguments,
                                      training_callbacks(setup.recipe.train, run, TrainerCallback())))


def test_a_chained_lora_run_holds_base_and_adapter_once(chain):
    """With LoRA the chained run's trainer holds the starting weights and the adapter, nothing more: as many
    parameters and distinct storages as a run from the base checkpoint itself, and TRL holds no reference model."""
    chained = dpo_trainer(chained_recipe(chain, "memory-chained"), chain["home"], chain["root"] / "m1")
    plain_recipe = chained_recipe(chain, "memory-plain")
    plain_recipe["model"] = {"name": str(chain["checkpoint"])}
    plain = dpo_trainer(plain_recipe, chain["home"], chain["root"] / "m2")
    assert chained.ref_model is None and plain.ref_model is None
    assert list(chained.model.peft_config) == ["default"]
    counts = unique_storage(chained.model)
    assert counts == unique_storage(plain.model)
    assert counts[1] == sum(parameter.numel() for parameter in chained.model.parameters())  # no tensor twice
    name, tensor = moved_tensor(chain)
    weights = {key.replace(".base_layer", ""): value
               for key, value in chained.model.get_base_model().state_dict().items()}
    assert torch.equal(weights[name], tensor)  # the base under the adapter is the sft run's merged model


def test_a_reward_model_starts_from_an_sft_run_with_a_fresh_head(chain):
    run_dir = train_recipe(chained_recipe(chain, "reward", task="reward_model"), chain["home"])
    record = run_record(run_dir)
    assert record.started_from.checkpoint == str(chain["sft"].root / "merged") and record.task == "reward_model"
    base = open_run_models(run_dir.root, chain["home"], "cpu").inference().load_base()
    name, tensor = moved_tensor(chain)
    backbone = dict(base.named_parameters())
    assert torch.equal(backbone[name], tensor)
    assert base.score.weight.shape[0] == 1  # the reward head: one number


def test_an_unmerged_start_is_merged_once_into_the_cache(chain):
    from tunelab.methods.registry import get_method
    from tunelab.run.chain import recipe_base

    recipe = tiny_recipe(chain["root"] / "sft-unmerged", chain["checkpoint"], chain["root"] / "reverse.jsonl",
                         train={"max_steps": 2, "lr": 5e-2}, output={"merge": False})
    sft = train_recipe(recipe, chain["home"])
    assert not (sft.root / "merged").exists()
    chained = validate_recipe(chained_recipe(chain, "dpo-unmerged", from_run=sft.root))
    from tunelab.run.chain import chained_recipe as fill

    ref, start = recipe_base(fill(chained, chain["home"]), chain["home"])
    assert ref.path.parent == chain["home"] / "models" and ref.path.name.startswith("run-")
    models = open_run_models(sft.root, chain["home"], "cpu")
    expected = get_method("lora").merge(models.inference().load_tuned()).state_dict()
    saved = load_file(str(ref.path / "model.safetensors"))
    assert all(torch.allclose(saved[name], expected[name]) for name in saved)
    assert (ref.path / "tokenizer_config.json").is_file()
    again, start_again = recipe_base(fill(chained, chain["home"]), chain["home"])
    assert again.path == ref.path and start_again.sha256 == start.sha256


# ---- bad starts: one line, exit 2, nothing changed ----------------------------------------------------------------


def write_recipe(path, recipe):
    path.write_text(yaml.safe_dump(recipe))
    return path


def copied_run(chain, name, task=None, method=None):
    """A copy of the sft run, its record changed as a run of another task or method would have it."""
    folder = chain["root"] / name
    shutil.copytree(chain["sft"].root, folder)
    record = json.loads((folder / "run.json").read_text())
    if task:
        record["task"] = record["recipe"]["task"]["name"] = task
    if method:
        record["method"]["name"], record["recipe"]["method"], record["merged"] = method, {"name": method}, False
        shutil.rmtree(folder / "merged")
    (folder / "run.json").write_text(json.dumps(record))
    return folder


def refused(chain, capsys, monkeypatch, recipe, name):
    monkeypatch.setenv("TUNELAB_HOME", str(chain["home"]))
    sft_files = {path: path.read_bytes() for path in (chain["sft"].root / "run.json",
                                                        chain["sft"].root / "merged" / "model.safetensors")}
    code, _, err = invoke(capsys, "train", str(write_recipe(chain["root"] / f"{name}.yaml", recipe)))
    assert code == 2
    assert not (chain["root"] / name / "run").exists()  # nothing written
    assert all(path.read_bytes() == data for path, data in sft_files.items())  # the earlier run untouched
    return one_error_line(err)


def test_bad_starts_are_one_line_each(chain, capsys, monkeypatch):
    not_a_run = chain["root"] / "not-a-run"
    not_a_run.mkdir(exist_ok=True)
    line = refused(chain, capsys, monkeypatch, chained_recipe(chain, "bad1", from_run=not_a_run), "bad1")
    assert f"model.from_run: {not_a_run}: not a tunelab run folder (no run.json)" in line

    failed = copied_run(chain, "failed-run")
    record = json.loads((failed / "run.json").read_text())
    (failed / "run.json").write_text(json.dumps({**record, "status": "failed"}))
    line = refused(chain, capsys, monkeypatch, chained_recipe(chain, "bad2", from_run=failed), "bad2")
    assert "the run did not complete (status: failed)" in line

    other_base = chained_recipe(chain, "bad3")
    other_base["model"]["name"] = "smollm2-135m-instruct"
    line = refused(chain, capsys, monkeypatch, other_base, "bad3")
    assert f"that run's base model is '{chain['checkpoint']}', but model.name says 'smollm2-135m-instruct'" in line

    reward = copied_run(chain, "reward-run", task="reward_model")
    line = refused(chain, capsys, monkeypatch, chained_recipe(chain, "bad4", from_run=reward), "bad4")
    assert "a reward_model run is no starting model: its model is a reward model" in line

    prefix = copied_run(chain, "prefix-run", method="prefix")
    line = refused(chain, capsys, monkeypatch, chained_recipe(chain, "bad5", from_run=prefix), "bad5")
    assert "method 'prefix' cannot be merged into the base weights" in line

    itself = chained_recipe(chain, "bad6")
    itself["model"]["from_run"] = itself["output"]["dir"]
    (chain["root"] / "bad6" / "run").mkdir(parents=True)
    (chain["root"] / "bad6" / "run" / "run.json").write_text((chain["sft"].root / "run.json").read_text())
    code, _, err = invoke(capsys, "train", str(write_recipe(chain["root"] / "bad6.yaml", itself)))
    assert code == 2 and "a run cannot start from itself" in one_error_line(err)


def test_a_start_changed_after_training_is_refused_in_one_line(chain, dpo_run, capsys, monkeypatch):
    monkeypatch.setenv("TUNELAB_HOME", str(chain["home"]))
    weights = chain["sft"].root / "merged" / "model.safetensors"
    original = weights.read_bytes()
    tensors = load_file(str(weights))
    name = next(iter(tensors))
    tensors[name] = tensors[name] + 1
    from safetensors.torch import save_file

    save_file(tensors, str(weights), metadata={"format": "pt"})
    try:
        code, _, err = invoke(capsys, "generate", str(dpo_run.root), "abcd", "--base")
        line = one_error_line(err)
        assert code == 2 and f"its starting model {weights.parent} changed since the run trained from it" in line
        assert "sha256 of model.safetensors differs" in line
    finally:
        weights.write_bytes(original)


def test_resume_goes_on_from_the_same_start_or_is_refused(chain):
    from safetensors.torch import save_file

    from tests.unit.test_training import StopAt
    from tunelab.errors import TunelabError

    recipe = chained_recipe(chain, "dpo-resume", train={"save_every": 1, "eval_every": 1})
    part = train_recipe(recipe, chain["home"], callbacks=(StopAt(1),))
    assert run_record(part).training.steps == 1
    weights = chain["sft"].root / "merged" / "model.safetensors"
    original = weights.read_bytes()
    tensors = load_file(str(weights))
    save_file({name: tensor * 2 for name, tensor in tensors.items()}, str(weights), metadata={"format": "pt"})
    try:
        with pytest.raises(TunelabError, match=r"--resume: the starting model from .* changed since the run started"):
            train_recipe(recipe, chain["home"], resume=True)
    finally:
        weights.write_bytes(original)
    resumed = train_recipe(recipe, chain["home"], resume=True)
    record = run_record(resumed)
    assert record.training.steps == 2 and record.started_from.checkpoint == str(weights.parent)


def test_a_chained_run_is_also_judged_against_the_chains_root_base(chain, tmp_path):
    """With rewards, a chained run's evaluation compares its answers with its start (the base side) and, in
    details.over_root_base, with the root base model's: the root answers the same prompts, the same rewards judge it,
    and the win rate is the tuned model's per-row rewards against those."""
    from tunelab.evaluate.outputs import load_outputs
    from tunelab.train.lifecycle import evaluate_and_record

    recipe = chained_recipe(chain, "judged")
    recipe["rewards"] = [{"type": "text_similarity", "name": "close", "input": "{{ sample.output_text }}",
                          "reference": "{{ item.chosen }}", "evaluation_metric": "fuzzy_match"}]
    run = train_recipe(recipe, chain["home"])
    evaluation = evaluate_and_record(run.root, chain["home"], QUIET, "cpu")
    root = evaluation.details["over_root_base"]
    tuned = load_outputs(run.model_outputs("tuned")).rewards
    wins = [1.0 if mine > theirs else 0.5 if mine == theirs else 0.0 for mine, theirs in zip(tuned, root["rewards"])]
    assert root["model"] == str(chain["checkpoint"]) and len(root["rewards"]) == evaluation.rows
    assert root["win_rate"] == pytest.approx(sum(wins) / len(wins))
    assert root["interval"][0] <= root["win_rate"] <= root["interval"][1]
    assert "over_root_base" not in evaluate_and_record(chain["sft"].root, chain["home"], QUIET, "cpu").details
