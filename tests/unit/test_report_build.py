"""report.html from a run folder written by hand (no model): early-stopping marker, labels, flips, regressions."""

import json

import pytest

from tunelab.config.schema import EvalSection
from tunelab.data.formats import Example
from tunelab.evaluate.compare import ModelRun, count_flips, example_rows, regressions, score_runs
from tunelab.evaluate.plan import plan_evaluation
from tunelab.evaluate.report import build_report
from tunelab.files import write_json, write_jsonl
from tunelab.models.tiny import tiny_tokenizer
from tunelab.runs import RUN_SCHEMA_VERSION, RunDir

REFERENCES = ["spam", "ham", "ham", "spam", "ham", "ham", "spam", "ham"]
BASE = ["Sure! It is spam.", "ham", "spam", "spam", "no idea", "ham", "ham", "ham"]
TUNED = ["spam", "ham", "ham", "spam", "ham", "spam", "spam", "ham"]


@pytest.fixture
def run_folder(tmp_path):
    test = [Example("sms.tsv", i + 1, messages=[{"role": "user", "content": f"message {i}"},
                                                {"role": "assistant", "content": label}])
            for i, label in enumerate(REFERENCES)]
    plan = plan_evaluation(test, EvalSection(), None)
    losses = [(1.0, 2)] * len(test)
    runs = {"base": ModelRun(BASE, losses, [5] * 8, 100.0, 2.0), "tuned": ModelRun(TUNED, losses, [1] * 8, 90.0, 3.0)}
    report = score_runs(plan, runs, resamples=100, confidence=0.9, seed=0)
    examples = example_rows(test, plan, runs, tiny_tokenizer())
    report.update(decoding={"max_new_tokens": 8, "batch_size": 4}, flips=count_flips(examples, plan.correctness),
                  forgetting=None, objective=None)
    run = RunDir(tmp_path / "run")
    write_json(run.eval_json, report)
    write_jsonl(run.eval_examples, examples)
    log = [{"step": step, "loss": 2.0 / step, "learning_rate": 1e-3} for step in range(1, 61)]
    log += [{"step": step, "eval_loss": 1.0 + abs(step - 40) / 100} for step in (20, 40, 60)]
    write_jsonl(run.train_log, log)
    run.write_record({"schema_version": RUN_SCHEMA_VERSION, "status": "completed", "steps": 60, "max_steps": 100,
                      "stopped_early": True, "recipe": {"eval": {"samples": 3}},
                      "metrics": {"best_checkpoint": "runs/x/checkpoints/checkpoint-40", "best_eval_loss": 1.0}})
    return run, report, examples


def test_label_task_report_has_every_part(run_folder):
    run, report, examples = run_folder
    assert report["primary_metric"] == "f1" and report["tuned"]["accuracy"] == pytest.approx(7 / 8)
    # judged by the class answered: base right on rows 2, 4, 6, 8; tuned wrong only on row 6
    assert report["flips"] == {"fixed": 4, "broken": 1, "both_right": 3, "both_wrong": 0, "judged_by": "accuracy"}
    assert [row["index"] for row in regressions(examples, 10)][0] == 5  # the broken row comes first
    html = build_report(run)
    for part in ("best checkpoint (step 40)", "stopped early (step 60)", "learning rate", "Confusion matrices",
                 "answer length (tokens)", "closeness to the reference", "Worst regressions", "Samples side by side",
                 "No objective in the recipe", "Forgetting"):
        assert part in html, part
    confusion = report["details"]["base"]["labels"]
    assert confusion["confusion_columns"] == ["ham", "spam", "(other)"]
    assert confusion["confusion"] == [[3, 1, 1], [1, 1, 1]]
    assert html.count("<svg") == 6  # loss, learning rate, change plot, confusion matrices, 2 histograms
    assert json.dumps(BASE[0])[1:-1] in html  # answers are escaped into the page, not dropped


def test_report_of_a_run_not_evaluated_yet(run_folder):
    run, _, _ = run_folder
    run.eval_json.unlink()
    html = build_report(run)
    assert "No evaluation in this tunelab" in html and "best checkpoint (step 40)" in html
