"""The server's side of the job queue: create, read, list and stop jobs, and write the events of what it did.
The worker (worker.py) does the rest. Every refusal is an APIError in OpenAI's shape and status."""

from __future__ import annotations

import json
import sqlite3
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tunelab.errors import TunelabError
from tunelab.jobs.db import new_id, transaction
from tunelab.jobs.request import CreateJob
from tunelab.serve.errors import APIError

WAITING = ("validating_files", "queued")
FINISHED = ("succeeded", "failed", "cancelled")
# What each method reads (the data doctor's format names, as the upload was read)
FITS = {"supervised": {"messages", "sharegpt", "prompt_completion", "alpaca", "text"},
        "dpo": {"preference", "openai_preference"},
        "reinforcement": {"prompt"}}
ROWS = {"preference": "preference pairs", "openai_preference": "preference pairs", "prompt": "prompt-only rows",
        "feedback": "feedback rows"}


@dataclass(frozen=True)
class JobsConfig:
    """What the server knows that a job needs: its serve folder, the base it serves (a job tunes that base, and
    its adapter joins it when done), and its limits."""

    serve_dir: Path
    base_id: str  # the id clients name it by
    base_source: str  # the built-in name or folder it was loaded from: the recipe's model.name
    max_waiting: int = 16  # jobs validating or queued; past it: 429
    allow_python_graders: bool = False  # a python grader runs the client's code in the worker


def now() -> int:
    return int(time.time())


def add_event(connection: sqlite3.Connection, job_id: str, message: str, level: str = "info",
              kind: str = "message", data: dict[str, Any] | None = None) -> None:
    connection.execute("INSERT INTO events (id, job_id, created_at, level, message, type, data) "
                       "VALUES (?, ?, ?, ?, ?, ?, ?)",
                       (new_id("ftevent-"), job_id, now(), level, message, kind,
                        None if data is None else json.dumps(data)))


def stored_file(serve_dir: Path, file_id: str, param: str) -> dict[str, Any]:
    """The upload's recipe data options (path, format, fields), or a 400 naming the parameter."""
    from tunelab.jobs.files import data_options

    try:
        return data_options(serve_dir, file_id)
    except APIError as error:
        raise APIError(400, f"invalid {param}: {error.message}", param=param, code="invalid_file") from None


def check_fit(body: CreateJob, training: dict[str, Any], config: JobsConfig) -> None:
    method = body.method_type()
    if training["format"] not in FITS[method]:
        kind = ROWS.get(training["format"], "conversations")
        wanted = {"supervised": "conversations", "dpo": "preference pairs", "reinforcement": "prompt-only rows"}
        raise APIError(400, f"method {method} cannot learn from training_file '{body.training_file}': it holds "
                            f"{kind} ({training['format']} format), and {method} learns from {wanted[method]}",
                       param="training_file", code="invalid_file_format")
    if method == "reinforcement":
        check_grader(body.method.reinforcement.grader, config, "method.reinforcement.grader")


def check_grader(grader: Any, config: JobsConfig, where: str) -> None:
    """A grader from the API must not run the client's code or read the server's files unless the server says so."""
    from tunelab.models.catalog import BUILTIN_MODELS

    if grader.type == "python" and not config.allow_python_graders:
        raise APIError(400, f"{where}: python graders run the caller's code; this server was started without "
                            "--allow-python-graders", param=where)
    if grader.type == "score_model" and grader.base_url is None and grader.model not in BUILTIN_MODELS:
        raise APIError(400, f"{where}: score_model model '{grader.model}' is not a built-in model "
                            f"({', '.join(BUILTIN_MODELS)}); a served judge needs base_url", param=where)
    for name, inner in (getattr(grader, "graders", None) or {}).items():
        check_grader(inner, config, f"{where}.graders.{name}")


def create_job(connection: sqlite3.Connection, body: CreateJob, config: JobsConfig) -> sqlite3.Row:
    from tunelab.config.load import validate_recipe
    from tunelab.jobs.recipe import job_recipe

    if body.model not in (config.base_id, config.base_source):
        raise APIError(400, f"model '{body.model}' cannot be fine-tuned here: this server tunes its base model "
                            f"'{config.base_id}'", param="model", code="model_not_available")
    training = stored_file(config.serve_dir, body.training_file, "training_file")
    validation = stored_file(config.serve_dir, body.validation_file, "validation_file") \
        if body.validation_file else None
    check_fit(body, training, config)
    job_id, seed = new_id("ftjob-"), body.seed if body.seed is not None else 42
    try:
        built = job_recipe(body, config.base_source, training, validation["train"] if validation else None,
                           config.serve_dir / "jobs" / job_id / "run", seed)
        validate_recipe(built.recipe, source="the job")
    except (ValueError, TunelabError) as error:
        raise APIError(400, str(error), param="tunelab") from None
    insert_job(connection, job_id, config.base_id, body.training_file, body.validation_file, body.suffix, seed,
               body.model_dump_json(exclude_none=True), built.recipe, built.hyperparameters, config.max_waiting,
               f"Validating training file: {body.training_file}"
               + (f" and validation file: {body.validation_file}" if body.validation_file else ""))
    return get_job(connection, job_id)


def insert_job(connection: sqlite3.Connection, job_id: str, model: str, training_file: str,
               validation_file: str | None, suffix: str | None, seed: int, request: str, recipe: dict[str, Any],
               hyperparameters: dict[str, Any], max_waiting: int, first_event: str) -> None:
    """A new job in the queue, validating_files, with its first event; 429 when `max_waiting` already wait. The
    server's create route and a retrain (deploy/retrain.py) both queue jobs through here."""
    with transaction(connection):
        waiting = connection.execute(f"SELECT COUNT(*) FROM jobs WHERE status IN {WAITING}").fetchone()[0]
        if waiting >= max_waiting:
            raise APIError(429, f"{waiting} jobs are waiting, the most this server queues; try again when one "
                                "has started", headers={"Retry-After": "60"})
        seq = connection.execute("SELECT COALESCE(MAX(seq), 0) + 1 FROM jobs").fetchone()[0]
        connection.execute(
            "INSERT INTO jobs (id, seq, created_at, model, training_file, validation_file, suffix, seed, request, "
            "recipe, hyperparameters, status) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, 'validating_files')",
            (job_id, seq, now(), model, training_file, validation_file, suffix, seed, request, json.dumps(recipe),
             json.dumps(hyperparameters)))
        add_event(connection, job_id, first_event)


def get_job(connection: sqlite3.Connection, job_id: str) -> sqlite3.Row:
    row = connection.execute("SELECT * FROM jobs WHERE id = ?", (job_id,)).fetchone()
    if row is None:
        raise APIError(404, f"No fine-tuning job '{job_id}'", param="fine_tuning_job_id", code="not_found")
    return row


def page(rows: list[sqlite3.Row], limit: int) -> tuple[list[sqlite3.Row], bool]:
    return rows[:limit], len(rows) > limit


def list_jobs(connection: sqlite3.Connection, after: str | None, limit: int) -> tuple[list[sqlite3.Row], bool]:
    """Newest first; `after` a job id: the jobs created before it."""
    start = get_job(connection, after)["seq"] if after else None
    rows = connection.execute("SELECT * FROM jobs WHERE (? IS NULL OR seq < ?) ORDER BY seq DESC LIMIT ?",
                              (start, start, limit + 1)).fetchall()
    return page(rows, limit)


def list_events(connection: sqlite3.Connection, job_id: str, after: str | None,
                limit: int) -> tuple[list[sqlite3.Row], bool]:
    """Newest first, as OpenAI lists them; `after` an event id: the older ones."""
    return job_page(connection, "events", "event", job_id, after, limit)


def list_checkpoints(connection: sqlite3.Connection, job_id: str, after: str | None,
                     limit: int) -> tuple[list[sqlite3.Row], bool]:
    """Newest first; `after` a checkpoint id."""
    return job_page(connection, "checkpoints", "checkpoint", job_id, after, limit)


def job_page(connection: sqlite3.Connection, table: str, noun: str, job_id: str, after: str | None,
             limit: int) -> tuple[list[sqlite3.Row], bool]:
    """A page of a job's events or checkpoints, newest first, older than `after` (an id of the same job)."""
    get_job(connection, job_id)
    start = None
    if after:
        found = connection.execute(f"SELECT seq FROM {table} WHERE id = ? AND job_id = ?", (after, job_id)).fetchone()
        if found is None:
            raise APIError(404, f"No {noun} '{after}' in job '{job_id}'", param="after")
        start = found["seq"]
    rows = connection.execute(f"SELECT * FROM {table} WHERE job_id = ? AND (? IS NULL OR seq < ?) ORDER BY seq DESC "
                              "LIMIT ?", (job_id, start, start, limit + 1)).fetchall()
    return page(rows, limit)


def cancel_job(connection: sqlite3.Connection, job_id: str) -> sqlite3.Row:
    """A waiting or paused job is cancelled at once; a running one is asked to stop (its worker stops within one
    optimizer step and says cancelled)."""
    with transaction(connection):
        job = get_job(connection, job_id)
        if job["status"] in FINISHED:
            raise APIError(400, f"Job '{job_id}' has already {job['status']}; only a job that has not finished can "
                                "be cancelled", param="fine_tuning_job_id", code="job_finished")
        if job["status"] == "running":
            connection.execute("UPDATE jobs SET requested = 'cancel' WHERE id = ?", (job_id,))
            add_event(connection, job_id, "Cancellation requested; the job stops after its current step")
        else:
            connection.execute("UPDATE jobs SET status = 'cancelled', finished_at = ?, requested = NULL "
                               "WHERE id = ?", (now(), job_id))
            add_event(connection, job_id, "Job cancelled")
    return get_job(connection, job_id)


def pause_job(connection: sqlite3.Connection, job_id: str) -> sqlite3.Row:
    """A running job saves a checkpoint at its next step and stops; a waiting one is set aside. Resume goes on from
    the checkpoint."""
    with transaction(connection):
        job = get_job(connection, job_id)
        if job["status"] not in ("running", *WAITING):
            raise APIError(400, f"Job '{job_id}' is {job['status']}; only a running or queued job can be paused",
                           param="fine_tuning_job_id", code="invalid_state")
        if job["status"] == "running":
            connection.execute("UPDATE jobs SET requested = 'pause' WHERE id = ?", (job_id,))
            add_event(connection, job_id, "Pause requested; the job saves a checkpoint after its current step")
        else:
            connection.execute("UPDATE jobs SET status = 'paused' WHERE id = ?", (job_id,))
            add_event(connection, job_id, "Job paused")
    return get_job(connection, job_id)


def resume_job(connection: sqlite3.Connection, job_id: str) -> sqlite3.Row:
    with transaction(connection):
        job = get_job(connection, job_id)
        if job["status"] != "paused":
            raise APIError(400, f"Job '{job_id}' is {job['status']}; only a paused job can be resumed",
                           param="fine_tuning_job_id", code="invalid_state")
        connection.execute("UPDATE jobs SET status = 'queued', requested = NULL WHERE id = ?", (job_id,))
        add_event(connection, job_id, "Job resumed; queued to go on from its last checkpoint")
    return get_job(connection, job_id)
