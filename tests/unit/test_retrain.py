"""Gated retraining on a tiny model (deploy/retrain.py through the job worker): a name in service, users' feedback in
the request log, a retrain queued as a job, run by the worker, compared with the version in service on the original
test split and the held-out feedback, and promoted only when it is not worse; the schedule that queues retrains."""

from __future__ import annotations

import json
import time
import uuid
from contextlib import closing
from pathlib import Path

import pytest

from tests.conftest import reverse_rows, tiny_recipe, train_recipe, write_jsonl
from tests.unit.test_cli import invoke
from tunelab.deploy import retrain, versions
from tunelab.errors import TunelabError
from tunelab.jobs.db import connect
from tunelab.jobs.worker import run_worker
from tunelab.monitor.requestlog import RequestLog

NAME = "support-bot"


def weak_recipe(root: Path, checkpoint: Path, data: Path, name: str) -> dict:
    """A recipe that barely trains (one step, a tiny learning rate): next to the base model, judged by loss."""
    recipe = tiny_recipe(root / name, checkpoint, data, train={"max_steps": 1, "lr": 1e-3},
                         eval={"bootstrap": 300})
    recipe["objective"] = {"metric": "loss", "max": 100.0}
    return recipe


def strong_train() -> dict:
    return {"max_steps": 60, "lr": 3e-2}


@pytest.fixture(scope="module")
def setup(tmp_path_factory, tiny_checkpoint):
    root = tmp_path_factory.mktemp("retrain")
    home = root / "home"
    data = write_jsonl(root / "reverse.jsonl", reverse_rows(60))
    weak = weak_recipe(root, tiny_checkpoint, data, "weak")
    weak_run = train_recipe(weak, home).root
    serve = root / "serve"
    versions.promote(serve, NAME, versions.record(serve, NAME, weak_run).number, by="setup")
    # what users asked and how they corrected it, as the server's request log holds it
    log = RequestLog(serve)
    for word in ("abc", "bad", "cafe", "dab", "face", "bead", "deaf", "ace"):
        request_id = f"chatcmpl-{uuid.uuid4().hex}"
        log.append({"ts": time.time(), "request_id": request_id, "endpoint": "/v1/chat/completions", "model": NAME,
                    "adapter": str(weak_run), "status": 200, "latency_ms": 5.0,
                    "prompt": json.dumps([{"role": "user", "content": word}]), "output": json.dumps(["???"])})
        log.add_feedback({"id": f"fb-{uuid.uuid4().hex}", "ts": time.time(), "completion_id": request_id, "choice": 0,
                          "model": NAME, "rating": "down", "correction": word[::-1]})
    log.close()
    strong = {**weak, "train": {**weak["train"], **strong_train()}}
    strong.pop("output")
    recipe_path = root / "strong.json"  # a recipe file: JSON is YAML
    recipe_path.write_text(json.dumps(strong))
    return {"root": root, "home": home, "serve": serve, "weak_run": weak_run, "strong_recipe": recipe_path,
            "weak": weak}


def job_row(serve: Path, job_id: str):
    with closing(connect(serve)) as connection:
        job = connection.execute("SELECT * FROM jobs WHERE id = ?", (job_id,)).fetchone()
        events = [row["message"] for row in connection.execute(
            "SELECT message FROM events WHERE job_id = ? ORDER BY seq", (job_id,)).fetchall()]
    return job, events


def test_a_plan_keeps_the_original_splits_and_holds_feedback_out(setup):
    plan = retrain.plan_retrain(setup["serve"], NAME, setup["home"], with_feedback=True, holdout=0.25)
    assert plan.incumbent.number == 1 and plan.task == "sft"
    assert plan.counts == {"original": 48, "new": 0, "feedback_train": 6, "feedback_test": 2}
    trained = [json.loads(line) for line in plan.train_file.read_text().splitlines()]
    assert len(trained) == 54 and trained[-1]["messages"][-1]["role"] == "assistant"
    held = [json.loads(line) for line in plan.feedback_test.read_text().splitlines()]
    held_prompts = {row["messages"][-2]["content"] for row in held}
    assert not held_prompts & {row["messages"][-2]["content"] for row in trained}  # held out: never trained on
    original_test = (setup["weak_run"] / "data" / "test.jsonl").read_text().splitlines()
    assert plan.recipe["data"]["test"] and len(Path(plan.recipe["data"]["test"]).read_text().splitlines()) == len(
        original_test)


def test_a_better_retrain_is_promoted_and_a_worse_one_is_kept_as_a_candidate(setup):
    serve, home = setup["serve"], setup["home"]
    # better: the strong recipe against the weak version in service
    plan = retrain.plan_retrain(serve, NAME, home, recipe_path=setup["strong_recipe"], with_feedback=True)
    job_id = retrain.enqueue(serve, plan, trigger="test")
    run_worker(serve, home, "cpu", say=lambda _: None, once=True)
    job, events = job_row(serve, job_id)
    assert job["status"] == "succeeded", events
    promotion = json.loads(job["verdict"])["promotion"]
    assert promotion["promoted"] and promotion["version"] == 2, promotion
    assert [entry["label"] for entry in promotion["comparisons"]] == ["test", "feedback"]
    assert all(entry["change"] < 0 for entry in promotion["comparisons"])  # less loss than v1 on both slices
    assert any(message.startswith("Compared with support-bot v1 on 6 original test split rows") for message in events)
    assert any(message.startswith("Promoted: support-bot v2") for message in events)
    serving = versions.current(serve, NAME)
    assert serving.number == 2 and serving.job_id == job_id and serving.metrics["vs_serving"]["change"] < 0
    assert json.loads(job["request"])["retrain"]["incumbent"] == 1

    # worse: the weak recipe against the strong version now in service
    weak = {**setup["weak"]}
    weak.pop("output")
    weak_path = setup["root"] / "weak-again.json"
    weak_path.write_text(json.dumps(weak))
    plan = retrain.plan_retrain(serve, NAME, home, recipe_path=weak_path, with_feedback=True)
    job_id = retrain.enqueue(serve, plan, trigger="test")
    run_worker(serve, home, "cpu", say=lambda _: None, once=True)
    job, events = job_row(serve, job_id)
    assert job["status"] == "succeeded", events
    promotion = json.loads(job["verdict"])["promotion"]
    assert not promotion["promoted"] and "significantly worse" in promotion["reasons"][0]
    assert versions.current(serve, NAME).number == 2  # still the better one
    candidate = versions.find(serve, NAME, "v3")
    assert candidate.status == "candidate" and "significantly worse" in candidate.reason
    assert any(message.startswith("Not promoted: kept as candidate support-bot v3") for message in events)


def test_retrain_refuses_what_it_cannot_do_before_writing(setup, capsys, tmp_path):
    with pytest.raises(TunelabError, match="not a name in service"):
        retrain.plan_retrain(setup["serve"], "nobody", setup["home"])
    code, _, err = invoke(capsys, "retrain", str(setup["serve"]), "--model", NAME, "--data", str(tmp_path / "no"))
    assert code == 2 and "file not found" in err
    quiet = tmp_path / "quiet-serve"  # a name nobody has given feedback on yet
    versions.promote(quiet, NAME, versions.record(quiet, NAME, setup["weak_run"]).number, by="test")
    with pytest.raises(TunelabError, match="no request log|no feedback"):
        retrain.plan_retrain(quiet, NAME, setup["home"], with_feedback=True)
    assert list((quiet / retrain.FOLDER).iterdir()) == []  # the refused retrain left nothing behind


def test_the_schedule_queues_on_time_and_on_flags_with_a_cooldown(tmp_path):
    clock = [0.0]
    queued, said = [], []
    flags = [[], ["drift ngram_distance"], ["drift ngram_distance"], []]
    schedule = retrain.Schedule(every_s=100.0, check_s=10.0, cooldown_s=50.0, flagged=lambda: flags.pop(0) if flags
                                else [])

    def queue_one(trigger: str) -> str:
        queued.append((clock[0], trigger))
        return f"job-{len(queued)}"

    def sleep(seconds: float) -> None:
        clock[0] += seconds

    retrain.run_schedule(tmp_path, NAME, schedule, queue_one, said.append, should_stop=lambda: clock[0] >= 200,
                         clock=lambda: clock[0], sleep=sleep)
    # flags are read at t=0 (none), t=10 (flagged: queued), not again inside the 50 s cooldown, t=60 (flagged:
    # queued), then none; the schedule at t=100 (t=200 is where it stopped)
    assert [(at, trigger.split(":")[0].split(" (")[0]) for at, trigger in queued] == [
        (10.0, "flagged"), (60.0, "flagged"), (100.0, "schedule")]
    assert said[0].startswith("flagged: drift ngram_distance: queued retrain job job-1")
