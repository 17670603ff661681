"""report.html from a run folder written by hand (no model): early-stopping marker, labels, flips, regressions."""

import json

import pytest

from tests.tiny import tiny_tokenizer
from tunelab.config.schema import EvalSection
from tunelab.data.formats import Example
from tunelab.evaluate.evaluator import regressions, score
from tunelab.evaluate.outputs import ModelOutputs
from tunelab.files import write_jsonl
from tunelab.present.eval_report import build_report
from tunelab.run.folder import RunDir
from tunelab.run.record import (
    BaseModelInfo,
    DataInfo,
    Environment,
    MethodInfo,
    RunRecord,
    SplitCounts,
    TrainingSummary,
    write_evaluation,
    write_record,
)
from tunelab.tasks.registry import get_task

REFERENCES = ["spam", "ham", "ham", "spam", "ham", "ham", "spam", "ham"]
BASE = ["Sure! It is spam.", "ham", "spam", "spam", "no idea", "ham", "ham", "ham"]
TUNED = ["spam", "ham", "ham", "spam", "ham", "spam", "spam", "ham"]


def hand_record(**fields) -> RunRecord:
    """A run record as the lifecycle would write one, with made-up facts."""
    values = dict(
        task="sft", started_at="2026-12-01T00:00:00Z", recipe={"eval": {"samples": 3}},
        environment=Environment(python="3.11", platform="linux", host="h", cpu_count=2, packages={}, git_sha=None),
        base_model=BaseModelInfo(name="tiny", kind="folder", path="tiny"),
        method=MethodInfo(name="lora", trainable_parameters=1, total_parameters=2),
        data=DataInfo(files=[], splits={"train": SplitCounts(rows=1, kept=1)}), device="cpu", precision="fp32",
        padding_free=True, status="completed")
    return RunRecord(**{**values, **fields})


@pytest.fixture
def run_folder(tmp_path):
    test = [Example("sms.tsv", i + 1, messages=[{"role": "user", "content": f"message {i}"},
                                                {"role": "assistant", "content": label}])
            for i, label in enumerate(REFERENCES)]
    from tunelab.config.schema import Recipe

    recipe = Recipe.model_validate({"data": {"train": "unused.jsonl"}})
    spec = get_task("sft").evaluation(recipe, test, {}, tiny_tokenizer(), "test split")
    losses = [(1.0, 2)] * len(test)
    outputs = {"base": ModelOutputs(BASE, losses, [5] * 8, {"tokens_per_second": 100.0}),
               "tuned": ModelOutputs(TUNED, losses, [1] * 8, {"tokens_per_second": 90.0})}
    evaluation, examples = score("sft", spec, outputs, EvalSection(bootstrap=100, confidence=0.9), None, None,
                                 [1] * 8)
    run = RunDir(tmp_path / "run")
    run.root.mkdir()
    write_evaluation(run, evaluation)
    write_jsonl(run.eval_examples, examples)
    log = [{"step": step, "loss": 2.0 / step, "learning_rate": 1e-3} for step in range(1, 61)]
    log += [{"step": step, "eval_loss": 1.0 + abs(step - 40) / 100} for step in (20, 40, 60)]
    write_jsonl(run.train_log, log)
    training = TrainingSummary(steps=60, max_steps=100, stopped_early=True, tokens_seen=600, train_loss=0.1,
                               final_eval_loss=1.2, best_eval_loss=1.0, train_runtime_seconds=3.0,
                               best_checkpoint="runs/x/checkpoints/checkpoint-40", train_tokens_per_second=200.0)
    write_record(run, hand_record(training=training))
    return run, evaluation, examples


def test_label_task_report_has_every_part(run_folder):
    run, evaluation, examples = run_folder
    assert evaluation.primary_metric == "f1" and evaluation.tuned["accuracy"] == pytest.approx(7 / 8)
    # judged by the class answered: base right on rows 2, 4, 6, 8; tuned wrong only on row 6
    flips = evaluation.flips
    assert (flips.fixed, flips.broken, flips.both_right, flips.both_wrong, flips.judged_by) == (4, 1, 3, 0,
                                                                                                "accuracy")
    assert [row["index"] for row in regressions(examples, 10)][0] == 5  # the broken row comes first
    html = build_report(run)
    for part in ("best checkpoint (step 40)", "stopped early (step 60)", "learning rate", "Confusion matrices",
                 "answer length (tokens)", "closeness to the reference", "Worst regressions", "Samples side by side",
                 "No objective in the recipe", "Forgetting"):
        assert part in html, part
    confusion = evaluation.details["base"]["labels"]
    assert confusion["confusion_columns"] == ["ham", "spam", "(other)"]
    assert confusion["confusion"] == [[3, 1, 1], [1, 1, 1]]
    assert html.count("<svg") == 6  # loss, learning rate, change plot, confusion matrices, 2 histograms
    assert json.dumps(BASE[0])[1:-1] in html  # answers are escaped into the page, not dropped


def test_report_of_a_run_not_evaluated_yet(run_folder):
    run, _, _ = run_folder
    run.eval_json.unlink()
    html = build_report(run)
    assert "No evaluation in this tunelab" in html and "best checkpoint (step 40)" in html
