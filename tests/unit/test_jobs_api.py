"""OpenAI's fine-tuning API on `tunelab serve`, driven by the official openai client: a job is created from an
uploaded file, the worker runs it through the lifecycle (tiny model), events, checkpoints and the result file come
back in OpenAI's shapes, and the finished model is served at once under ft:<base>:<suffix>:<job id>."""

from __future__ import annotations

import csv
import io
import json
import time
from pathlib import Path

import openai
import pytest

from tests.conftest import reverse_rows
from tests.unit.test_serve import LiveServer
from tunelab.jobs.db import connect, new_id
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


def store_file(serve_dir: Path, rows: list[dict], fmt: str = "messages") -> str:
    """An upload as the files API stores it."""
    file_id = new_id("file-")
    data = "".join(json.dumps(row) + "\n" for row in rows).encode()
    (serve_dir / "files").mkdir(parents=True, exist_ok=True)
    (serve_dir / "files" / f"{file_id}.jsonl").write_bytes(data)
    with connect(serve_dir) as connection:
        connection.execute("INSERT INTO files (id, created_at, filename, purpose, bytes, path, format, rows) VALUES "
                           "(?, ?, 'train.jsonl', 'fine-tune', ?, ?, ?, ?)",
                           (file_id, int(time.time()), len(data), f"files/{file_id}.jsonl", fmt, len(rows)))
    return file_id


@pytest.fixture(scope="module")
def served(tiny_checkpoint, tmp_path_factory):
    from tunelab.serve.server import build_service

    tmp = tmp_path_factory.mktemp("jobs")
    settings = ServeSettings(serve_dir=tmp / "serve", api_keys=frozenset({KEY}), max_tokens=64)
    server = LiveServer(build_service([], str(tiny_checkpoint), settings, tmp / "home", say=lambda _: None))
    yield server, tmp
    server.stop()


def client(server) -> openai.OpenAI:
    return server.client(KEY)


def work(tmp: Path) -> None:
    """The worker, in this process, until the queue is empty."""
    from tunelab.jobs.worker import run_worker

    run_worker(tmp / "serve", tmp / "home", "cpu", say=lambda _: None, once=True)


def wait_for(condition, seconds: float = 20) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.1)


def test_a_supervised_job_trains_reports_and_is_served(served):
    server, tmp = served
    api = client(server)
    base = server.service.registry.base.id
    training = store_file(tmp / "serve", chat_rows(60))
    job = api.fine_tuning.jobs.create(model=base, training_file=training, suffix="rev", seed=3,
                                      hyperparameters={"batch_size": 4}, extra_body={"tunelab": TINY})
    assert job.status == "validating_files" and job.fine_tuned_model is None
    assert job.hyperparameters.batch_size == 4 and job.hyperparameters.n_epochs == 3
    work(tmp)
    job = api.fine_tuning.jobs.retrieve(job.id)
    assert job.status == "succeeded", job.error
    assert job.fine_tuned_model == f"ft:{base}:rev:{job.id}" and job.trained_tokens > 0 and job.finished_at
    events = list(api.fine_tuning.jobs.list_events(job.id, limit=100))
    messages = [event.message for event in reversed(events)]
    assert messages[0].startswith("Validating training file") and messages[-1] == "The job has successfully completed"
    steps = [event.data["step"] for event in reversed(events) if event.type == "metrics"]
    assert steps == sorted(steps) and steps[-1] == 6
    assert all("train_loss" in event.data or "valid_loss" in event.data for event in events if event.type == "metrics")
    assert any(message.startswith("Evaluation on ") for message in messages)
    checkpoints = list(api.fine_tuning.jobs.checkpoints.list(job.id))
    assert [c.step_number for c in checkpoints] == [6, 4, 2]
    assert checkpoints[0].fine_tuned_model_checkpoint == f"{job.fine_tuned_model}:ckpt-step-6"
    with connect(tmp / "serve") as connection:
        (path,) = connection.execute("SELECT path FROM files WHERE id = ?", job.result_files).fetchone()
    table = list(csv.DictReader(io.StringIO((tmp / "serve" / path).read_text())))
    assert [int(row["step"]) for row in table if row["train_loss"]] == list(range(1, 7))
    wait_for(lambda: job.fine_tuned_model in [model.id for model in api.models.list()])
    answer = api.chat.completions.create(model=job.fine_tuned_model, max_tokens=8, temperature=0,
                                         messages=[{"role": "user", "content": "abcd"}])
    assert answer.model == job.fine_tuned_model and answer.choices[0].message.content is not None
