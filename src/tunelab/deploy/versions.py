"""The versions database, `versions.sqlite` in the serve folder: which run each name in service (e.g. `support-bot`)
points at, every version it had, and who switched it when.

A name has versions 1, 2, ...; one of them is `serving` at a time. The others are `candidate` (recorded, never
served: a retrain the gate refused, with its reason), `retired` (served before, replaced by a promotion) or
`rolled_back` (taken out of service by a rollback). `promotions` is the history, one row per switch.

Rollback goes back to the most recent version that served before the current one and was not itself rolled back, so
rolling back twice from v3 reaches v2, then v1 (never v3 again).

Writers: `tunelab promote`/`rollback` (the CLI), the server's admin endpoints, the worker (a retrain's gate), each in
an IMMEDIATE transaction with a busy timeout; the server applies what the database says (serve/deployments.py).
"""

from __future__ import annotations

import json
import sqlite3
import time
from contextlib import closing, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

from tunelab.errors import TunelabError

DATABASE = "versions.sqlite"
BUSY_TIMEOUT_MS = 30_000
STATUSES = ("serving", "candidate", "retired", "rolled_back")
SCHEMA = (
    "CREATE TABLE IF NOT EXISTS versions (seq INTEGER PRIMARY KEY, name TEXT NOT NULL, number INTEGER NOT NULL, "
    "run_dir TEXT NOT NULL, created_at REAL NOT NULL, status TEXT NOT NULL, metrics TEXT NOT NULL, verdict TEXT, "
    "reason TEXT, promoted_at REAL, promoted_by TEXT, job_id TEXT, UNIQUE (name, number))",
    "CREATE TABLE IF NOT EXISTS promotions (seq INTEGER PRIMARY KEY, name TEXT NOT NULL, number INTEGER NOT NULL, "
    "action TEXT NOT NULL, at REAL NOT NULL, by TEXT NOT NULL, reason TEXT)",
)


@dataclass(frozen=True)
class Version:
    name: str  # the name in service
    number: int  # 1, 2, ... per name
    run_dir: str  # resolved
    created_at: float
    status: str  # serving | candidate | retired | rolled_back
    metrics: dict[str, Any]  # headline: metric, base, tuned, interval; vs_serving where a retrain was compared
    verdict: dict[str, Any] | None  # the gate: met, summary, checks
    reason: str | None  # why a candidate was not promoted, why a version was rolled back
    promoted_at: float | None
    promoted_by: str | None
    job_id: str | None  # the retrain job that made it

    @property
    def label(self) -> str:
        return f"{self.name} v{self.number}"


@dataclass(frozen=True)
class Promotion:
    name: str
    number: int
    action: str  # promote | rollback
    at: float
    by: str
    reason: str | None


def database_path(serve_dir: Path) -> Path:
    return Path(serve_dir) / DATABASE


def connect(serve_dir: Path) -> sqlite3.Connection:
    Path(serve_dir).mkdir(parents=True, exist_ok=True)
    connection = sqlite3.connect(str(database_path(serve_dir)), timeout=BUSY_TIMEOUT_MS / 1000,
                                 isolation_level=None)
    connection.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
    connection.execute("PRAGMA journal_mode=WAL")
    for statement in SCHEMA:
        connection.execute(statement)
    return connection


@contextmanager
def transaction(serve_dir: Path) -> Iterator[sqlite3.Connection]:
    """A connection inside BEGIN IMMEDIATE ... COMMIT (jobs/db.py's), closed after."""
    from tunelab.jobs.db import transaction as immediate

    with closing(connect(serve_dir)) as connection, immediate(connection):
        yield connection


COLUMNS = ("name", "number", "run_dir", "created_at", "status", "metrics", "verdict", "reason", "promoted_at",
           "promoted_by", "job_id")


def to_version(row: tuple) -> Version:
    values = dict(zip(COLUMNS, row))
    values["metrics"] = json.loads(values["metrics"])
    values["verdict"] = json.loads(values["verdict"]) if values["verdict"] else None
    return Version(**values)


def read(serve_dir: Path, sql: str, args: tuple = ()) -> list[tuple]:
    if not database_path(serve_dir).is_file():
        return []
    with closing(connect(serve_dir)) as connection:
        return connection.execute(sql, args).fetchall()


def names(serve_dir: Path) -> list[str]:
    """The names with versions, in the order first recorded."""
    return [row[0] for row in read(serve_dir, "SELECT name FROM versions GROUP BY name ORDER BY MIN(seq)")]


def versions(serve_dir: Path, name: str) -> list[Version]:
    """`name`'s versions, newest first."""
    rows = read(serve_dir, f"SELECT {', '.join(COLUMNS)} FROM versions WHERE name = ? ORDER BY number DESC", (name,))
    return [to_version(row) for row in rows]


def current(serve_dir: Path, name: str) -> Version | None:
    rows = read(serve_dir, f"SELECT {', '.join(COLUMNS)} FROM versions WHERE name = ? AND status = 'serving'",
                (name,))
    return to_version(rows[0]) if rows else None


def serving(serve_dir: Path) -> dict[str, Version]:
    """Each name's version in service."""
    rows = read(serve_dir, f"SELECT {', '.join(COLUMNS)} FROM versions WHERE status = 'serving'")
    return {version.name: version for version in map(to_version, rows)}


def history(serve_dir: Path, name: str) -> list[Promotion]:
    """`name`'s switches, oldest first."""
    rows = read(serve_dir, "SELECT name, number, action, at, by, reason FROM promotions WHERE name = ? ORDER BY seq",
                (name,))
    return [Promotion(*row) for row in rows]


def headline(run_dir: Path) -> tuple[dict[str, Any], dict[str, Any] | None]:
    """(metrics, gate verdict) of a run, from its eval.json; empty where it was not evaluated."""
    from tunelab.run.folder import RunDir
    from tunelab.run.record import read_evaluation

    evaluation = read_evaluation(RunDir(Path(run_dir)))
    if evaluation is None:
        return {}, None
    metric = evaluation.primary_metric
    interval = (evaluation.intervals.delta or {}).get(metric) if evaluation.intervals else None
    metrics = {"metric": metric, "base": evaluation.base.get(metric), "tuned": evaluation.tuned.get(metric),
               "interval": interval, "rows": evaluation.rows}
    verdict = evaluation.objective.model_dump(mode="json") if evaluation.objective else None
    return metrics, verdict


def record(serve_dir: Path, name: str, run_dir: str | Path, status: str = "candidate",
           metrics: dict[str, Any] | None = None, verdict: dict[str, Any] | None = None, reason: str | None = None,
           job_id: str | None = None) -> Version:
    """A new version of `name` (or the existing one with the same run folder: a run is one version of a name)."""
    from tunelab.serve.registry import check_id

    check_id(name, "name")
    run_dir = str(Path(run_dir).resolve())
    found, evaluated = headline(Path(run_dir))
    metrics = {**found, **(metrics or {})}
    verdict = verdict if verdict is not None else evaluated
    with transaction(serve_dir) as connection:
        row = connection.execute("SELECT number FROM versions WHERE name = ? AND run_dir = ?",
                                 (name, run_dir)).fetchone()
        if row is not None:
            connection.execute("UPDATE versions SET metrics = ?, verdict = ?, reason = COALESCE(?, reason), "
                               "job_id = COALESCE(?, job_id) WHERE name = ? AND number = ?",
                               (json.dumps(metrics), json.dumps(verdict) if verdict else None, reason, job_id, name,
                                row[0]))
            number = row[0]
        else:
            number = connection.execute("SELECT COALESCE(MAX(number), 0) + 1 FROM versions WHERE name = ?",
                                        (name,)).fetchone()[0]
            connection.execute(f"INSERT INTO versions ({', '.join(COLUMNS)}) VALUES ({', '.join('?' * len(COLUMNS))})",
                               (name, number, run_dir, time.time(), status, json.dumps(metrics),
                                json.dumps(verdict) if verdict else None, reason, None, None, job_id))
    return next(version for version in versions(serve_dir, name) if version.number == number)


def version_number(which: str) -> int | None:
    """The number in `3` or `v3`; None where `which` is not a version number (then it is a run folder)."""
    digits = which[1:] if which.lower().startswith("v") else which
    return int(digits) if digits.isdigit() else None


def find(serve_dir: Path, name: str, which: str) -> Version:
    """A version of `name` by number (`3`, `v3`) or by run folder."""
    known = versions(serve_dir, name)
    number = version_number(which)
    if number is not None:
        for version in known:
            if version.number == number:
                return version
        raise TunelabError(f"'{name}' has no version {which} (versions: {numbers_text(known)})")
    run_dir = str(Path(which).resolve())
    for version in known:
        if version.run_dir == run_dir:
            return version
    raise TunelabError(f"{which}: not a version of '{name}' (versions: {numbers_text(known)})")


def numbers_text(known: list[Version]) -> str:
    return ", ".join(f"v{version.number}" for version in reversed(known)) or "none"


def promote(serve_dir: Path, name: str, number: int, by: str, reason: str | None = None,
            action: str = "promote") -> Version:
    """Make version `number` of `name` the one in service; the one serving before is retired."""
    at = time.time()
    with transaction(serve_dir) as connection:
        row = connection.execute("SELECT status FROM versions WHERE name = ? AND number = ?", (name, number)).fetchone()
        if row is None:
            raise TunelabError(f"'{name}' has no version {number}")
        if row[0] == "serving":
            raise TunelabError(f"{name} v{number} is already in service")
        before = connection.execute("SELECT number FROM versions WHERE name = ? AND status = 'serving'",
                                    (name,)).fetchone()
        if before is not None:
            rolled = action == "rollback"
            connection.execute("UPDATE versions SET status = ?, reason = COALESCE(?, reason) WHERE name = ? AND "
                               "number = ?", ("rolled_back" if rolled else "retired",
                                              (f"rolled back by {by}" + (f": {reason}" if reason else ""))
                                              if rolled else None, name, before[0]))
        connection.execute("UPDATE versions SET status = 'serving', promoted_at = ?, promoted_by = ? WHERE name = ? "
                           "AND number = ?", (at, by, name, number))
        connection.execute("INSERT INTO promotions (name, number, action, at, by, reason) VALUES (?, ?, ?, ?, ?, ?)",
                           (name, number, action, at, by, reason))
    return find(serve_dir, name, str(number))


def rollback_target(serve_dir: Path, name: str) -> Version:
    """The version a rollback of `name` returns to (see the module's docstring)."""
    now_serving = current(serve_dir, name)
    if now_serving is None:
        raise TunelabError(f"'{name}' has no version in service" if versions(serve_dir, name)
                           else f"'{name}' is not a name in service here (no versions recorded)")
    by_number = {version.number: version for version in versions(serve_dir, name)}
    for promotion in reversed(history(serve_dir, name)):
        candidate = by_number[promotion.number]
        if candidate.number != now_serving.number and candidate.status == "retired":
            return candidate
    raise TunelabError(f"{now_serving.label} is the only version that has served; nothing to roll back to")


def rollback(serve_dir: Path, name: str, by: str, reason: str | None = None) -> Version:
    return promote(serve_dir, name, rollback_target(serve_dir, name).number, by, reason, action="rollback")


def reject(serve_dir: Path, name: str, number: int, reason: str) -> None:
    """Keep version `number` as a candidate, saying why it is not in service."""
    with transaction(serve_dir) as connection:
        connection.execute("UPDATE versions SET reason = ? WHERE name = ? AND number = ?", (reason, name, number))


def check_servable(run_dir: str | Path, home: Path, like: str | None = None) -> None:
    """Refuse (TunelabError) a run a server cannot serve as a version: the server's own checks of a LoRA-family
    adapter (serve/registry.py lora_adapter), and the same base model as the run `like` (the version in service).
    The server checks again when it loads it."""
    from tunelab.run.models import open_run_models
    from tunelab.serve.registry import lora_adapter, same_model

    models = open_run_models(run_dir, home, "cpu")
    lora_adapter(models, run_dir)
    if like is not None:
        other = open_run_models(like, home, "cpu")
        if not same_model(models.base_path(), other.base_path()):
            raise TunelabError(f"{run_dir}: trained on '{models.base_name()}', but the version in service "
                               f"({like}) on '{other.base_name()}'")
