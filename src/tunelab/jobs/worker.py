"""The worker: takes jobs from the queue one at a time and runs each through the same lifecycle as `tunelab train`
(data doctor, training, evaluation against the base, the objective gate), in this process.

One worker per device: it holds an exclusive lock on `<serve>/jobs/worker-<device>.lock` (the kernel drops it when
the process dies, even by kill -9). So a job marked running on this device while this worker holds the lock was
left by a worker that died: it is taken up first and goes on from its run's last checkpoint (`--resume`), which
gives the weights an uninterrupted run would have (tests/reliability checks resume exactness).
"""

from __future__ import annotations

import csv
import fcntl
import io
import json
import os
import socket
import sqlite3
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from tunelab.errors import StopRequested, TunelabError
from tunelab.jobs.db import connect, transaction
from tunelab.jobs.queue import add_event, now

POLL_S = 1.0


@dataclass(frozen=True)
class Worker:
    serve_dir: Path
    home: Path
    device: str  # what the jobs train on: cpu, cuda, mps (resolved, never auto)
    name: str  # host:pid, in each job it runs

    @property
    def lock_path(self) -> Path:
        return self.serve_dir / "jobs" / f"worker-{self.device}.lock"


def hold_device(worker: Worker, wait: bool = False, say: Callable[[str], None] = print) -> Any:
    """The device's lock, held until the process ends. A second worker on the same device is one line, or, with
    `wait`, waits for the first to end (what `tunelab serve --jobs` does when a worker outlived an earlier server)."""
    worker.lock_path.parent.mkdir(parents=True, exist_ok=True)
    handle = worker.lock_path.open("a+")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.seek(0)
        holder = handle.read().strip() or "another process"
        if not wait:
            handle.close()
            raise TunelabError(f"another worker ({holder}) already runs the jobs of {worker.serve_dir} on device "
                               f"{worker.device}; one job runs at a time per device") from None
        say(f"waiting for worker {holder} to end: one job runs at a time per device")
        fcntl.flock(handle, fcntl.LOCK_EX)
    handle.seek(0)
    handle.truncate()
    handle.write(worker.name)
    handle.flush()
    return handle


def run_worker(serve_dir: Path, home: Path, device: str, say: Callable[[str], None] = print,
               once: bool = False, should_stop: Callable[[], bool] = lambda: False, wait: bool = False) -> None:
    """Run jobs until `should_stop` (or, with `once`, until the queue is empty)."""
    worker = Worker(Path(serve_dir).resolve(), home, device, f"{socket.gethostname()}:{os.getpid()}")
    lock = hold_device(worker, wait, say)
    connection = connect(worker.serve_dir)
    try:
        while not should_stop():
            job = claim(connection, worker)
            if job is None:
                if once:
                    return
                time.sleep(POLL_S)
                continue
            say(f"job {job['id']}: running")
            status = run_job(connection, worker, job)
            say(f"job {job['id']}: {status}")
    finally:
        connection.close()
        lock.close()


def claim(connection: sqlite3.Connection, worker: Worker) -> sqlite3.Row | None:
    """The next job: one left running on this device by a worker that died, else the oldest waiting one."""
    with transaction(connection):
        orphan = connection.execute("SELECT * FROM jobs WHERE status = 'running' AND device = ? ORDER BY seq "
                                    "LIMIT 1", (worker.device,)).fetchone()
        job = orphan or connection.execute("SELECT * FROM jobs WHERE status IN ('validating_files', 'queued') "
                                           "ORDER BY seq LIMIT 1").fetchone()
        if job is None:
            return None
        if orphan:
            add_event(connection, job["id"], f"The worker running this job stopped ({orphan['worker']}); worker "
                                             f"{worker.name} goes on from the last checkpoint")
        if job["status"] == "validating_files":
            add_event(connection, job["id"], "Files validated, moving job to queued state")
        if not orphan:
            add_event(connection, job["id"], f"Fine-tuning job started on {worker.device}")
        connection.execute("UPDATE jobs SET status = 'running', worker = ?, device = ? WHERE id = ?",
                           (worker.name, worker.device, job["id"]))
    return connection.execute("SELECT * FROM jobs WHERE id = ?", (job["id"],)).fetchone()


def fine_tuned_name(job: sqlite3.Row) -> str:
    """OpenAI's ft:<base>:<suffix>:<id> (suffix empty when none was given)."""
    return f"ft:{job['model']}:{job['suffix'] or ''}:{job['id']}"


def run_job(connection: sqlite3.Connection, worker: Worker, job: sqlite3.Row) -> str:
    """Train, evaluate and record one job; its final status."""
    from rich.console import Console

    from tunelab.config.load import validate_recipe
    from tunelab.jobs.progress import JobProgress
    from tunelab.train.lifecycle import run_recipe

    if job["requested"] == "cancel":  # asked while its worker was gone
        return finish(connection, job["id"], "cancelled", "Job cancelled")
    name = fine_tuned_name(job)
    console = Console(file=io.StringIO(), width=120)  # the job's story is its events; the run keeps its files
    try:
        recipe = validate_recipe(json.loads(job["recipe"]), source=f"job {job['id']}")
        run_dir = Path(recipe.output.dir)
        resume = (run_dir / "run.json").is_file()
        with transaction(connection):
            connection.execute("UPDATE jobs SET run_dir = ? WHERE id = ?", (str(run_dir), job["id"]))
        progress = JobProgress(connection, job["id"], name, worker.serve_dir)
        outcome = run_recipe(recipe, worker.home, console, resume=resume, device=worker.device,
                             callbacks=(progress,))
    except KeyboardInterrupt:  # the worker was told to stop (Ctrl-C, SIGTERM): the job waits for the next one
        finish(connection, job["id"], "queued", "The worker stopped; the job goes on from its last checkpoint when a "
                                                "worker runs again", finished=False, level="warn")
        raise
    except StopRequested as stop:
        if stop.what == "pause":
            return finish(connection, job["id"], "paused", "Job paused; resume goes on from the last checkpoint",
                          finished=False)
        return finish(connection, job["id"], "cancelled", "Job cancelled")
    except TunelabError as error:
        return fail(connection, job["id"], "job_failed", str(error))
    except Exception as error:  # a bug or an exhausted machine: the job fails with the reason, the worker goes on
        return fail(connection, job["id"], "server_error", f"{type(error).__name__}: {error}")
    return succeed(connection, worker, job, name, outcome)


def retrain_gate(connection: sqlite3.Connection, worker: Worker, job: sqlite3.Row, outcome: Any) -> dict | None:
    """A retrain job (deploy/retrain.py): its run against the version in service, promoted or kept as a candidate;
    what was decided, for the job's verdict. None for a client's job."""
    from tunelab.deploy.retrain import gate, retrain_info

    info = retrain_info(job)
    if info is None:
        return None

    def say(text: str, level: str = "info") -> None:
        with transaction(connection):
            add_event(connection, job["id"], text, level=level)

    try:
        decision = gate(worker.serve_dir, job["id"], info, outcome.run.root, outcome.evaluation, worker.home,
                        worker.device, say)
    except Exception as error:  # the job's training stands; the version in service stays, and the job says why
        reason = str(error) if isinstance(error, TunelabError) else f"{type(error).__name__}: {error}"
        say(f"Not promoted: the comparison with the version in service failed: {reason}", level="error")
        return {"promoted": False, "name": info["name"], "reasons": [reason]}
    version = decision.version
    if decision.promoted:
        say(f"Promoted: {version.label} now serves {version.name} ({version.run_dir})")
    else:
        say(f"Not promoted: kept as candidate {version.label}: {'; '.join(decision.reasons)}", level="warn")
    return decision.to_json()


def succeed(connection: sqlite3.Connection, worker: Worker, job: sqlite3.Row, name: str, outcome: Any) -> str:
    evaluation, training = outcome.evaluation, outcome.record.training
    results = write_results(worker.serve_dir, outcome.run.train_log)
    verdict = evaluation.objective.model_dump(mode="json") if evaluation and evaluation.objective else None
    with transaction(connection):
        add_event(connection, job["id"], f"New fine-tuned model created: {name}")
        if evaluation is not None:
            add_event(connection, job["id"], evaluation_line(evaluation), kind="message",
                      data={"metric": evaluation.primary_metric, "base": evaluation.base, "tuned": evaluation.tuned,
                            "delta_intervals": evaluation.intervals.delta if evaluation.intervals else None})
        if verdict is not None:
            add_event(connection, job["id"], f"Objective {'met' if verdict['met'] else 'not met'}: "
                                             f"{verdict['summary']}", level="info" if verdict["met"] else "warn")
    promotion = retrain_gate(connection, worker, job, outcome)
    if promotion is not None:
        verdict = {**(verdict or {}), "promotion": promotion}
    with transaction(connection):
        connection.execute("UPDATE jobs SET fine_tuned_model = ?, trained_tokens = ?, result_files = ?, verdict = ? "
                           "WHERE id = ?", (name, training.tokens_seen if training else None, json.dumps(results),
                                            json.dumps(verdict) if verdict else None, job["id"]))
    return finish(connection, job["id"], "succeeded", "The job has successfully completed")


def evaluation_line(evaluation: Any) -> str:
    metric = evaluation.primary_metric
    base, tuned = evaluation.base.get(metric), evaluation.tuned.get(metric)
    interval = (evaluation.intervals.delta or {}).get(metric) if evaluation.intervals else None
    change = f" (change {interval[0]:+.4g} to {interval[1]:+.4g}, 95% interval)" if interval else ""
    return f"Evaluation on {evaluation.rows} held-out rows: {metric} base {base:.4g}, tuned {tuned:.4g}{change}"


def finish(connection: sqlite3.Connection, job_id: str, status: str, message: str, finished: bool = True,
           level: str = "info") -> str:
    with transaction(connection):
        add_event(connection, job_id, message, level=level)
        connection.execute("UPDATE jobs SET status = ?, requested = NULL, finished_at = ?, estimated_finish = NULL "
                           "WHERE id = ?", (status, now() if finished else None, job_id))
    return status


def fail(connection: sqlite3.Connection, job_id: str, code: str, message: str) -> str:
    with transaction(connection):
        connection.execute("UPDATE jobs SET error = ? WHERE id = ?",
                           (json.dumps({"code": code, "message": message, "param": None}), job_id))
    return finish(connection, job_id, "failed", f"Job failed: {message}", level="error")


RESULT_COLUMNS = ("step", "train_loss", "train_mean_token_accuracy", "valid_loss", "valid_mean_token_accuracy")


def write_results(serve_dir: Path, train_log: Path) -> list[str]:
    """OpenAI's result file: a CSV of the step metrics, stored as a file of purpose fine-tune-results."""
    from tunelab.jobs.files import add_result_file
    from tunelab.jobs.progress import openai_metrics
    from tunelab.train.callbacks import logged

    rows = [openai_metrics(entry["step"], entry) for entry in (logged(train_log) if train_log.is_file() else [])]
    text = io.StringIO()
    writer = csv.DictWriter(text, fieldnames=RESULT_COLUMNS, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return [add_result_file(serve_dir, "step_metrics.csv", text.getvalue().encode()).id]
