"""The jobs database, `jobs.sqlite` in the serve folder: uploaded files, fine-tuning jobs, their events and
checkpoints. It is the queue too, so a job outlives the server and the worker that ran it.

Who writes what (SQLite takes one writer at a time; each row has one owner):
  files         the server (upload, delete)
  jobs          the server creates a row and sets `requested` (cancel, pause, resume); the worker that claimed it
                writes everything else (status, run_dir, results)
  events        the worker (and the server, for the events of what it did: created, cancel requested)
  checkpoints   the worker
Every connection is in WAL mode with a busy timeout, so readers never block the writer and two writers wait their
turn instead of failing.
"""

from __future__ import annotations

import secrets
import sqlite3
import string
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

DATABASE = "jobs.sqlite"
BUSY_TIMEOUT_MS = 30_000
ALPHABET = string.ascii_letters + string.digits

TABLES = {
    "files": {
        "id": "TEXT PRIMARY KEY",  # file-<24 letters and digits>
        "created_at": "INTEGER NOT NULL",  # unix seconds, as OpenAI gives them
        "filename": "TEXT NOT NULL",  # as uploaded (only shown; never a path)
        "purpose": "TEXT NOT NULL",
        "bytes": "INTEGER NOT NULL",
        "path": "TEXT NOT NULL",  # relative to the serve folder
        "format": "TEXT",  # what the data doctor read it as (messages, preference, ...)
        "rows": "INTEGER",  # rows the doctor read
        "deleted": "INTEGER NOT NULL DEFAULT 0",
    },
    "jobs": {
        "id": "TEXT PRIMARY KEY",  # ftjob-<24 letters and digits>
        "seq": "INTEGER NOT NULL",  # creation order (list is newest first; `after` pages on it)
        "created_at": "INTEGER NOT NULL",
        "model": "TEXT NOT NULL",
        "training_file": "TEXT NOT NULL",
        "validation_file": "TEXT",
        "suffix": "TEXT",
        "seed": "INTEGER NOT NULL",
        "request": "TEXT NOT NULL",  # the create request as validated, JSON (method, hyperparameters, metadata)
        "recipe": "TEXT NOT NULL",  # JSON: the recipe the worker runs (jobs/recipe.py)
        "hyperparameters": "TEXT NOT NULL",  # JSON: what the job resolved ("auto" -> numbers)
        "status": "TEXT NOT NULL",  # validating_files queued running paused succeeded failed cancelled
        "requested": "TEXT",  # cancel | pause: asked by the server, acted on by the worker
        "error": "TEXT",  # JSON {code, message, param} or NULL
        "run_dir": "TEXT",  # relative to the serve folder
        "fine_tuned_model": "TEXT",
        "trained_tokens": "INTEGER",
        "estimated_finish": "INTEGER",
        "finished_at": "INTEGER",
        "result_files": "TEXT NOT NULL DEFAULT '[]'",  # JSON list of file ids
        "verdict": "TEXT",  # JSON: the objective gate's verdict on the evaluation
        "worker": "TEXT",  # who holds it: host:pid (whether it lives, the device lock says: worker.py)
        "device": "TEXT",  # the device the worker trains on
    },
    "events": {
        "seq": "INTEGER PRIMARY KEY AUTOINCREMENT",  # order; `after` pages on it
        "id": "TEXT NOT NULL UNIQUE",  # ftevent-<24>
        "job_id": "TEXT NOT NULL",
        "created_at": "INTEGER NOT NULL",
        "level": "TEXT NOT NULL",  # info | warn | error
        "message": "TEXT NOT NULL",
        "type": "TEXT NOT NULL",  # message | metrics
        "data": "TEXT",  # JSON
    },
    "checkpoints": {
        "seq": "INTEGER PRIMARY KEY AUTOINCREMENT",
        "id": "TEXT NOT NULL UNIQUE",  # ftckpt-<24>
        "job_id": "TEXT NOT NULL",
        "created_at": "INTEGER NOT NULL",
        "step": "INTEGER NOT NULL",
        "metrics": "TEXT NOT NULL",  # JSON: OpenAI's step metrics (train_loss, valid_loss, ...)
        "fine_tuned_model_checkpoint": "TEXT NOT NULL",
        "path": "TEXT NOT NULL",  # the checkpoint folder, relative to the serve folder
    },
}
INDEXES = ("CREATE INDEX IF NOT EXISTS events_job ON events (job_id, seq)",
           "CREATE INDEX IF NOT EXISTS checkpoints_job ON checkpoints (job_id, step)",
           "CREATE INDEX IF NOT EXISTS jobs_status ON jobs (status, seq)")


def database_path(serve_dir: Path) -> Path:
    return Path(serve_dir) / DATABASE


def connect(serve_dir: Path) -> sqlite3.Connection:
    """A connection to the serve folder's jobs database, creating it (and the folder) where missing. Rows come back
    as sqlite3.Row (by name). Not shared between threads: open one per thread."""
    Path(serve_dir).mkdir(parents=True, exist_ok=True)
    connection = sqlite3.connect(str(database_path(serve_dir)), timeout=BUSY_TIMEOUT_MS / 1000,
                                 isolation_level=None)  # autocommit; `transaction` opens one where needed
    connection.row_factory = sqlite3.Row
    connection.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
    connection.execute("PRAGMA journal_mode=WAL")
    for table, columns in TABLES.items():
        body = ", ".join(f"{name} {kind}" for name, kind in columns.items())
        connection.execute(f"CREATE TABLE IF NOT EXISTS {table} ({body})")
    for index in INDEXES:
        connection.execute(index)
    return connection


@contextmanager
def transaction(connection: sqlite3.Connection) -> Iterator[sqlite3.Connection]:
    """BEGIN IMMEDIATE ... COMMIT: the write lock is taken at the start, so a read-then-write (claiming a job)
    cannot interleave with another writer's."""
    connection.execute("BEGIN IMMEDIATE")
    try:
        yield connection
    except BaseException:
        connection.execute("ROLLBACK")
        raise
    connection.execute("COMMIT")


def new_id(prefix: str) -> str:
    """OpenAI-looking ids: file-, ftjob-, ftevent-, ftckpt- and 24 random letters and digits."""
    return prefix + "".join(secrets.choice(ALPHABET) for _ in range(24))
