"""OpenAI's fine-tuning API on `tunelab serve`, driven by the official openai client: a job is created from an
uploaded file, the worker runs it through the lifecycle (tiny model), events, checkpoints and the result file come
back in OpenAI's shapes, and the finished model is served at once under ft:<base>:<suffix>:<job id>."""

from __future__ import annotations

import csv
import io
import json
import re
from dataclasses import replace
from pathlib import Path

import openai
import pytest

from tests.conftest import reverse_rows
from tests.unit.test_serve import LiveServer, wait_for
from tunelab.serve.finished_jobs import FinishedJobs
from tunelab.serve.settings import ServeSettings

KEY = "ft-key"
TINY_TRAIN = {"max_steps": 6, "lr": 1e-2, "batch_size": 4, "save_every": 2, "eval_every": 3, "log_every": 1,
              "warmup": 0, "precision": "fp32"}
TINY = {"method": {"name": "lora", "r": 4, "alpha": 8, "dropout": 0.0}, "train": TINY_TRAIN,
        "eval": {"max_new_tokens": 8, "batch_size": 8, "forgetting": {"enabled": False}},
        "data": {"max_length": 64, "split": {"test": 0.1}}}


def chat_rows(count: int, seed: int = 0) -> list[dict]:
    return [{"messages": [{"role": "user", "content": row["prompt"]},
                          {"role": "assistant", "content": row["completion"]}]} for row in reverse_rows(count, seed)]


def upload(api: openai.OpenAI, rows: list[dict], name: str = "train.jsonl") -> str:
    data = "".join(json.dumps(row) + "\n" for row in rows).encode()
    return api.files.create(file=(name, data), purpose="fine-tune").id


@pytest.fixture(scope="module")
def served(tiny_checkpoint, tmp_path_factory):
    from tunelab.serve.server import build_service

    tmp = tmp_path_factory.mktemp("jobs")
    settings = ServeSettings(serve_dir=tmp / "serve", fine_tune_keys=frozenset({KEY}), max_tokens=64)
    server = LiveServer(build_service([], str(tiny_checkpoint), settings, tmp / "home", say=lambda _: None))
    yield server, tmp
    server.stop()


def client(server) -> openai.OpenAI:
    return server.client(KEY)


def work(tmp: Path) -> None:
    """The worker, in this process, until the queue is empty."""
    from tunelab.jobs.worker import run_worker

    run_worker(tmp / "serve", tmp / "home", "cpu", say=lambda _: None, once=True)


def test_a_supervised_job_trains_reports_and_is_served(served):
    server, tmp = served
    api = client(server)
    base = server.service.registry.base.id
    training = upload(api, chat_rows(60))
    job = api.fine_tuning.jobs.create(model=base, training_file=training, suffix="rev", seed=3,
                                      hyperparameters={"batch_size": 4}, extra_body={"tunelab": TINY})
    assert job.status == "validating_files" and job.fine_tuned_model is None
    assert job.hyperparameters.batch_size == 4 and job.hyperparameters.n_epochs == 3
    work(tmp)
    job = api.fine_tuning.jobs.retrieve(job.id)
    assert job.status == "succeeded", job.error
    assert job.fine_tuned_model == f"ft:{base}:rev:{job.id}" and job.trained_tokens > 0 and job.finished_at
    events = list(api.fine_tuning.jobs.list_events(job.id, limit=100))
    assert [event.id for event in api.fine_tuning.jobs.list_events(job.id, limit=3)] == [e.id for e in events]
    messages = [event.message for event in reversed(events)]
    assert messages[0].startswith("Validating training file") and messages[-1] == "The job has successfully completed"
    steps = [event.data["step"] for event in reversed(events) if event.type == "metrics"]
    assert steps == sorted(steps) and steps[-1] == 6
    assert all("train_loss" in event.data or "valid_loss" in event.data for event in events if event.type == "metrics")
    assert any(message.startswith("Evaluation on ") for message in messages)
    checkpoints = list(api.fine_tuning.jobs.checkpoints.list(job.id))
    assert [c.step_number for c in checkpoints] == [6, 4, 2]
    assert checkpoints[0].fine_tuned_model_checkpoint == f"{job.fine_tuned_model}:ckpt-step-6"
    (result,) = job.result_files
    assert api.files.retrieve(result).purpose == "fine-tune-results"
    table = list(csv.DictReader(io.StringIO(api.files.content(result).text)))
    assert [int(row["step"]) for row in table if row["train_loss"]] == list(range(1, 7))
    wait_for(lambda: job.fine_tuned_model in [model.id for model in api.models.list()])
    answer = api.chat.completions.create(model=job.fine_tuned_model, max_tokens=8, temperature=0,
                                         messages=[{"role": "user", "content": "abcd"}])
    assert answer.model == job.fine_tuned_model and answer.choices[0].message.content is not None
    served_on_first_request(server, tmp, api)
    assert answer.choices[0].message.content == reference(tmp / "serve" / "jobs" / job.id / "run", tmp / "home")
    restarted_serves_the_job(server, tmp, job)


def served_on_first_request(server, tmp: Path, api: openai.OpenAI) -> None:
    """A job that finished a moment ago, before the server's poller saw it, answers the first request for it."""
    server.service.finished_jobs.close()  # no poller: only the request can load it
    try:
        job = api.fine_tuning.jobs.create(model=server.service.registry.base.id, training_file=upload(
            api, chat_rows(40, seed=2)), extra_body={"tunelab": TINY})
        work(tmp)
        job = api.fine_tuning.jobs.retrieve(job.id)
        assert job.status == "succeeded" and job.fine_tuned_model not in [model.id for model in api.models.list()]
        answer = api.chat.completions.create(model=job.fine_tuned_model, max_tokens=4,
                                             messages=[{"role": "user", "content": "abcd"}])
        assert answer.model == job.fine_tuned_model
    finally:
        server.service.finished_jobs = FinishedJobs(server.service, say=lambda _: None).start()


def reference(run: Path, home: Path) -> str:
    """What the run itself answers (greedy), without the server."""
    from tunelab.cli.run import reply
    from tunelab.run.models import open_run_models

    models = open_run_models(run, home)
    return reply(models.inference().load_tuned(), models.tokenizer(), [{"role": "user", "content": "abcd"}], 8, 0.0,
                 models.placement)


def restarted_serves_the_job(server, tmp: Path, job) -> None:
    """A second server on the same serve folder (a restart) knows the job and serves its model from the start."""
    from tunelab.serve.server import build_service

    settings = replace(server.service.settings)
    again = LiveServer(build_service([], server.service.registry.base.root, settings, tmp / "home",
                                     say=lambda _: None))
    try:
        api = client(again)
        assert api.fine_tuning.jobs.retrieve(job.id).status == "succeeded"
        assert job.fine_tuned_model in [model.id for model in api.models.list()]
    finally:
        again.stop()


def openai_pairs(count: int) -> list[dict]:
    """OpenAI's preference format: the word reversed preferred over the word itself."""
    return [{"input": {"messages": [{"role": "user", "content": row["prompt"]}]},
             "preferred_output": [{"role": "assistant", "content": row["completion"]}],
             "non_preferred_output": [{"role": "assistant", "content": row["prompt"]}]}
            for row in reverse_rows(count, seed=5)]


def test_a_dpo_job_learns_from_openai_preference_rows(served):
    server, tmp = served
    api = client(server)
    training = upload(api, openai_pairs(60), "pairs.jsonl")
    job = api.fine_tuning.jobs.create(model=server.service.registry.base.id, training_file=training,
                                      method={"type": "dpo", "dpo": {"hyperparameters": {"beta": 0.2}}},
                                      extra_body={"tunelab": TINY})
    assert job.method.type == "dpo" and job.method.dpo.hyperparameters.beta == 0.2
    work(tmp)
    job = api.fine_tuning.jobs.retrieve(job.id)
    assert job.status == "succeeded", job.error
    from tunelab.run.folder import RunDir
    from tunelab.run.record import read_record

    record = read_record(RunDir(tmp / "serve" / "jobs" / job.id / "run"))
    assert record.task == "dpo" and record.status == "completed"
    events = [event.message for event in api.fine_tuning.jobs.list_events(job.id, limit=100)]
    assert any(message.startswith("Evaluation on ") and ": preference_accuracy base " in message
               for message in events), events


def refused(call, status: int, pattern: str):
    with pytest.raises(openai.APIStatusError) as caught:
        call()
    assert caught.value.status_code == status, caught.value
    assert re.search(pattern, caught.value.body["message"]), caught.value.body
    return caught.value


def test_bad_jobs_are_refused_in_openai_shape_and_nothing_is_queued(served):
    server, tmp = served
    api = client(server)
    base = server.service.registry.base.id
    chats, pairs = upload(api, chat_rows(20)), upload(api, openai_pairs(20), "pairs.jsonl")
    other = api.files.create(file=("notes.txt", b"hello"), purpose="user_data").id
    before = len(list(api.fine_tuning.jobs.list(limit=100)))
    create = api.fine_tuning.jobs.create
    refused(lambda: create(model=base, training_file="file-nope"), 400, r"invalid training_file: .*file-nope")
    refused(lambda: create(model=base, training_file=other), 400, r"invalid training_file: .*not fine-tune")
    refused(lambda: create(model="gpt-4o", training_file=chats), 400, rf"this server tunes its base model '{base}'")
    refused(lambda: create(model=base, training_file=pairs), 400,
            r"method supervised cannot learn from training_file .* preference pairs")
    refused(lambda: create(model=base, training_file=chats, method={"type": "dpo"}), 400,
            r"method dpo cannot learn .* conversations")
    refused(lambda: create(model=base, training_file=chats, hyperparameters={"n_epochs": 0}), 400,
            r"hyperparameters.n_epochs")
    refused(lambda: create(model=base, training_file=chats, hyperparameters={"learning_rate_multiplier": 50}), 400,
            r"learning_rate_multiplier")
    refused(lambda: create(model=base, training_file=chats, suffix="a/b"), 400, r"suffix")
    refused(lambda: create(model=base, training_file=chats, extra_body={"tunelab": {"output": {"dir": "/tmp"}}}),
            400, r"tunelab.output: a job may set only")
    refused(lambda: create(model=base, training_file=chats, extra_body={"tunelab": {"data": {"train": "/etc"}}}),
            400, r"tunelab.data.train")
    refused(lambda: create(model=base, training_file=chats, extra_body={"tunelab": {"method": {"name": "nope"}}}),
            400, r"method")
    prompts = upload(api, [{"messages": [{"role": "user", "content": row["prompt"]}], "reference": row["completion"]}
                           for row in reverse_rows(20)], "prompts.jsonl")
    grader = {"type": "python", "name": "p", "source": "def grade(sample, item):\n    return 1.0\n"}
    refused(lambda: create(model=base, training_file=prompts,
                           method={"type": "reinforcement", "reinforcement": {"grader": grader}}),
            400, r"python graders run the caller's code")
    refused(lambda: api.fine_tuning.jobs.retrieve("ftjob-nope"), 404, r"No fine-tuning job 'ftjob-nope'")
    refused(lambda: api.fine_tuning.jobs.cancel("ftjob-nope"), 404, r"No fine-tuning job")
    assert len(list(api.fine_tuning.jobs.list(limit=100))) == before


def test_cancel_pause_and_resume_of_jobs_that_wait(served):
    server, tmp = served
    api = client(server)
    chats = upload(api, chat_rows(20))
    base = server.service.registry.base.id
    first = api.fine_tuning.jobs.create(model=base, training_file=chats, extra_body={"tunelab": TINY})
    second = api.fine_tuning.jobs.create(model=base, training_file=chats, extra_body={"tunelab": TINY})
    assert api.fine_tuning.jobs.cancel(first.id).status == "cancelled"
    refused(lambda: api.fine_tuning.jobs.cancel(first.id), 400, r"has already cancelled")
    assert api.fine_tuning.jobs.pause(second.id).status == "paused"
    refused(lambda: api.fine_tuning.jobs.resume(first.id), 400, r"only a paused job can be resumed")
    page = api.fine_tuning.jobs.list(limit=1)
    assert [job.id for job in page.data] == [second.id] and page.has_more
    assert [job.id for job in api.fine_tuning.jobs.list(limit=1, after=second.id).data] == [first.id]
    assert api.fine_tuning.jobs.resume(second.id).status == "queued"
    api.fine_tuning.jobs.cancel(second.id)
    work(tmp)  # nothing left to run
    assert api.fine_tuning.jobs.retrieve(second.id).status == "cancelled"
    events = [event.message for event in api.fine_tuning.jobs.list_events(second.id)]
    assert events[:3] == ["Job cancelled", "Job resumed; queued to go on from its last checkpoint", "Job paused"]


def test_a_full_queue_answers_429(served, monkeypatch):
    server, tmp = served
    api = client(server)
    chats = upload(api, chat_rows(20))
    monkeypatch.setattr(server.service, "jobs", replace(server.service.jobs, max_waiting=0))
    refused(lambda: api.fine_tuning.jobs.create(model=server.service.registry.base.id, training_file=chats), 429,
            r"jobs are waiting")


def test_one_worker_per_device_and_a_missing_serve_folder_are_one_line(capsys, tmp_path, home):
    from tests.unit.test_cli import invoke, one_error_line
    from tunelab.jobs.worker import Worker, hold_device

    code, _, err = invoke(capsys, "worker", "--serve-dir", str(tmp_path / "nowhere"), "--once")
    assert code == 2 and one_error_line(err).endswith("not a folder (start `tunelab serve` there first)")
    serve = tmp_path / "serve"
    serve.mkdir()
    lock = hold_device(Worker(serve.resolve(), home, "cpu", "host:123"))
    try:
        code, _, err = invoke(capsys, "worker", "--serve-dir", str(serve), "--device", "cpu", "--once")
        assert code == 2 and "another worker (host:123) already runs the jobs" in one_error_line(err)
    finally:
        lock.close()
    code, _, err = invoke(capsys, "worker", "--serve-dir", str(serve), "--device", "cpu", "--once")
    assert code == 0, err  # the device is free again; an empty queue: nothing to do


def test_a_job_that_cannot_train_fails_with_the_reason_and_the_worker_goes_on(served):
    server, tmp = served
    api = client(server)
    base = server.service.registry.base.id
    # a recipe only the run itself can refuse: every row longer than max_length
    bad = api.fine_tuning.jobs.create(model=base, training_file=upload(api, chat_rows(20, seed=9)),
                                      extra_body={"tunelab": {**TINY, "data": {"max_length": 8}}})
    good = api.fine_tuning.jobs.create(model=base, training_file=upload(api, chat_rows(40, seed=4)),
                                       extra_body={"tunelab": TINY})
    work(tmp)
    bad, good = api.fine_tuning.jobs.retrieve(bad.id), api.fine_tuning.jobs.retrieve(good.id)
    assert bad.status == "failed" and bad.error.code == "job_failed" and bad.error.message and bad.finished_at
    assert bad.fine_tuned_model is None
    assert next(iter(api.fine_tuning.jobs.list_events(bad.id))).message == f"Job failed: {bad.error.message}"
    assert good.status == "succeeded"
