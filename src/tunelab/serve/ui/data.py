"""What the dashboard shows, read from the run folders and the serve folder's databases: plain functions returning
data (pages.py turns it into HTML). Nothing here writes, except `cancel_job`, which is the API's own function.

A run is named in URLs by an opaque id (a hash of its resolved folder) and only runs the server knows are listed
or served (`known_runs`): a report is opened by looking its id up there, never by a path from the request.
"""

from __future__ import annotations

import hashlib
import json
import math
import sqlite3
import time
from contextlib import closing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tunelab.errors import TunelabError
from tunelab.monitor.scores import Point, Score, Series
from tunelab.run.folder import RunDir
from tunelab.run.listing import RunSummary, find_runs, summarize_run

MAX_RUNS = 100  # runs listed (newest first): each costs reading its run.json and train_log.jsonl
MAX_JOBS = 50
MAX_EVENTS = 200
GENERATION = ("/v1/chat/completions", "/v1/completions")
WINDOW_BUCKETS = 24  # points per traffic plot


def run_id(path: Path) -> str:
    return hashlib.sha256(str(Path(path).resolve()).encode("utf-8")).hexdigest()[:16]


# ---- runs -------------------------------------------------------------------------------------------------------
def known_runs(service: Any) -> dict[str, Path]:
    """id -> resolved run folder, for every run the server knows: the runs of the models it serves, the fine-tuning
    jobs' runs (newest first) and the runs under its --runs-root folders; at most MAX_RUNS."""
    candidates = [Path(model.root) for model in service.registry.all()]
    candidates += [Path(run_dir) for run_dir in job_run_dirs(service)]
    for root in service.settings.runs_roots:
        try:
            candidates += list(reversed(find_runs(Path(root))))
        except TunelabError:  # a root that went away: the others are still listed
            continue
    found: dict[str, Path] = {}
    for path in candidates:
        resolved = path.resolve()
        if RunDir(resolved).is_run():
            found.setdefault(run_id(resolved), resolved)
        if len(found) >= MAX_RUNS:
            break
    return found


def job_run_dirs(service: Any) -> list[str]:
    if service.jobs is None:
        return []
    with closing(jobs_connection(service)) as connection:
        rows = connection.execute("SELECT run_dir FROM jobs WHERE run_dir IS NOT NULL ORDER BY seq DESC LIMIT ?",
                                  (MAX_RUNS,)).fetchall()
    serve_dir = Path(service.jobs.serve_dir)
    return [str(serve_dir / row["run_dir"]) for row in rows]  # an absolute run_dir stays as it is


@dataclass
class RunView:
    id: str
    summary: RunSummary
    served_as: list[str]  # the model ids it answers to
    train_loss: list[tuple[float, float]]  # (step, loss)
    validation_loss: list[tuple[float, float]]
    has_report: bool


def run_views(service: Any) -> list[RunView]:
    served: dict[Path, list[str]] = {}
    for model in service.registry.all():
        served.setdefault(Path(model.root).resolve(), []).append(model.id)
    return [run_view(key, path, served.get(path, [])) for key, path in known_runs(service).items()]


def run_view(key: str, path: Path, served_as: list[str]) -> RunView:
    run = RunDir(path)
    from tunelab.train.callbacks import logged  # the trainer's own reader of its log

    log = logged(run.train_log) if run.train_log.is_file() else []
    return RunView(key, summarize_run(path), served_as,
                   [(entry["step"], entry["loss"]) for entry in log if "loss" in entry],
                   [(entry["step"], entry["eval_loss"]) for entry in log if "eval_loss" in entry],
                   run.report_html.is_file())


def report_path(service: Any, key: str) -> Path | None:
    """The report.html of a run the server knows, by its id; None for any other id."""
    path = known_runs(service).get(key)
    if path is None or not RunDir(path).report_html.is_file():
        return None
    return RunDir(path).report_html


# ---- jobs -------------------------------------------------------------------------------------------------------
def jobs_connection(service: Any) -> sqlite3.Connection:
    from tunelab.jobs.db import connect

    return connect(service.jobs.serve_dir)


@dataclass
class JobView:
    job: dict[str, Any]  # OpenAI's fine_tuning.job object (jobs/objects.py)
    step: int | None  # progress: the last step reported
    total_steps: int | None
    run_id: str | None  # the run's id on the runs page, once the worker made it
    events: list[dict[str, Any]] = field(default_factory=list)  # newest first

    @property
    def finished(self) -> bool:
        from tunelab.jobs.queue import FINISHED

        return self.job["status"] in FINISHED


def list_job_views(service: Any, limit: int = MAX_JOBS) -> list[JobView] | None:
    """The newest jobs; None when fine-tuning is off on this server."""
    from tunelab.jobs import queue

    if service.jobs is None:
        return None
    with closing(jobs_connection(service)) as connection:
        rows, _ = queue.list_jobs(connection, None, limit)
        return [job_view(service, connection, row, events=0) for row in rows]


def job_detail(service: Any, job_id: str) -> JobView:
    """One job with its events; an APIError 404 (the API's) for an unknown id or when fine-tuning is off."""
    from tunelab.jobs import queue
    from tunelab.serve.errors import APIError

    if service.jobs is None:
        raise APIError(404, "fine-tuning is off on this server")
    with closing(jobs_connection(service)) as connection:
        return job_view(service, connection, queue.get_job(connection, job_id), events=MAX_EVENTS)


def job_view(service: Any, connection: sqlite3.Connection, row: sqlite3.Row, events: int) -> JobView:
    from tunelab.jobs import queue
    from tunelab.jobs.objects import event_object, job_object

    step, total = progress(connection, row["id"])
    run = Path(service.jobs.serve_dir) / row["run_dir"] if row["run_dir"] else None
    listed = [event_object(event) for event in queue.list_events(connection, row["id"], None, events)[0]] \
        if events else []
    return JobView(job_object(row), step, total, run_id(run) if run and RunDir(run).is_run() else None, listed)


def progress(connection: sqlite3.Connection, job_id: str) -> tuple[int | None, int | None]:
    """(step, total steps) from the last metrics event the trainer wrote; else the last checkpoint's step."""
    event = connection.execute("SELECT data FROM events WHERE job_id = ? AND type = 'metrics' ORDER BY seq DESC "
                               "LIMIT 1", (job_id,)).fetchone()
    if event is not None and event["data"]:
        data = json.loads(event["data"])
        return data.get("step"), data.get("total_steps")
    checkpoint = connection.execute("SELECT MAX(step) AS step FROM checkpoints WHERE job_id = ?",
                                    (job_id,)).fetchone()
    return (checkpoint["step"] if checkpoint else None), None


def cancel_job(service: Any, job_id: str) -> None:
    """What POST /v1/fine_tuning/jobs/{id}/cancel does (its APIError on refusal)."""
    from tunelab.jobs import queue
    from tunelab.serve.errors import APIError

    if service.jobs is None:
        raise APIError(404, "fine-tuning is off on this server")
    with closing(jobs_connection(service)) as connection:
        queue.cancel_job(connection, job_id)


# ---- models in service ------------------------------------------------------------------------------------------
@dataclass
class ModelsData:
    served: list[Any]  # ServedModel
    versions: dict[str, list[Any]]  # name -> its versions (deploy.versions.Version), newest first
    run_ids: dict[str, str]  # a served model's or version's run folder -> its run id


def models_data(service: Any) -> ModelsData:
    served = service.registry.all()
    versions = served_versions(Path(service.settings.serve_dir))
    folders = [model.root for model in served] + [version.run_dir for found in versions.values() for version in found]
    known = {path: key for key, path in known_runs(service).items()}
    run_ids = {folder: known[Path(folder).resolve()] for folder in folders if Path(folder).resolve() in known}
    return ModelsData(served, versions, run_ids)


def served_versions(serve_dir: Path) -> dict[str, list[Any]]:
    """Each name in service and its versions (deploy/versions.py), newest first."""
    from tunelab.deploy import versions

    return {name: versions.versions(serve_dir, name) for name in versions.names(serve_dir)}


# ---- monitor ----------------------------------------------------------------------------------------------------
@dataclass
class MonitorData:
    since_s: float
    bucket_s: float
    now: float  # the window is [now - since_s, now]
    traffic: list[Series]  # per model: latency_p50_ms, latency_p95_ms, error_rate, requests (request log)
    scores: list[Score]  # drift and quality scores over the window
    series: list[Series]  # drift and quality over time


def monitor_data(service: Any, since_s: float, now: float | None = None) -> MonitorData:
    now = time.time() if now is None else now
    bucket = bucket_seconds(since_s)
    traffic = traffic_series(Path(service.settings.serve_dir), since_s, bucket, now)
    scores, series = health(service, since_s, now)
    return MonitorData(since_s, bucket, now, traffic, scores=scores, series=series)


def health(service: Any, since_s: float, now: float) -> tuple[list[Score], list[Series]]:
    """Drift and quality scores over the window (as `tunelab monitor` computes them, with the server's thresholds
    and, where its monitor thread runs, its embedding model), quality per time bucket, and drift as the monitor
    thread recorded it tick after tick (monitor/history.py)."""
    from tunelab.monitor import history
    from tunelab.monitor.quality import quality_series
    from tunelab.monitor.report import all_scores, window_models
    from tunelab.monitor.requestlog import database_path
    from tunelab.monitor.thresholds import layered

    serve_dir = Path(service.settings.serve_dir)
    if not database_path(serve_dir).is_file():
        return [], []
    watch = getattr(service, "watch", None)
    thresholds = watch.thresholds if watch is not None else layered(service.settings.monitor_thresholds)
    embedder = watch.embedder if watch is not None else None
    scores = all_scores(serve_dir, since_s, thresholds, now=now, embedder=embedder)
    series = [entry for model in window_models(serve_dir, since_s, now)
              for entry in quality_series(serve_dir, model, since_s, thresholds=thresholds, now=now)]
    return scores, series + history.series(serve_dir, since_s, now, kind="drift")


def bucket_seconds(since_s: float) -> float:
    """About WINDOW_BUCKETS buckets over the window, rounded to a whole minute (at least one)."""
    return max(60.0, math.ceil(since_s / WINDOW_BUCKETS / 60) * 60)


def traffic_series(serve_dir: Path, since_s: float, bucket_s: float, now: float) -> list[Series]:
    """Per model and time bucket: median and 95th-percentile latency, error rate (with a 95% Wilson interval) and
    request count, from the request log's generation requests."""
    from tunelab.monitor.requestlog import database_path, open_read_only

    path = database_path(serve_dir)
    if not path.is_file():
        return []
    start = now - since_s
    with closing(open_read_only(path)) as connection:
        rows = connection.execute(
            f"SELECT COALESCE(model, '(none)'), ts, status, latency_ms FROM requests WHERE ts >= ? AND endpoint IN "
            f"({', '.join('?' for _ in GENERATION)}) ORDER BY ts", (start, *GENERATION)).fetchall()
    by_model: dict[str, dict[float, list[tuple[int, float]]]] = {}
    for model, ts, status, latency in rows:
        bucket = start + math.floor((ts - start) / bucket_s) * bucket_s
        by_model.setdefault(model, {}).setdefault(bucket, []).append((status, latency))
    series = []
    for model, buckets in by_model.items():
        series += model_traffic(model, buckets)
    return series


def model_traffic(model: str, buckets: dict[float, list[tuple[int, float]]]) -> list[Series]:
    from tunelab.monitor.quality import wilson
    from tunelab.monitor.report import percentile

    p50, p95, errors, volume = [], [], [], []
    for ts in sorted(buckets):
        entries = buckets[ts]
        latencies = sorted(latency for status, latency in entries if status < 400)
        failed = sum(status >= 400 for status, _ in entries)
        count = len(entries)
        p50.append(Point(ts, percentile(latencies, 0.5), count=len(latencies)))
        p95.append(Point(ts, percentile(latencies, 0.95), count=len(latencies)))
        low, high = wilson(failed, count)
        errors.append(Point(ts, failed / count, low, high, count))
        volume.append(Point(ts, float(count), count=count))
    return [Series(model, "latency_p50_ms", "traffic", p50), Series(model, "latency_p95_ms", "traffic", p95),
            Series(model, "error_rate", "traffic", errors), Series(model, "requests", "traffic", volume)]
