"""Metrics from per-row statistics, checked by hand and against sacrebleu, rouge-score and scikit-learn."""

import json
import math
import random

import numpy as np
import pytest
import sacrebleu
from rouge_score import rouge_scorer

from tests.conftest import SHARED_DATA
from tunelab.config.schema import EvalSection
from tunelab.data.formats import Example
from tunelab.errors import TunelabError
from tunelab.metrics import registry
from tunelab.metrics.rows import label_metrics, normalize_text


def plan_evaluation(test, section, objective):
    """The plan a task makes for these test rows (sft for conversations and text, classification for labels)."""
    from tests.tiny import tiny_tokenizer
    from tunelab.config.schema import Recipe

    kinds = {example.kind for example in test}
    task = {"name": "classification"} if kinds == {"label"} else {"name": "sft"}
    recipe = Recipe.model_validate({"data": {"train": "unused.jsonl"}, "task": task,
                                    "eval": section.model_dump(), "objective": objective and objective.model_dump()})
    labels = sorted({example.label for example in test if example.label})
    state = {"style": "head", "labels": labels, "train_counts": {label: 1 for label in labels}}
    from tunelab.tasks.registry import get_task

    return get_task(task["name"]).evaluation(recipe, test, state, tiny_tokenizer(), "test split").plan

HYPOTHESES = ["the cat sat on the mat", "a quick brown fox jumps", "print(x)", "", "hello world again and again"]
REFERENCES = ["the cat is on the mat", "the quick brown fox jumped", "print(x)", "nothing here", "hello world"]


def score(name, predictions, references, losses=None, labels=()):
    inputs = registry.RowInputs(predictions, references, losses, labels)
    return registry.scores(registry.row_statistics([name], inputs))[name]


def test_normalized_match_by_hand():
    assert normalize_text("  Hello,\n  WORLD. ") == "hello, world"
    assert score("normalized_match", ["Paris.", "paris", "Pa ris", "ＰＡＲＩＳ"], ["paris"] * 4) == 0.75  # NFKC folds
    assert score("exact_match", [" paris ", "Paris"], ["paris", "paris"]) == 0.5


def test_json_metrics_by_hand():
    references = ['{"a": 1, "b": "x"}', '{"a": 2, "b": "y"}', '{"a": 3, "b": "z"}']
    predictions = ['{"b": "x", "a": 1}', '{"a": 2, "b": "Y", "c": 0}', "sorry, no JSON"]
    assert score("valid_json", predictions, references) == pytest.approx(2 / 3)
    assert score("json_match", predictions, references) == pytest.approx(1 / 3)  # key order does not matter
    # fields right: 2 + 1 + 0 out of 6
    assert score("json_field_accuracy", predictions, references) == pytest.approx(3 / 6)
    inputs = registry.RowInputs(predictions, references)
    assert registry.json_field_details(inputs) == {"a": pytest.approx(2 / 3), "b": pytest.approx(1 / 3)}


def test_loss_and_perplexity_by_hand():
    losses = [(2.0, 4), (1.0, 1)]  # 3 nats over 5 tokens
    assert score("loss", ["", ""], ["a", "b"], losses) == pytest.approx(0.6)
    assert score("perplexity", ["", ""], ["a", "b"], losses) == pytest.approx(math.exp(0.6))


def test_bleu_and_chrf_match_sacrebleu():
    assert score("bleu", HYPOTHESES, REFERENCES) == pytest.approx(sacrebleu.corpus_bleu(HYPOTHESES,
                                                                                        [REFERENCES]).score)
    assert score("chrf", HYPOTHESES, REFERENCES) == pytest.approx(sacrebleu.corpus_chrf(HYPOTHESES,
                                                                                        [REFERENCES]).score)
    assert score("bleu", REFERENCES, REFERENCES) == pytest.approx(100)


def test_resampled_bleu_is_corpus_bleu_of_the_resampled_rows():
    """A bootstrap resample scores the draw-weighted sum of row statistics: that must equal sacrebleu's corpus BLEU
    of the rows repeated as drawn, so intervals of corpus metrics are exact."""
    stats = registry.row_statistics(["bleu"], registry.RowInputs(HYPOTHESES, REFERENCES))["bleu"]
    counts = np.array([3, 0, 1, 2, 1])
    repeated = [i for i, count in enumerate(counts) for _ in range(count)]
    expected = sacrebleu.corpus_bleu([HYPOTHESES[i] for i in repeated], [[REFERENCES[i] for i in repeated]]).score
    assert registry.METRICS["bleu"].score(counts @ stats) == pytest.approx(expected)


def test_rouge_by_hand_and_against_rouge_score():
    # unigrams: the x2, cat, on, mat shared -> 5/6; bigrams: "the cat", "on the", "the mat" shared -> 3/5
    assert score("rouge1", [HYPOTHESES[0]], [REFERENCES[0]]) == pytest.approx(5 / 6)
    assert score("rouge2", [HYPOTHESES[0]], [REFERENCES[0]]) == pytest.approx(3 / 5)
    scorer = rouge_scorer.RougeScorer(["rougeL"])
    expected = np.mean([scorer.score(r, h)["rougeL"].fmeasure for h, r in zip(HYPOTHESES, REFERENCES)])
    assert score("rougeL", HYPOTHESES, REFERENCES) == pytest.approx(expected)


def test_label_metrics_from_confusion_cells_match_scikit_learn():
    rng = random.Random(3)
    labels = ("billing", "bug", "praise")
    references = [rng.choice(labels) for _ in range(120)]
    # mostly right, some confused, some answers that are no class at all
    predictions = [r if rng.random() < 0.6 else rng.choice([*labels, "I am not sure", "other stuff"])
                   for r in references]
    mapped = [p if p in labels else registry.OTHER_LABEL for p in predictions]
    expected = label_metrics(mapped, references, labels=list(labels))
    for name, key in (("accuracy", "accuracy"), ("precision", "precision"), ("recall", "recall"),
                      ("f1", "f1"), ("mcc", "mcc")):
        assert score(name, predictions, references, labels=labels) == pytest.approx(expected[key]), name


def test_label_metrics_by_hand():
    references = ["spam", "spam", "ham", "ham", "ham", "ham"]
    predictions = ["spam", "ham", "ham", "ham", "spam", "ham"]
    labels = ("ham", "spam")
    assert score("f1", predictions, references, labels=labels) == pytest.approx(0.625)
    assert score("mcc", predictions, references, labels=labels) == pytest.approx(2 / 8)
    details = registry.label_details(registry.RowInputs(predictions + ["maybe"], references + ["spam"], None, labels))
    assert details["confusion"] == [[3, 1, 0], [1, 1, 1]] and details["confusion_columns"][-1] == "(other)"


def test_default_metrics_by_data_format():
    assert "json_field_accuracy" in registry.default_metrics("chat", ['{"a": 1}', '{"a": 2}'])
    assert "bleu" in registry.default_metrics("chat", ["x = 1", "print(y)"])
    assert "f1" in registry.default_metrics("chat", ["spam", "ham", "ham", "spam", "ham"])
    assert registry.default_metrics("label", ["a", "b"]) == ["accuracy", "precision", "recall", "f1", "mcc"]


def chat_rows(answers):
    return [Example("t.jsonl", i + 1, messages=[{"role": "user", "content": f"q{i}"},
                                                 {"role": "assistant", "content": a}]) for i, a in enumerate(answers)]


def test_metric_that_does_not_fit_is_refused_with_a_suggestion():
    labels = [Example("t.csv", i + 1, text=f"msg {i}", label=label) for i, label in enumerate(["spam", "ham"] * 3)]
    with pytest.raises(TunelabError, match=r"'bleu' does not fit label rows \(classification\); use accuracy"):
        plan_evaluation(labels, EvalSection(metrics=["bleu"]), None)
    with pytest.raises(TunelabError, match=r"'valid_json' needs reference answers that are JSON.*use exact_match"):
        plan_evaluation(chat_rows(["x = 1", "y"]), EvalSection(metrics=["valid_json"]), None)
    with pytest.raises(TunelabError, match="unknown metric 'blue'; did you mean 'bleu'"):
        registry.resolve_name("blue")


def test_text_rows_are_scored_by_loss_and_empty_references_are_refused():
    texts = [Example("t.jsonl", 1, text="just text")]
    plan = plan_evaluation(texts, EvalSection(), None)
    assert plan.kind == "text" and plan.metrics == ["loss", "perplexity"] and plan.correctness is None
    with pytest.raises(TunelabError, match=r"'bleu' does not fit plain-text rows"):
        plan_evaluation(texts, EvalSection(metrics=["bleu"]), None)
    with pytest.raises(TunelabError, match=r"t.jsonl:2: 1 test row\(s\) have an empty reference answer"):
        plan_evaluation(chat_rows(["fine", "  "]), EvalSection(), None)


def test_objective_metric_is_always_computed():
    from tunelab.config.schema import ObjectiveSection

    plan = plan_evaluation(chat_rows(["a b", "c d"]), EvalSection(metrics=["bleu"]),
                           ObjectiveSection(metric="rougeL", min=0.1))
    assert plan.metrics == ["loss", "perplexity", "bleu", "rougeL"] and plan.primary == "rougeL"


@pytest.mark.skipif(not (SHARED_DATA / "conala").is_dir(), reason="shared CoNaLa data not present (../shared/data)")
def test_bleu_on_conala_references_matches_sacrebleu():
    from tunelab.data.formats import to_examples
    from tunelab.data.readers import read_records

    fields = {"prompt": ["rewritten_intent", "intent"], "completion": "snippet"}
    examples = to_examples(read_records(SHARED_DATA / "conala" / "conala-test.json"), "auto", fields, None)
    references = [example.messages[-1]["content"] for example in examples]
    predictions = [json.dumps(reference)[1:-1] for reference in references]  # escaped quotes: a near miss
    assert len(references) == 500
    plan = plan_evaluation(examples, EvalSection(), None)
    assert plan.primary == "bleu"
    assert score("bleu", predictions, references) == pytest.approx(sacrebleu.corpus_bleu(predictions,
                                                                                         [references]).score)
