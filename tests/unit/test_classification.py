"""Classification on tiny models: an encoder with a head, a causal LM answering the label with decoding restricted to
the label set; metrics and one-line errors."""

import json

import pytest
import torch
from rich.console import Console

from tests.conftest import tiny_recipe, unique_words, write_jsonl
from tunelab.config.load import validate_recipe
from tunelab.errors import TunelabError
from tunelab.evaluate.classification import evaluate_classification, predict_by_label_scores
from tunelab.inference import open_run_models
from tunelab.train.classify import train

QUIET = Console(quiet=True)


@pytest.fixture(scope="module")
def tiny_encoder(tmp_path_factory):
    from tunelab.models.tiny import save_tiny_encoder_checkpoint

    return save_tiny_encoder_checkpoint(tmp_path_factory.mktemp("encoder") / "tiny-bert")


def vowel_rows(count, seed=0):
    """A learnable two-class task: does the word start with a vowel?"""
    return [{"text": word, "label": "vowel" if word[0] in "aeiou" else "consonant"}
            for word in unique_words(count, "aeioubcdfg", seed)]


@pytest.fixture
def vowel_data(tmp_path):
    return write_jsonl(tmp_path / "vowels.jsonl", vowel_rows(80))


def classification_recipe(tmp_path, checkpoint, data, method=None, train=None, **sections):
    recipe = tiny_recipe(tmp_path, checkpoint, data, method=method or {"name": "lora", "r": 4, "dropout": 0.0},
                         train={"max_steps": 6, "batch_size": 16, "lr": 5e-3, **(train or {})}, **sections)
    recipe["task"] = "classification"
    recipe["data"]["split"] = {"validation": 0.1, "test": 0.2, "seed": 1}
    return recipe


@pytest.mark.parametrize("method", [{"name": "lora", "r": 4, "dropout": 0.0}, {"name": "full"},
                                    {"name": "adapter", "size": 8}, {"name": "qlora", "r": 4, "dropout": 0.0}])
def test_encoder_with_a_head_trains_and_evaluates(method, tiny_encoder, vowel_data, tmp_path, home):
    recipe = validate_recipe(classification_recipe(tmp_path, tiny_encoder, vowel_data, method=method))
    run_dir = train(recipe, home, QUIET)
    record = run_dir.read_record()
    assert record["classification"] == {"style": "head", "labels": ["consonant", "vowel"],
                                        "train_counts": record["classification"]["train_counts"]}
    assert record["status"] == "completed"
    report = evaluate_classification(open_run_models(run_dir.root, home), QUIET)
    assert report["rows"] == 16 and report["labels"] == ["consonant", "vowel"]
    for model in ("base", "tuned", "majority"):
        assert set(report[model]) >= {"accuracy", "f1", "mcc", "per_class", "confusion"}
        assert sum(map(sum, report[model]["confusion"])) == 16
    assert report["majority"]["mcc"] == 0.0
    assert json.loads((run_dir.root / "eval.json").read_text())["tuned"]["accuracy"] == report["tuned"]["accuracy"]


def test_causal_lm_learns_to_answer_the_label(tiny_checkpoint, vowel_data, tmp_path, home):
    recipe = classification_recipe(tmp_path, tiny_checkpoint, vowel_data, train={"max_steps": 40, "lr": 1e-2},
                                   method={"name": "full"}, classification={"prompt": "{text}?"})
    run_dir = train(validate_recipe(recipe), home, QUIET)
    record = run_dir.read_record()
    assert record["classification"] == {"style": "generate", "labels": ["consonant", "vowel"]}
    test_rows = [json.loads(line) for line in (run_dir.data / "test.jsonl").read_text().splitlines()]
    assert test_rows[0]["messages"][-1]["content"] in ("consonant", "vowel")
    assert test_rows[0]["messages"][0]["content"].endswith("?")
    report = evaluate_classification(open_run_models(run_dir.root, home), QUIET)
    # Every prediction is a class (restricted decoding), and the tuned model beats the majority class.
    assert sum(map(sum, report["tuned"]["confusion"])) == report["rows"] == 16
    assert report["tuned"]["accuracy"] > report["majority"]["accuracy"]


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
    from tunelab.models.tiny import tiny_tokenizer

    tokenizer = tiny_tokenizer()
    ids = tokenizer.convert_tokens_to_ids
    # Likes the letters of "spam" and the end-of-turn token: "spam" wins over "ham" (h is disliked) and over
    # "spammy" ("m","y" follow where end-of-turn would: 'y' is disliked).
    liked = [ids(c) for c in "spam"] + [tokenizer.eos_token_id]
    model = PrefersTokens(len(tokenizer), liked)
    prompts = [[{"role": "user", "content": "win cash"}]]
    assert predict_by_label_scores(model, tokenizer, prompts, ["ham", "spam", "spammy"], 4, False) == ["spam"]
    model = PrefersTokens(len(tokenizer), [ids(c) for c in "ham"] + [tokenizer.eos_token_id])
    assert predict_by_label_scores(model, tokenizer, prompts, ["ham", "spam", "spammy"], 4, False) == ["ham"]


def test_held_out_label_outside_the_classes_is_one_clear_error(tiny_encoder, tmp_path, home):
    rows = vowel_rows(40)
    data = write_jsonl(tmp_path / "train.jsonl", rows)
    test = write_jsonl(tmp_path / "test.jsonl", [{"text": "zzz", "label": "other"}])
    recipe = classification_recipe(tmp_path, tiny_encoder, data)
    recipe["data"]["test"] = str(test)
    with pytest.raises(TunelabError, match=r"test.jsonl:1: label 'other' is not one of the classes "
                                           r"\(consonant, vowel\)"):
        train(validate_recipe(recipe), home, QUIET)
    assert not (tmp_path / "run").exists()


def test_generate_style_needs_a_causal_lm(tiny_encoder, vowel_data, tmp_path, home):
    recipe = classification_recipe(tmp_path, tiny_encoder, vowel_data, classification={"style": "generate"})
    with pytest.raises(TunelabError, match="classification.style: generate needs a causal LM"):
        train(validate_recipe(recipe), home, QUIET)


def test_cli_trains_evaluates_and_classifies(capsys, tiny_encoder, vowel_data, tmp_path, home):
    import yaml

    from tests.unit.test_cli import invoke, one_error_line

    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(classification_recipe(tmp_path, tiny_encoder, vowel_data)))
    code, out, err = invoke(capsys, "train", str(path))
    assert code == 0, err
    assert "mcc" in out and "f1 vowel" in out and "confusion (tuned" in out
    assert json.loads((tmp_path / "run" / "run.json").read_text())["evaluation"]["rows"] == 16
    code, out, err = invoke(capsys, "classify", str(tmp_path / "run"), "abc", "bcd")
    assert code == 0, err
    lines = out.strip().splitlines()
    assert [line.split("\t")[1] for line in lines] == ["abc", "bcd"]
    assert all(line.split("\t")[0] in ("consonant", "vowel") for line in lines)
    code, _, err = invoke(capsys, "generate", str(tmp_path / "run"), "abc")
    assert code == 2 and "use tunelab classify" in one_error_line(err)


def test_an_empty_split_encodes_to_no_rows():
    from tunelab.models.tiny import tiny_tokenizer
    from tunelab.train.classify import encode_rows

    dataset, counts = encode_rows([], tiny_tokenizer(), ["a", "b"], 16)
    assert len(dataset) == 0 and counts.kept == 0 and counts.tokens == 0
