"""Robustness probe: perturbations are deterministic, each kind changes the text, only the user's text changes (never
a reference, a system prompt or a label), the rotation gives every kind rows, and the drop is computed in the right
direction (a loss going up is a drop) with a paired interval."""

import pytest

from tests.tiny import tiny_tokenizer
from tunelab.config.load import validate_recipe
from tunelab.data.formats import Example
from tunelab.evaluate.outputs import ModelOutputs
from tunelab.risks import robustness
from tunelab.risks.base import Bootstrap, RiskContext
from tunelab.risks.perturb import KINDS, perturb_example, perturb_text, user_text
from tunelab.tasks.registry import get_task

TEXT = "Please send 3.5 kg of rice to Anna, and call me before noon. The order number is 42!"
SYNONYMS = {"send": ["ship", "deliver"], "order": ["purchase"]}


@pytest.mark.parametrize("kind", KINDS)
def test_each_kind_changes_the_text_the_same_way_for_the_same_seed(kind):
    first = perturb_text(TEXT, kind, seed=7, synonyms=SYNONYMS)
    assert first is not None and first != TEXT
    assert perturb_text(TEXT, kind, seed=7, synonyms=SYNONYMS) == first
    # some seed gives another text for the kinds with choices to make
    if kind in ("typo", "whitespace", "greeting", "signature", "synonym"):
        assert len({perturb_text(TEXT, kind, seed, SYNONYMS) for seed in range(20)}) > 1


def test_kinds_keep_what_they_should():
    dropped = perturb_text(TEXT, "punctuation", 0)
    assert "3.5" in dropped and "," not in dropped and "!" not in dropped
    assert perturb_text("no marks here", "punctuation", 0) is None
    assert perturb_text('{"a": 1, "b": 2}', "reorder", 0) is None  # looks like data: left alone
    assert perturb_text("one clause only", "reorder", 0) is None
    assert perturb_text("First this. Then that.", "reorder", 0) == "Then that. First this."
    assert perturb_text("Send it now", "synonym", 0, SYNONYMS) in ("Ship it now", "Deliver it now")
    assert perturb_text("Send it now", "synonym", 0) is None  # no list given
    assert perturb_text(TEXT, "case", 0).lower() == TEXT.lower()


def chat(user, answer="the answer", system="Be brief."):
    return Example(source="test.jsonl", line=1, messages=[{"role": "system", "content": system},
                                                          {"role": "user", "content": user},
                                                          {"role": "assistant", "content": answer}])


def test_only_the_users_text_is_perturbed():
    row = chat(TEXT)
    for kind in KINDS:
        changed, used = perturb_example(row, [kind], 3, SYNONYMS)
        assert used == kind and user_text(changed) != TEXT
        assert changed.messages[0] == row.messages[0] and changed.messages[2] == row.messages[2]
    label = Example(source="t", line=2, text=TEXT, label="spam")
    changed, _ = perturb_example(label, ["typo"], 0)
    assert changed.label == "spam" and changed.text != TEXT
    assert perturb_example(Example(source="t", line=3, text="plain text row"), ["typo"], 0) is None


def context(test, objective=None, **risks):
    recipe = validate_recipe({"data": {"train": "x.jsonl"}, "objective": objective,
                              "eval": {"risks": {"robustness": risks}}})
    task = get_task("sft")
    tokenizer = tiny_tokenizer()
    spec = task.evaluation(recipe, test, {}, tokenizer, "test")
    return RiskContext(recipe=recipe, task=task, spec=spec, test=test, train=[], task_state={}, tokenizer=tokenizer,
                       run_root=None, writes_text=True), recipe.eval.risks.robustness


def test_rotation_gives_every_kind_rows_and_references_never_change():
    test = [chat(f"Order {i}: send {i} boxes, today. Thanks, Anna.", answer=f"ref {i}") for i in range(24)]
    ctx, options = context(test, synonyms=SYNONYMS, rows=24)
    plan = robustness.plan(ctx, options)
    assert plan.rows == 24
    kinds = [row["kind"] for row in plan.data["rows"]]
    assert set(kinds) == set(KINDS)
    assert plan.data["spec"].plan.references == [f"ref {i}" for i in range(24)]
    again = robustness.plan(*context(test, synonyms=SYNONYMS, rows=24))
    assert again.data["rows"] == plan.data["rows"]  # seeded
    other = robustness.plan(*context(test, synonyms=SYNONYMS, rows=24, seed=1))
    assert other.data["rows"] != plan.data["rows"]
    capped = robustness.plan(*context(test, rows=5, every_kind=True, synonyms=SYNONYMS))
    assert len({row["index"] for row in capped.data["rows"]}) == 5 and capped.rows == 5 * len(KINDS)


def outputs(predictions, losses=None):
    return ModelOutputs(predictions, losses or [(1.0, 1)] * len(predictions), [1] * len(predictions), {})


def test_the_drop_is_tuned_clean_minus_perturbed_with_a_paired_interval():
    test = [chat(f"Please send {i} boxes, today.", answer=f"ref {i}") for i in range(10)]
    ctx, options = context(test, objective={"metric": "exact_match", "min": 0})
    plan = robustness.plan(ctx, options)
    right = [f"ref {i}" for i in range(10)]
    half = right[:5] + ["wrong"] * 5
    clean = outputs(right)
    result = robustness.summarize(plan, {"perturbed": outputs(right).to_json()},
                                  {"perturbed": outputs(half).to_json()}, clean, clean, options,
                                  Bootstrap(200, 0.95, 0))
    assert result.details["metric"] == "exact_match"
    assert result.base == 0 and result.tuned == pytest.approx(0.5) and result.value == pytest.approx(0.5)
    low, high = result.interval
    assert 0 < low <= 0.5 <= high <= 1
    assert sum(entry["rows"] for entry in result.details["kinds"].values()) == 10
    assert all(example["tuned_perturbed"] == "wrong" for example in result.examples)


def test_a_loss_that_goes_up_is_a_drop():
    test = [chat(f"Please send {i} boxes, today.", answer=f"ref {i}") for i in range(6)]
    ctx, options = context(test, objective={"metric": "loss", "max": 10})
    plan = robustness.plan(ctx, options)
    assert plan.data["metric"] == "loss"
    clean = outputs(["x"] * 6, [(1.0, 1)] * 6)
    worse = outputs(["x"] * 6, [(1.5, 1)] * 6)
    result = robustness.summarize(plan, {"perturbed": clean.to_json()}, {"perturbed": worse.to_json()}, clean,
                                  clean, options, Bootstrap(0, 0.95, 0))
    assert result.value == pytest.approx(0.5) and result.interval is None and result.signed


def test_plain_text_rows_have_a_note_and_no_rows():
    test = [Example(source="t", line=i, text=f"some text {i}") for i in range(3)]
    ctx, options = context(test)
    plan = robustness.plan(ctx, options)
    assert plan.rows == 0 and "no user prompt" in plan.note


def test_an_edge_case_file_is_scored_base_vs_tuned_apart_from_the_drop(tmp_path):
    edge = tmp_path / "edge.jsonl"
    edge.write_text('{"prompt": "sned 2 boxs pls", "completion": "ref a"}\n{"prompt": "???", "completion": "ref b"}\n')
    test = [chat(f"Please send {i} boxes, today.", answer=f"ref {i}") for i in range(4)]
    ctx, options = context(test, objective={"metric": "exact_match", "min": 0}, edge_cases=str(edge))
    plan = robustness.plan(ctx, options)
    assert plan.rows == 4 + 2 and [row["prompt"] for row in plan.data["edge"]] == ["sned 2 boxs pls", "???"]
    clean = outputs([f"ref {i}" for i in range(4)])
    base = {"perturbed": clean.to_json(), "edge": outputs(["x", "y"]).to_json()}
    tuned = {"perturbed": clean.to_json(), "edge": outputs(["ref a", "y"]).to_json()}
    result = robustness.summarize(plan, base, tuned, clean, clean, options, Bootstrap(0, 0.95, 0))
    edge_cases = result.details["edge_cases"]
    assert (edge_cases["base"], edge_cases["tuned"]) == (0.0, 0.5) and result.value == 0
    assert edge_cases["answers"][0] == {"where": f"{edge}:1", "prompt": "sned 2 boxs pls", "reference": "ref a",
                                        "base": "x", "tuned": "ref a"}
