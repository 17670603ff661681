"""Classification on tiny models: an encoder with a head, a causal LM answering the label with decoding restricted to
the label set; evaluated like every task (intervals, flips, forgetting, the gate, report.html); one-line errors."""

import json

import pytest
import torch
import yaml
from rich.console import Console

from tests.conftest import run_record, tiny_recipe, train_recipe, unique_words, write_jsonl
from tests.unit.test_cli import invoke, one_error_line
from tunelab.errors import TunelabError
from tunelab.evaluate.answers import label_answers
from tunelab.run.models import open_run_models
from tunelab.run.record import read_evaluation
from tunelab.train.lifecycle import evaluate_and_record

QUIET = Console(quiet=True)


@pytest.fixture(scope="module")
def tiny_encoder(tmp_path_factory):
    from tests.tiny import save_tiny_encoder_checkpoint

    return save_tiny_encoder_checkpoint(tmp_path_factory.mktemp("encoder") / "tiny-bert")


def vowel_rows(count, seed=0):
    """A learnable two-class task: does the word start with a vowel?"""
    return [{"text": word, "label": "vowel" if word[0] in "aeiou" else "consonant"}
            for word in unique_words(count, "aeioubcdfg", seed)]


@pytest.fixture
def vowel_data(tmp_path):
    return write_jsonl(tmp_path / "vowels.jsonl", vowel_rows(80))


def classification_recipe(tmp_path, checkpoint, data, method=None, train=None, task=None, **sections):
    recipe = tiny_recipe(tmp_path, checkpoint, data, method=method or {"name": "lora", "r": 4, "dropout": 0.0},
                         train={"max_steps": 6, "batch_size": 16, "lr": 5e-3, **(train or {})}, **sections)
    recipe["task"] = {"name": "classification", **(task or {})}
    recipe["data"]["split"] = {"validation": 0.1, "test": 0.2, "seed": 1}
    return recipe


def evaluate(run_dir, home, *overrides):
    return evaluate_and_record(run_dir.root, home, QUIET, "cpu", overrides=list(overrides))


@pytest.mark.parametrize("method", [{"name": "lora", "r": 4, "dropout": 0.0}, {"name": "full"},
                                    {"name": "adapter", "size": 8}, {"name": "qlora", "r": 4, "dropout": 0.0}])
def test_encoder_with_a_head_trains_and_evaluates(method, tiny_encoder, vowel_data, tmp_path, home):
    run_dir = train_recipe(classification_recipe(tmp_path, tiny_encoder, vowel_data, method=method), home)
    record = run_record(run_dir)
    assert record.task_state["style"] == "head" and record.task_state["labels"] == ["consonant", "vowel"]
    assert sum(record.task_state["train_counts"].values()) == record.data.splits["train"].rows == 56
    assert record.status == "completed" and record.padding_free is False
    evaluation = evaluate(run_dir, home)
    assert evaluation.rows == 16 and evaluation.kind == "label" and evaluation.primary_metric == "f1"
    for model in ("base", "tuned"):
        assert set(getattr(evaluation, model)) >= {"loss", "accuracy", "f1", "mcc"}
        assert sum(map(sum, evaluation.details[model]["labels"]["confusion"])) == 16
    assert evaluation.reference_points["majority"]["mcc"] == 0.0
    assert json.loads(run_dir.eval_json.read_text())["tuned"]["accuracy"] == evaluation.tuned["accuracy"]


def test_causal_lm_learns_to_answer_the_label(tiny_checkpoint, vowel_data, tmp_path, home):
    recipe = classification_recipe(tmp_path, tiny_checkpoint, vowel_data, train={"max_steps": 40, "lr": 1e-2},
                                   method={"name": "full"}, task={"prompt": "{text}?"})
    run_dir = train_recipe(recipe, home)
    record = run_record(run_dir)
    assert record.task_state["style"] == "generate" and record.task_state["labels"] == ["consonant", "vowel"]
    test_rows = [json.loads(line) for line in (run_dir.data / "test.jsonl").read_text().splitlines()]
    assert test_rows[0]["messages"][-1]["content"] in ("consonant", "vowel")
    assert test_rows[0]["messages"][0]["content"].endswith("?")
    evaluation = evaluate(run_dir, home)
    # Every prediction is a class (restricted decoding), and the tuned model beats the majority class.
    assert sum(map(sum, evaluation.details["tuned"]["labels"]["confusion"])) == evaluation.rows == 16
    assert evaluation.details["tuned"]["labels"]["confusion_columns"] == ["consonant", "vowel"]
    assert evaluation.tuned["accuracy"] > evaluation.reference_points["majority"]["accuracy"]
    assert evaluation.forgetting.measure == "perplexity"


def test_a_head_on_a_causal_lm(tiny_checkpoint, vowel_data, tmp_path, home):
    """The README's classification head on a causal LM: the last token's hidden state feeds the head."""
    recipe = classification_recipe(tmp_path, tiny_checkpoint, vowel_data, method={"name": "full"},
                                   train={"max_steps": 30, "lr": 1e-2}, task={"style": "head"})
    run_dir = train_recipe(recipe, home)
    assert run_record(run_dir).task_state["style"] == "head"
    evaluation = evaluate(run_dir, home)
    assert evaluation.forgetting.measure == "drift" and 0 < evaluation.forgetting.value < 1
    assert evaluation.tuned["loss"] < evaluation.base["loss"]
    saved = json.loads((run_dir.model / "config.json").read_text())
    assert saved["architectures"] == ["LlamaForSequenceClassification"] and saved["id2label"] == {
        "0": "consonant", "1": "vowel"}


class PrefersTokens(torch.nn.Module):
    """A fake causal LM whose next-token log-probabilities are fixed: it likes token ids in `liked`."""

    def __init__(self, vocab, liked):
        super().__init__()
        self.scores = torch.full((vocab,), -5.0)
        self.scores[liked] = 0.0
        self.weight = torch.nn.Parameter(torch.zeros(1))
        self.generation_config = type("G", (), {"eos_token_id": None})()

    def forward(self, input_ids, attention_mask=None):
        return type("Out", (), {"logits": self.scores.expand(*input_ids.shape, -1).clone()})()


def test_restricted_decoding_picks_the_most_probable_whole_label():
    from tests.tiny import tiny_tokenizer

    tokenizer = tiny_tokenizer()
    ids = tokenizer.convert_tokens_to_ids
    # Likes the letters of "spam" and the end-of-turn token: "spam" wins over "ham" (h is disliked) and over
    # "spammy" ("m","y" follow where end-of-turn would: 'y' is disliked).
    liked = [ids(c) for c in "spam"] + [tokenizer.eos_token_id]
    model = PrefersTokens(len(tokenizer), liked)
    prompts = [[{"role": "user", "content": "win cash"}]]
    labels = ["ham", "spam", "spammy"]
    assert label_answers(model, tokenizer, prompts, labels, ["spam"], 4, None).predictions == ["spam"]
    model = PrefersTokens(len(tokenizer), [ids(c) for c in "ham"] + [tokenizer.eos_token_id])
    outputs = label_answers(model, tokenizer, prompts, labels, ["spam"], 4, None)
    assert outputs.predictions == ["ham"]
    # the loss is the reference class's answer: 'spam' is disliked from its first letter on
    assert outputs.losses[0][0] > label_answers(model, tokenizer, prompts, labels, ["ham"], 4, None).losses[0][0]


def test_held_out_label_outside_the_classes_is_one_clear_error(tiny_encoder, tmp_path, home):
    data = write_jsonl(tmp_path / "train.jsonl", vowel_rows(40))
    test = write_jsonl(tmp_path / "test.jsonl", [{"text": "zzz", "label": "other"}])
    recipe = classification_recipe(tmp_path, tiny_encoder, data)
    recipe["data"]["test"] = str(test)
    with pytest.raises(TunelabError, match=r"test.jsonl:1: label 'other' is not one of the classes "
                                           r"\(consonant, vowel\)"):
        train_recipe(recipe, home)
    assert not (tmp_path / "run").exists()


def test_generate_style_needs_a_causal_lm(tiny_encoder, vowel_data, tmp_path, home):
    recipe = classification_recipe(tmp_path, tiny_encoder, vowel_data, task={"style": "generate"})
    with pytest.raises(TunelabError, match="task.style: generate needs a causal LM"):
        train_recipe(recipe, home)


def test_cli_trains_evaluates_and_classifies(capsys, tiny_encoder, vowel_data, tmp_path, home):
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(classification_recipe(tmp_path, tiny_encoder, vowel_data)))
    code, out, err = invoke(capsys, "train", str(path))
    assert code == 0, err
    assert "mcc" in out and "f1 vowel" in out and "confusion (tuned" in out and "majority" in out
    assert json.loads((tmp_path / "run" / "run.json").read_text())["evaluation"]["rows"] == 16
    run = tmp_path / "run"
    for extra in ((), ("--base",)):
        code, out, err = invoke(capsys, "classify", str(run), "abc", "bcd", *extra)
        assert code == 0, err
        lines = out.strip().splitlines()
        assert [line.split("\t")[1] for line in lines] == ["abc", "bcd"]
        assert all(line.split("\t")[0] in ("consonant", "vowel") for line in lines)
    # the CLI's classes are the ones the evaluation's model gives
    models = open_run_models(run, home, "cpu")
    inference = models.inference()
    expected = inference.classify(inference.load_tuned(), models.tokenizer(), ["abc", "bcd"])
    code, out, _ = invoke(capsys, "classify", str(run), "abc", "bcd")
    assert [line.split("\t")[0] for line in out.strip().splitlines()] == expected
    code, _, err = invoke(capsys, "generate", str(run), "abc")
    assert code == 2 and "writes no text; use tunelab classify" in one_error_line(err)


def test_an_empty_split_encodes_to_no_rows():
    from tests.tiny import tiny_tokenizer
    from tunelab.tasks.classification import encode_label_rows

    dataset, counts = encode_label_rows([], tiny_tokenizer(), ["a", "b"], 16)
    assert len(dataset) == 0 and counts.kept == 0 and counts.tokens == 0


# ---- defects of the classification path, each fixed by running it through the one lifecycle and evaluator ----


@pytest.fixture(scope="module")
def learned_head(tiny_encoder, tmp_path_factory):
    """A head classifier trained well enough to beat its untrained head clearly, with an objective that asks for a
    significant gain and bounded forgetting, trained and evaluated by `tunelab train`."""
    folder = tmp_path_factory.mktemp("learned-head")
    data = write_jsonl(folder / "vowels.jsonl", vowel_rows(200, seed=3))
    recipe = classification_recipe(folder, tiny_encoder, data, method={"name": "full"},
                                   train={"max_steps": 40, "lr": 5e-3, "batch_size": 16})
    recipe["objective"] = {"metric": "accuracy", "significant": True, "max_forgetting": 0.9}
    path = folder / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe))
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("TUNELAB_HOME", str(folder / "home"))
        from tunelab.cli import main

        try:
            main(["train", str(path)])
            code = 0
        except SystemExit as exit:
            code = exit.code
    return {"root": folder / "run", "code": code, "home": folder / "home"}


def test_a_significant_and_forgetting_objective_can_pass_for_classification(learned_head):
    """Before: every classification verdict failed `significant` ("no interval (eval.bootstrap: 0)") and
    `max_forgetting` ("not measured"), whatever the model did."""
    from tunelab.run.folder import RunDir

    evaluation = read_evaluation(RunDir(learned_head["root"]))
    checks = {check.check: check for check in evaluation.objective.checks}
    assert "eval.bootstrap" not in checks["significant"].text and checks["significant"].actual is not None
    low, _ = evaluation.intervals.delta["accuracy"]
    assert checks["significant"].ok == (low > 0) and checks["significant"].ok
    assert checks["max_forgetting"].ok and checks["max_forgetting"].actual == evaluation.forgetting.value
    assert evaluation.objective.met and learned_head["code"] == 0


def test_a_classification_run_has_a_report_and_tensorboard_files(learned_head):
    """Before: report.html always said it was not evaluated, and a head classifier wrote no TensorBoard files."""
    root = learned_head["root"]
    html = (root / "report.html").read_text()
    assert "No evaluation in this tunelab" not in html and "Confusion matrices" in html
    assert "Objective met" in html and "1 - cosine similarity of mean-pooled last hidden states" in html
    assert list((root / "tensorboard").glob("events.out.tfevents.*")), "no TensorBoard event file"


def test_eval_overrides_apply_to_a_classification_run(learned_head, tmp_path, capsys):
    """Before: `tunelab eval RUN eval.*=...` was ignored for classification runs."""
    import shutil

    root = tmp_path / "copy"
    shutil.copytree(learned_head["root"], root)
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("TUNELAB_HOME", str(learned_head["home"]))
        code, out, err = invoke(capsys, "eval", str(root), "eval.max_rows=5", "eval.bootstrap=0",
                                "eval.forgetting.enabled=false", "objective.max_forgetting=null")
    saved = json.loads((root / "eval.json").read_text())
    assert saved["rows"] == 5 and saved["intervals"] is None and saved["forgetting"] is None
    assert code == 3 and "gain has no interval (eval.bootstrap: 0)" in one_error_line(err)
