"""The privacy probe on tiny models trained here: a model overfit on rows and canaries gives them back, a fresh one
and one that never saw the canaries do not; canaries go into train only, deterministically, and survive the doctor."""

import json
import random
from types import SimpleNamespace

import pytest

from tests.conftest import write_jsonl
from tests.tiny import tiny_llama, tiny_tokenizer
from tunelab.config.schema import DataSection
from tunelab.data.canaries import canary_rows, draw_canaries, is_canary, secret_of
from tunelab.data.formats import Example
from tunelab.data.templates import encode_example
from tunelab.device import Placement
from tunelab.evaluate.outputs import ModelOutputs
from tunelab.risks import privacy
from tunelab.risks.base import Bootstrap, RiskContext

CPU = Placement("cpu", "fp32")
BOOTSTRAP = Bootstrap(resamples=200, confidence=0.95, seed=0)
OPTIONS = privacy.PrivacyOptions(rows=8, candidates=99, continuation_tokens=12)


def random_rows(count, seed):
    """Conversations whose answers are random letters: nothing but memorisation can continue them."""
    rng = random.Random(seed)
    letters = "abcdefghijklmnop"
    return [Example("rows.jsonl", n, messages=[
        {"role": "user", "content": f"code {n}"},
        {"role": "assistant", "content": "".join(rng.choice(letters) for _ in range(24))}])
        for n in range(1, count + 1)]


def overfit(model, tokenizer, examples, steps=120, lr=5e-3):
    """Full-batch training on the answers' tokens: a tiny model learns a handful of rows by heart."""
    import torch

    from tunelab.evaluate.generation import right_pad

    stop = {tokenizer.eos_token_id}
    rows = [encode_example(tokenizer, example, stop) for example in examples]
    batch = right_pad([row.input_ids for row in rows], tokenizer.pad_token_id)
    labels = torch.full_like(batch["input_ids"], -100)
    for index, row in enumerate(rows):
        labels[index, : len(row.labels)] = torch.tensor(row.labels)
    torch.manual_seed(0)
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr)
    model.train()
    for _ in range(steps):
        optimizer.zero_grad()
        model(**batch, labels=labels).loss.backward()
        optimizer.step()
    return model.eval()


@pytest.fixture(scope="module")
def setting():
    import torch

    # One thread: a 64-wide model gains nothing from more, and on a shared 2-core machine two threads wait on
    # each other (20 steps took 23 s with two threads, 0.6 s with one).
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield trained_setting()
    torch.set_num_threads(threads)


def trained_setting():
    tokenizer = tiny_tokenizer()
    train = random_rows(8, seed=1)
    canaries = canary_rows(train, count=2, repeats=3, seed=7)
    test = random_rows(8, seed=2)
    fresh = tiny_llama(tokenizer, hidden_size=64, seed=0)
    with_canaries = overfit(tiny_llama(tokenizer, hidden_size=64, seed=0), tokenizer, train + canaries)
    without_canaries = overfit(tiny_llama(tokenizer, hidden_size=64, seed=0), tokenizer, train)
    ctx = RiskContext(recipe=SimpleNamespace(data=DataSection(train="x.jsonl", max_length=256)), task=None,
                      spec=None, test=test, train=train + canaries, task_state={}, tokenizer=tokenizer,
                      run_root=None, writes_text=True)
    return SimpleNamespace(tokenizer=tokenizer, ctx=ctx, fresh=fresh, with_canaries=with_canaries,
                           without_canaries=without_canaries)


def outputs(predictions):
    return ModelOutputs(predictions=predictions, losses=[], answer_tokens=[], speed={})


def measure(setting, base_model, tuned_model, predictions=([], [])):
    plan = privacy.plan(setting.ctx, OPTIONS)
    base = privacy.run(plan, base_model, setting.tokenizer, CPU)
    tuned = privacy.run(plan, tuned_model, setting.tokenizer, CPU)
    json.dumps([base, tuned])  # what run returns is saved as JSON
    return privacy.summarize(plan, base, tuned, outputs(list(predictions[0])), outputs(list(predictions[1])),
                             OPTIONS, BOOTSTRAP)


def test_an_overfit_model_gives_training_rows_back_and_a_fresh_one_does_not(setting):
    result = measure(setting, setting.fresh, setting.with_canaries)
    memo = result.details["memorization"]
    assert memo["train_rows"] == 8 and memo["test_rows"] == 8  # canaries are not sampled as ordinary rows
    assert memo["tuned_train_memorised"] >= 0.75 and memo["tuned_train_verbatim"] >= 0.5
    assert memo["base_train_memorised"] == 0 and memo["tuned_test_memorised"] == 0
    assert result.value >= 0.75 and result.base == 0 and result.flagged
    low, high = result.interval
    assert low <= result.value <= high and low > 0.3
    shown = [item for item in result.examples if item["kind"] == "memorised"]
    assert shown and not shown[0]["base_too"]
    assert shown[0]["tuned"].startswith(shown[0]["training_answer"][:6])


def test_the_same_model_against_itself_shows_no_gap(setting):
    result = measure(setting, setting.fresh, setting.fresh)
    assert result.value == 0 and not result.flagged


def test_canaries_leak_from_a_model_trained_on_them_and_not_from_one_that_was_not(setting):
    leaked = measure(setting, setting.fresh, setting.with_canaries).details["canaries"]
    clean = measure(setting, setting.fresh, setting.without_canaries).details["canaries"]
    assert leaked["count"] == clean["count"] == 2 and leaked["candidates"] == 99
    assert leaked["max_exposure"] == pytest.approx(6.644, abs=1e-3)
    assert all(item["repeats"] == 3 for item in leaked["listed"])
    assert leaked["leaked"] == 2 and leaked["tuned_mean_exposure"] >= 6
    assert all(item["tuned_rank"] == 1 for item in leaked["listed"])
    assert clean["leaked"] == 0 and clean["tuned_mean_exposure"] < 4


def test_exposure_is_rank_based():
    assert privacy.exposure([0.5, 1.0, 2.0, 3.0]) == (2.0, 1)  # lowest loss of 4: log2(4) - log2(1)
    assert privacy.exposure([3.0, 1.0, 2.0, 0.5]) == (0.0, 4)
    assert privacy.exposure([1.0, 1.0, 1.0, 1.0])[1] == 4  # ties count against the canary


def test_pii_in_answers_is_told_apart_leaked_invented_or_copied():
    found = privacy.find_pii("mail ann@example.com or call +44 20 7946 0958, card 4111 1111 1111 1111")
    assert ("email", "ann@example.com") in found and ("credit_card", "4111 1111 1111 1111") in found
    assert [kind for kind, _ in found].count("phone") == 1  # the card's digits are not also a phone number
    plan = SimpleNamespace(data={"train_pii": ["ann@example.com"], "test_prompts": ["write to bob@corp.org", "hi"]})
    details = privacy.pii_details(plan, ["nothing here", "ok"],
                                  ["sure, bob@corp.org", "ask ann@example.com or eve@made.up"])
    assert details["base"]["strings"] == 0
    tuned = details["tuned"]
    assert (tuned["in_prompt"], tuned["from_training"], tuned["invented"]) == (1, 1, 1)
    assert tuned["strings"] == 3 and tuned["answers_with_pii"] == 2
    assert {item["string"]: item["origin"] for item in tuned["found"]} == {"ann@example.com": "from_training",
                                                                           "eve@made.up": "invented"}


def test_a_classifier_is_probed_by_membership_inference(setting):
    """A model that writes no text (a head): its training and held-out samples are answered through the task's
    own evaluation (here a recorder of what it is asked), for their losses; no text is cut."""
    asked = []

    def evaluation(recipe, rows, state, tokenizer, where, rewards):
        asked.append((where, [row.where for row in rows]))
        return where

    task = SimpleNamespace(evaluation=evaluation)
    ctx = RiskContext(**{**vars(setting.ctx), "writes_text": False, "task": task})
    plan = privacy.plan(ctx, OPTIONS)
    train = [example for example in setting.ctx.train if not is_canary(example)]
    assert plan.rows == min(OPTIONS.rows, len(train)) + min(OPTIONS.rows, len(setting.ctx.test))
    assert "membership inference" in plan.note and "train" not in plan.data
    assert [where for where, _ in asked] == ["privacy: train sample", "privacy: test sample"]
    assert asked[0][1] == plan.data["membership"]["train"] and set(asked[0][1]) <= {row.where for row in train}
    assert privacy.plan(ctx, OPTIONS).data["membership"] == plan.data["membership"]  # seeded


def test_options_are_validated():
    with pytest.raises(ValueError):
        privacy.PrivacyOptions(rows=0)
    with pytest.raises(ValueError):
        privacy.PrivacyOptions(prefix_share=1.5)
    with pytest.raises(ValueError):
        privacy.PrivacyOptions(unknown=1)
    assert privacy.PROBE.name == "privacy" and privacy.PROBE.gate == "max_memorization"


# ---------------------------------------------------------------- canaries in the data doctor

def doctor(tokenizer, tmp_path, home, **data):
    from tunelab.data.cache import prepare_data

    rows = [{"prompt": f"question {n} about w{n * 7}", "completion": f"answer {n} is w{n * 13}"} for n in range(40)]
    rows += rows[:3]  # duplicates the doctor removes; canary repeats must not be
    section = DataSection(**{"train": str(write_jsonl(tmp_path / "t.jsonl", rows)), "max_length": 256,
                             "split": {"validation": 0.1, "test": 0.1}, **data})
    return prepare_data(section, tokenizer, {tokenizer.eos_token_id}, 1024, tmp_path / home)


def test_canaries_go_into_train_only_deterministically_and_survive_the_doctor(tmp_path):
    tokenizer = tiny_tokenizer()
    first = doctor(tokenizer, tmp_path, "a", canaries=3, canary_repeats=2)
    again = doctor(tokenizer, tmp_path, "b", canaries=3, canary_repeats=2)
    splits = first.splits()
    train_canaries = [example for example in splits.train if is_canary(example)]
    assert len(train_canaries) == 6
    assert not any(is_canary(example) for example in splits.validation + splits.test)
    secrets = sorted({secret_of(example) for example in train_canaries})
    assert secrets == sorted(canary.secret for canary in draw_canaries(3, seed=42))  # data.split.seed
    assert [e.to_json() for e in again.splits().train] == [e.to_json() for e in splits.train]  # same seed, same rows
    assert first.report["canaries"] == [json.loads(line) for line in
                                        (first.folder / "canaries.jsonl").read_text().splitlines()]
    assert sorted(item["secret"] for item in first.report["canaries"]) == secrets
    assert all(item["repeats"] == 2 for item in first.report["canaries"])
    counts = first.report["counts"]
    assert counts["added"] == 6 and counts["final"] == counts["kept"] + 6
    assert first.report["splits"]["train"]["added"] == 6
    assert counts["read"] == counts["kept"] + counts["rejected"] and counts["rejected"] == 3
    messages = train_canaries[0].messages
    assert [m["role"] for m in messages] == ["user", "assistant"] and secret_of(train_canaries[0]) in \
        messages[-1]["content"]
    none = doctor(tokenizer, tmp_path, "c")
    assert not any(is_canary(example) for example in none.splits().train) and none.report["canaries"] == []
    assert not (none.folder / "canaries.jsonl").exists()


def test_canaries_take_the_shape_of_text_rows_and_refuse_label_rows():
    from tunelab.errors import TunelabError

    text = canary_rows([Example("t", 1, text="plain text")], count=2, repeats=1, seed=0)
    assert all(row.kind == "text" and secret_of(row) for row in text)
    assert draw_canaries(4, 0) == draw_canaries(4, 0) != draw_canaries(4, 1)
    with pytest.raises(TunelabError, match="data.canaries"):
        canary_rows([Example("t", 1, text="x", label="spam")], count=1, repeats=1, seed=0)


def test_rows_are_cut_inside_their_last_answer_as_trained():
    tokenizer = tiny_tokenizer()  # one token a character
    row = Example("r", 1, messages=[{"role": "system", "content": "sys"}, {"role": "user", "content": "q"},
                                    {"role": "assistant", "content": "first"}, {"role": "user", "content": "q2"},
                                    {"role": "assistant", "content": "abcdefghijklmnopqrst"}])
    options = privacy.PrivacyOptions(prefix_share=0.5, continuation_tokens=6)
    [cut] = privacy.continuation_rows([row], tokenizer, {tokenizer.eos_token_id}, 256, options)
    assert tokenizer.decode(cut["prompt_ids"]).endswith("assistant\nabcdefghij")
    assert cut["target"] == "klmnop" and cut["prompt_tail"] == "abcdefghij"
    short = Example("r", 2, messages=[{"role": "user", "content": "q"}, {"role": "assistant", "content": "abcdef"}])
    assert privacy.continuation_rows([short], tokenizer, {tokenizer.eos_token_id}, 256, options) == []
    assert privacy.continuation_rows([row], tokenizer, {tokenizer.eos_token_id}, 40, options) == []  # too long


def test_the_data_report_page_says_canaries_were_inserted(tmp_path):
    from tunelab.present.data_report import html_report

    prepared = doctor(tiny_tokenizer(), tmp_path, "h", canaries=2, canary_repeats=3)
    page = html_report(prepared.report, "t")
    assert "canaries inserted into train (data.canaries, listed in canaries.jsonl): 2, 6 rows" in page


def test_shared_prefix_scoring_ranks_candidates_as_whole_row_scoring_does():
    from tunelab.data.canaries import with_secret
    from tunelab.evaluate.loss import row_losses

    tokenizer = tiny_tokenizer()
    model = tiny_llama(tokenizer, hidden_size=64, seed=3)
    [canary] = canary_rows(random_rows(2, seed=0), count=1, repeats=1, seed=0)
    secrets = [secret_of(canary), "000001", "123456", "999990", "45678"]  # the last one is shorter
    rows = [encode_example(tokenizer, with_secret(canary, secret), {tokenizer.eos_token_id}) for secret in secrets]
    whole = [loss for loss, _ in row_losses(model, rows, tokenizer.pad_token_id, batch_size=2)]
    shared = privacy.shared_prefix_losses(model, rows, tokenizer.pad_token_id, 2, None)
    # The shared prefix's loss is the same constant in every row: the differences match.
    assert [a - whole[0] for a in whole] == pytest.approx([b - shared[0] for b in shared], abs=1e-4)
    assert shared[0] < whole[0]


def test_the_loss_threshold_attack_advantage():
    import numpy as np

    from tunelab.risks.privacy import advantage

    low, high = np.full(10, 0.1), np.full(10, 2.0)
    assert advantage(low, high) == 1.0  # every training row below every held-out one: members told apart
    assert advantage(high, low) == 0.0  # training rows no easier than unseen ones: no advantage
    assert advantage(np.arange(10.0), np.arange(10.0)) == 0.0
    weights = np.zeros(10)
    weights[0] = 1.0  # a resample of only the easiest training row
    assert advantage(np.arange(10.0), np.arange(10.0) + 0.5, weights) == 1.0


def test_class_labels_memorised_are_caught_by_membership_inference(tiny_checkpoint, tmp_path, home):
    """Random labels cannot be learnt, only memorised: a model fine-tuned on them tells its training rows from
    held-out ones by their loss (advantage near 1); the base model cannot."""
    import json
    import random

    from tests.conftest import run_record, train_recipe
    from tests.unit.test_classification import classification_recipe, evaluate
    from tunelab.files import write_jsonl

    rng = random.Random(3)
    rows = [{"text": f"item {index} {rng.choice('abcdefgh')}{rng.randrange(1000)}",
             "label": rng.choice(["red", "blue"])} for index in range(40)]
    data = tmp_path / "random.jsonl"
    write_jsonl(data, rows)
    recipe = classification_recipe(
        tmp_path, tiny_checkpoint, data, train={"max_steps": 200, "lr": 3e-3}, method={"name": "full"},
        task={"prompt": "{text}?"},
        eval={"bootstrap": 100, "forgetting": {"enabled": False},
              "risks": {"robustness": {"enabled": False}, "bias": {"enabled": False},
                        "factual": {"enabled": False}, "privacy": {"rows": 16}}})
    run_dir = train_recipe(recipe, home)
    evaluate(run_dir, home)
    privacy = json.loads((run_dir.root / "eval.json").read_text())["risks"]["privacy"]
    assert run_record(run_dir).task_state["style"] == "generate"
    assert privacy["measure"].startswith("membership advantage") and privacy["rows"] == 16 + 8
    membership = privacy["details"]["membership"]
    assert membership["tuned_train_mean_loss"] < membership["tuned_test_mean_loss"]
    assert privacy["value"] >= 0.6 and privacy["value"] > privacy["base"], (membership, privacy["base"])
    low, high = privacy["interval"]
    assert low <= privacy["value"] <= high
