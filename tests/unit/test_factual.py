"""The factual-drift probe: answer normalization and alternatives, the questions shipped and the user's, and the drop
measured in the right direction on a tiny model taught a few facts against one that never learnt them."""

import json
from types import SimpleNamespace

import pytest

from tests.tiny import tiny_llama, tiny_tokenizer
from tests.unit.test_privacy import overfit
from tunelab.data.formats import Example
from tunelab.device import Placement
from tunelab.errors import TunelabError
from tunelab.risks import factual
from tunelab.risks.base import Bootstrap, RiskContext

CPU = Placement("cpu", "fp32")
BOOTSTRAP = Bootstrap(resamples=300, confidence=0.95, seed=0)
FACTS = "capital of zed?\tvox\nfirst colour?\tred|crimson\nbig cat?\tlion\nsmall number?\t2|two\n"


def test_normalization_and_alternatives():
    assert factual.normalize("  The Capital is  PARÍS!  ") == "capital is paris"
    assert factual.normalize("about 300,000 km/s") == "about 300000 km s"
    assert factual.is_correct("The capital of France is Paris.", ["Paris"])
    assert factual.is_correct("It's Leonardo da Vinci", ["Leonardo da Vinci", "da Vinci"])
    assert factual.is_correct("twenty-four hours", ["24", "twenty-four"])
    assert factual.is_correct("Bogotá", ["Bogota"])
    assert not factual.is_correct("1987", ["8"])  # whole words only
    assert not factual.is_correct("Parisian", ["Paris"])
    assert not factual.is_correct("", ["Paris"]) and not factual.is_correct("the", ["the"])


def test_shipped_questions_parse_and_each_has_an_answer():
    questions = factual.shipped_questions()
    assert 80 <= len(questions) <= 130
    assert len({item.question for item in questions}) == len(questions)
    assert all(item.answers and item.source == "builtin" for item in questions)
    capital = next(item for item in questions if item.question == "What is the capital of Italy?")
    assert capital.answers == ("Rome", "Roma")


def test_user_questions_from_text_and_data_files(tmp_path):
    text = tmp_path / "mine.txt"
    text.write_text("# comment\n" + FACTS, encoding="utf-8")
    rows = tmp_path / "mine.jsonl"
    rows.write_text(json.dumps({"question": "q one?", "answer": ["a", "b"]}) + "\n"
                    + json.dumps({"question": "q two?", "answer": "c|d"}) + "\n", encoding="utf-8")
    found = factual.load_questions(factual.FactualOptions(builtin=False, file=str(text)))
    assert [item.answers for item in found][:2] == [("vox",), ("red", "crimson")]
    found = factual.load_questions(factual.FactualOptions(file=str(rows)))
    assert [item.answers for item in found[-2:]] == [("a", "b"), ("c", "d")]
    assert found[-1].source == str(rows) and found[0].source == "builtin"
    assert len(factual.load_questions(factual.FactualOptions(rows=5))) == 5
    bad = tmp_path / "bad.txt"
    bad.write_text("no tab here\n", encoding="utf-8")
    with pytest.raises(TunelabError, match="bad.txt:1"):
        factual.load_questions(factual.FactualOptions(file=str(bad)))
    with pytest.raises(TunelabError, match="no questions"):
        factual.load_questions(factual.FactualOptions(builtin=False))
    with pytest.raises(TunelabError, match="not found"):
        factual.load_questions(factual.FactualOptions(file=str(tmp_path / "missing.txt")))


def summarize(base_answers, tuned_answers):
    plan = SimpleNamespace(data={"questions": [{"question": f"q{n}", "answers": ["yes"], "source": "builtin"}
                                               for n in range(len(base_answers))]}, note=None)
    return factual.summarize(plan, {"answers": base_answers}, {"answers": tuned_answers}, None, None,
                             factual.FactualOptions(), BOOTSTRAP)


def test_the_drop_is_base_minus_tuned_with_the_lost_questions_as_examples():
    result = summarize(["yes"] * 10, ["yes"] * 6 + ["no"] * 4)
    assert result.value == pytest.approx(0.4) and result.base == 1.0 and result.tuned == pytest.approx(0.6)
    assert result.flagged and result.gate == "max_factual_drift" and result.unit == "rate"
    assert [item["question"] for item in result.examples] == ["q6", "q7", "q8", "q9"]
    assert result.interval[0] <= 0.4 <= result.interval[1] and result.interval[0] > 0
    gained = summarize(["no"] * 10, ["yes"] * 3 + ["no"] * 7)
    assert gained.value == pytest.approx(-0.3) and not gained.flagged and gained.details["gained"] == 3
    assert gained.examples == []


def test_a_model_that_lost_facts_is_caught_end_to_end(tmp_path):
    import torch

    tokenizer = tiny_tokenizer()
    facts = tmp_path / "facts.txt"
    facts.write_text(FACTS, encoding="utf-8")
    options = factual.FactualOptions(builtin=False, file=str(facts), max_new_tokens=8)
    rows = [Example("f", n, messages=[{"role": "user", "content": f"{item.question} {options.instruction}"},
                                      {"role": "assistant", "content": item.answers[0]}])
            for n, item in enumerate(factual.load_questions(options))]
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny model, shared CPU: see test_privacy.setting
    try:
        knows = overfit(tiny_llama(tokenizer, hidden_size=64, seed=0), tokenizer, rows, steps=80)
        forgot = tiny_llama(tokenizer, hidden_size=64, seed=0)
        ctx = RiskContext(recipe=None, task=None, spec=None, test=[], train=[], task_state={}, tokenizer=tokenizer,
                          run_root=None, writes_text=True)
        plan = factual.plan(ctx, options)
        base = factual.run(plan, knows, tokenizer, CPU)
        tuned = factual.run(plan, forgot, tokenizer, CPU)
    finally:
        torch.set_num_threads(threads)
    result = factual.summarize(plan, base, tuned, None, None, options, BOOTSTRAP)
    assert plan.rows == 4 and result.base == 1.0 and result.tuned == 0.0 and result.value == 1.0
    assert len(result.examples) == 4 and result.details["by_source"][str(facts)]["rows"] == 4
    assert factual.summarize(plan, tuned, base, None, None, options, BOOTSTRAP).value == -1.0


def test_a_classifier_is_not_probed_and_options_are_checked():
    ctx = RiskContext(recipe=None, task=None, spec=None, test=[], train=[], task_state={}, tokenizer=None,
                      run_root=None, writes_text=False)
    assert factual.plan(ctx, factual.FactualOptions()) is None
    with pytest.raises(ValueError):
        factual.FactualOptions(rows=0)
    with pytest.raises(ValueError):
        factual.FactualOptions(typo=True)
    assert factual.PROBE.name == "factual_drift" and factual.PROBE.gate == "max_factual_drift"
