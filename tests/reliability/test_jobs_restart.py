"""Fine-tuning jobs that are stopped on the way: a worker killed with SIGKILL mid-job (a new worker goes on from the
last checkpoint), a running job paused and resumed, a running job cancelled. The first two end with the weights of
the same job run without a stop."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from tests.unit.test_jobs_api import TINY, chat_rows, upload, wait_for
from tests.unit.test_serve import LiveServer
from tunelab.jobs.db import connect
from tunelab.serve.settings import ServeSettings

TUNELAB = Path(sys.executable).with_name("tunelab")
LONG = {**TINY, "train": {**TINY["train"], "max_steps": 60, "save_every": 4, "eval_every": 1000}}


@pytest.fixture(scope="module")
def served(tiny_checkpoint, tmp_path_factory):
    from tunelab.serve.server import build_service

    tmp = tmp_path_factory.mktemp("restart")
    settings = ServeSettings(serve_dir=tmp / "serve", max_tokens=32)
    server = LiveServer(build_service([], str(tiny_checkpoint), settings, tmp / "home", say=lambda _: None))
    api = server.client(None)
    training = upload(api, chat_rows(60))
    yield server, api, training, tmp
    server.stop()


def create(served) -> str:
    server, api, training, _ = served
    return api.fine_tuning.jobs.create(model=server.service.registry.base.id, training_file=training, seed=7,
                                       extra_body={"tunelab": LONG}).id


def adapter(tmp: Path, job_id: str) -> dict:
    from safetensors.torch import load_file

    return load_file(str(tmp / "serve" / "jobs" / job_id / "run" / "model" / "adapter_model.safetensors"))


def same_weights(first: dict, second: dict) -> bool:
    import torch

    return first.keys() == second.keys() and all(torch.allclose(first[k], second[k], atol=1e-6) for k in first)


@pytest.fixture(scope="module")
def uninterrupted(served):
    from tunelab.jobs.worker import run_worker

    job_id = create(served)
    run_worker(served[3] / "serve", served[3] / "home", "cpu", say=lambda _: None, once=True)
    assert served[1].fine_tuning.jobs.retrieve(job_id).status == "succeeded"
    return adapter(served[3], job_id)


def status(tmp: Path, job_id: str) -> str:
    with connect(tmp / "serve") as connection:
        return connection.execute("SELECT status FROM jobs WHERE id = ?", (job_id,)).fetchone()[0]


def checkpoints(tmp: Path, job_id: str) -> list[int]:
    with connect(tmp / "serve") as connection:
        return [row[0] for row in connection.execute("SELECT step FROM checkpoints WHERE job_id = ?", (job_id,))]


def worker_process(tmp: Path, *options: str) -> subprocess.Popen:
    env = {**os.environ, "TUNELAB_HOME": str(tmp / "home")}
    return subprocess.Popen([str(TUNELAB), "worker", "--serve-dir", str(tmp / "serve"), "--device", "cpu", *options],
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def test_a_job_whose_worker_is_killed_finishes_on_the_next_worker_with_the_same_weights(served, uninterrupted):
    _, api, _, tmp = served
    job_id = create(served)
    first = worker_process(tmp)
    try:
        wait_for(lambda: any(step >= 8 for step in checkpoints(tmp, job_id)), seconds=120)
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait(timeout=30)
    assert status(tmp, job_id) == "running"  # nobody said otherwise: the worker died mid-job
    second = worker_process(tmp, "--once")
    assert second.wait(timeout=300) == 0, second.stderr.read()
    job = api.fine_tuning.jobs.retrieve(job_id)
    assert job.status == "succeeded", job.error
    messages = [event.message for event in api.fine_tuning.jobs.list_events(job_id, limit=200)]
    assert any("goes on from the last checkpoint" in message for message in messages)
    assert any(message.startswith("Resumed from the checkpoint at step ") for message in messages)
    steps = [event.data["step"] for event in api.fine_tuning.jobs.list_events(job_id, limit=200)
             if event.type == "metrics" and "train_loss" in event.data]
    assert sorted(steps) == list(range(1, 61))  # each step listed once, though some were trained twice
    assert same_weights(adapter(tmp, job_id), uninterrupted)


def run_in_thread(tmp: Path) -> tuple[threading.Thread, threading.Event]:
    from tunelab.jobs.worker import run_worker

    done = threading.Event()
    thread = threading.Thread(target=run_worker, args=(tmp / "serve", tmp / "home", "cpu"),
                              kwargs={"say": lambda _: None, "should_stop": done.is_set}, daemon=True)
    thread.start()
    return thread, done


def test_a_paused_job_saves_a_checkpoint_and_resumes_to_the_same_weights(served, uninterrupted):
    _, api, _, tmp = served
    job_id = create(served)
    thread, done = run_in_thread(tmp)
    try:
        wait_for(lambda: status(tmp, job_id) == "running" and checkpoints(tmp, job_id), seconds=120)
        api.fine_tuning.jobs.pause(job_id)
        wait_for(lambda: status(tmp, job_id) == "paused", seconds=60)
        saved = max(checkpoints(tmp, job_id))
        trained = [event.data["step"] for event in api.fine_tuning.jobs.list_events(job_id, limit=200)
                   if event.type == "metrics" and "train_loss" in event.data]
        assert max(trained) == saved < 60  # it stopped at the step it saved, before the end
        time.sleep(1.5)  # the worker polls: a paused job stays paused
        assert status(tmp, job_id) == "paused"
        api.fine_tuning.jobs.resume(job_id)
        wait_for(lambda: status(tmp, job_id) == "succeeded", seconds=300)
    finally:
        done.set()
        thread.join(timeout=60)
    messages = [event.message for event in api.fine_tuning.jobs.list_events(job_id, limit=200)]
    assert f"Resumed from the checkpoint at step {saved}" in messages
    assert same_weights(adapter(tmp, job_id), uninterrupted)


def test_a_running_job_cancelled_stops_and_is_not_served(served):
    from tunelab.run.folder import RunDir
    from tunelab.run.record import read_record

    server, api, _, tmp = served
    job_id = create(served)
    thread, done = run_in_thread(tmp)
    try:
        wait_for(lambda: checkpoints(tmp, job_id), seconds=120)
        api.fine_tuning.jobs.cancel(job_id)
        wait_for(lambda: status(tmp, job_id) == "cancelled", seconds=60)
    finally:
        done.set()
        thread.join(timeout=60)
    job = api.fine_tuning.jobs.retrieve(job_id)
    steps = [event.data["step"] for event in api.fine_tuning.jobs.list_events(job_id, limit=200)
             if event.type == "metrics"]
    assert job.fine_tuned_model is None and job.finished_at and max(steps) < 60
    assert read_record(RunDir(tmp / "serve" / "jobs" / job_id / "run")).status == "interrupted"


def test_a_job_survives_its_server_killed_and_started_again(served, uninterrupted, tmp_path):
    """`tunelab serve --jobs` killed with SIGKILL mid-job: its worker is stopped with it (the job goes back to the
    queue), and the next `tunelab serve --jobs` finishes the job with the uninterrupted job's weights."""
    import openai

    from tests.unit.test_serve_keys import free_port

    server, _, _, tmp = served
    port, serve_dir = free_port(), tmp_path / "serve"
    command = [str(TUNELAB), "serve", "--base", server.service.registry.base.root, "--jobs", "--serve-dir",
               str(serve_dir), "--port", str(port)]
    env = {**os.environ, "TUNELAB_HOME": str(tmp / "home")}
    api = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="none", max_retries=0, timeout=30)

    def start() -> subprocess.Popen:
        process = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_for(lambda: answers(api), seconds=120)
        return process

    first = start()
    try:
        job_id = api.fine_tuning.jobs.create(model=server.service.registry.base.id, seed=7,
                                             training_file=upload(api, chat_rows(60)),
                                             extra_body={"tunelab": LONG}).id
        wait_for(lambda: any(step >= 8 for step in checkpoints(tmp_path, job_id)), seconds=120)
    finally:
        first.kill()
        first.wait(timeout=30)
    wait_for(lambda: status(tmp_path, job_id) == "queued", seconds=60)  # the worker died with its server
    second = start()
    try:
        wait_for(lambda: status(tmp_path, job_id) == "succeeded", seconds=300)
        assert api.chat.completions.create(model=api.fine_tuning.jobs.retrieve(job_id).fine_tuned_model,
                                           max_tokens=4, messages=[{"role": "user", "content": "abcd"}]).choices
    finally:
        second.terminate()
        second.wait(timeout=60)
    assert same_weights(adapter(tmp_path, job_id), uninterrupted)


def answers(api) -> bool:
    try:
        api.models.list()
        return True
    except Exception:  # not listening yet
        return False
