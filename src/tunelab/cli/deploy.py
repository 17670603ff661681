"""`tunelab promote`, `tunelab rollback`, `tunelab versions`: which run a name in service serves.

They write the serve folder's versions.sqlite (deploy/versions.py); a server running on that folder switches within
a second, with no restart (serve/deployments.py). The same is open to the admin key over HTTP (/v1/deployments).
"""

from __future__ import annotations

import getpass
import socket
from pathlib import Path
from typing import Optional

import typer

from tunelab.cli.app import Command, app, console
from tunelab.paths import tunelab_home

SERVE_DIR = typer.Option(Path("serve"), "--serve-dir", help="The folder `tunelab serve --serve-dir` uses.")


def who() -> str:
    try:
        return f"{getpass.getuser()}@{socket.gethostname()}"
    except Exception:  # no user name in a bare container
        return f"cli@{socket.gethostname()}"


@app.command(cls=Command)
def promote(
    name: str = typer.Argument(..., help="The name clients ask for, e.g. support-bot."),
    version: str = typer.Argument(..., help="A run folder (recorded as a new version) or a version number (v3)."),
    serve_dir: Path = SERVE_DIR,
    by: Optional[str] = typer.Option(None, help="Who promotes it, for the history (default: user@host)."),
    reason: Optional[str] = typer.Option(None, help="Why, for the history."),
) -> None:
    """Make NAME serve VERSION; the version it served before is kept for `tunelab rollback`."""
    from tunelab.deploy import versions
    from tunelab.errors import TunelabError

    if versions.version_number(version) is not None:
        chosen = versions.find(serve_dir, name, version)
    else:
        if not Path(version).is_dir():
            raise TunelabError(f"{version}: no such run folder (or give a version number such as v2)")
        from tunelab.quiet import quiet_libraries

        quiet_libraries()  # the check reads the run's adapter with peft
        now = versions.current(serve_dir, name)
        versions.check_servable(version, tunelab_home(), like=now.run_dir if now else None)
        chosen = versions.record(serve_dir, name, version)
    if chosen.status == "serving":
        raise TunelabError(f"{chosen.label} is already in service")
    promoted = versions.promote(serve_dir, name, chosen.number, by or who(), reason)
    console.print(f"[bold green]{promoted.label}[/bold green] in service: {promoted.run_dir} "
                  f"({headline_text(promoted)}); a server on {serve_dir} switches within a second", soft_wrap=True)


@app.command(cls=Command)
def rollback(
    name: str = typer.Argument(..., help="The name in service."),
    serve_dir: Path = SERVE_DIR,
    by: Optional[str] = typer.Option(None, help="Who rolls back, for the history (default: user@host)."),
    reason: Optional[str] = typer.Option(None, help="Why, for the history."),
) -> None:
    """Serve NAME's previous version again (the one before the current version was promoted)."""
    from tunelab.deploy import versions

    before = versions.current(serve_dir, name)
    back = versions.rollback(serve_dir, name, by or who(), reason)
    console.print(f"[bold yellow]{name}[/bold yellow]: v{before.number if before else '?'} rolled back; "
                  f"v{back.number} in service ({back.run_dir})", soft_wrap=True)


@app.command("versions", cls=Command)
def list_versions(
    name: Optional[str] = typer.Argument(None, help="One name; default: every name in service."),
    serve_dir: Path = SERVE_DIR,
) -> None:
    """Each name's versions: run, headline metric, gate verdict, status, who promoted it when."""
    from tunelab.deploy import versions
    from tunelab.errors import TunelabError
    from tunelab.present.deploy import versions_table

    chosen = [name] if name else versions.names(serve_dir)
    if name and not versions.versions(serve_dir, name):
        raise TunelabError(f"'{name}' has no versions in {serve_dir}")
    if not chosen:
        console.print(f"no names in service in {serve_dir} (`tunelab promote NAME RUN` records one)")
    for each in chosen:
        console.print(versions_table(each, versions.versions(serve_dir, each), console.width))


def headline_text(version) -> str:
    metrics = version.metrics
    if metrics.get("tuned") is None:
        return "not evaluated"
    return f"{metrics['metric']} {metrics['tuned']:.4g} (base {metrics['base']:.4g})"


@app.command(cls=Command)
def retrain(
    serve_dir: Path = typer.Argument(..., help="The folder `tunelab serve --serve-dir` uses."),
    model: str = typer.Option(..., "--model", help="The name in service to retrain, e.g. support-bot."),
    recipe: Optional[Path] = typer.Option(None, help="A recipe to train with instead of the version in service's "
                                                     "(its data section is replaced by the retrain's rows)."),
    with_feedback: bool = typer.Option(False, "--with-feedback", help="Also learn from the feedback on the name's "
                                       "answers (corrections as SFT rows, or DPO pairs for preference tasks)."),
    data: Optional[list[Path]] = typer.Option(None, "--data", metavar="FILE", help="New rows to add (repeatable)."),
    holdout: float = typer.Option(0.3, min=0.0, max=0.9, help="Share of the feedback held out to judge the new "
                                                              "version against the one in service."),
    max_regression: float = typer.Option(0.0, min=0.0, help="How much worse than the version in service the "
                                         "headline metric may be and still pass (its units; 0: not worse at all)."),
    wait: bool = typer.Option(False, "--wait", help="Follow the job's events until it ends; exit 0 when promoted, "
                              "3 when kept as a candidate."),
    every: Optional[str] = typer.Option(None, help="Keep running and queue a retrain every interval (7d, 12h)."),
    on_flag: bool = typer.Option(False, "--on-flag", help="Keep running and queue a retrain when a drift or quality "
                                 "score of the name is flagged (`tunelab monitor`)."),
    check_every: str = typer.Option("5m", help="With --on-flag: how often the scores are read."),
    cooldown: str = typer.Option("1d", help="With --on-flag: the least time between two flag-triggered retrains."),
    since: str = typer.Option("1d", help="With --on-flag: the window the scores are computed over."),
) -> None:
    """Train a new version of a name in service on its data plus what came since, as a job of the job service;
    the worker promotes it only when it is not worse than the version in service (on the original test split and
    held-out feedback) and the recipe's objective holds."""
    from tunelab.deploy.retrain import Schedule, enqueue, plan_retrain, run_schedule
    from tunelab.monitor.report import parse_window
    from tunelab.quiet import quiet_libraries

    quiet_libraries()
    home = tunelab_home()

    def queue_one(trigger: str) -> str:
        plan = plan_retrain(serve_dir, model, home, recipe, with_feedback, tuple(data or ()), holdout,
                            max_regression=max_regression)
        job_id = enqueue(serve_dir, plan, trigger)
        console.print(f"[bold]{job_id}[/bold] queued: {plan.describe()}", soft_wrap=True)
        return job_id

    if every is None and not on_flag:
        job_id = queue_one("tunelab retrain")
        if wait:
            follow(serve_dir, job_id)
        else:
            console.print(f"a worker runs it (`tunelab serve --jobs` or `tunelab worker {serve_dir}`); follow it with "
                          f"GET /v1/fine_tuning/jobs/{job_id}/events or `tunelab retrain ... --wait`", soft_wrap=True)
        return
    schedule = Schedule(every_s=parse_window(every, "--every") if every else None,
                        check_s=parse_window(check_every, "--check-every"),
                        cooldown_s=parse_window(cooldown, "--cooldown"),
                        flagged=flag_reader(serve_dir, model, parse_window(since, "--since")) if on_flag else None)
    console.print(f"retraining {model} {'every ' + every if every else ''}{' and ' if every and on_flag else ''}"
                  f"{'when its scores are flagged' if on_flag else ''}; Ctrl-C stops", soft_wrap=True)
    run_schedule(serve_dir, model, schedule, queue_one, say=lambda text: console.print(text, soft_wrap=True))


def flag_reader(serve_dir: Path, name: str, window_s: float):
    """The names of `name`'s flagged drift and quality scores over the last `window_s` (thresholds as the server
    has them: the defaults, then the serving run's recipe)."""
    from tunelab.monitor.drift import Embedder, drift_scores
    from tunelab.monitor.quality import quality_scores
    from tunelab.monitor.thresholds import layered

    thresholds, embedder = layered({}), Embedder(tunelab_home())

    def flagged() -> list[str]:
        scores = (drift_scores(serve_dir, name, window_s, thresholds, embedder=embedder)
                  + quality_scores(serve_dir, name, window_s, thresholds))
        return [f"{score.kind} {score.name}" for score in scores if score.flagged]

    return flagged


def follow(serve_dir: Path, job_id: str, poll_s: float = 1.0) -> None:
    """Print the job's events as they come; raise when it ends other than promoted."""
    import json
    import time
    from contextlib import closing

    from tunelab.errors import ObjectiveNotMet, TunelabError
    from tunelab.jobs.db import connect

    seen = 0
    while True:
        with closing(connect(serve_dir)) as connection:
            events = connection.execute("SELECT seq, message FROM events WHERE job_id = ? AND seq > ? ORDER BY seq",
                                        (job_id, seen)).fetchall()
            job = connection.execute("SELECT status, verdict, error FROM jobs WHERE id = ?", (job_id,)).fetchone()
        for event in events:
            console.print(f"  {event['message']}", soft_wrap=True, markup=False)
            seen = event["seq"]
        if job["status"] in ("succeeded", "failed", "cancelled"):
            break
        time.sleep(poll_s)
    if job["status"] != "succeeded":
        error = json.loads(job["error"])["message"] if job["error"] else job["status"]
        raise TunelabError(f"retrain job {job_id} {job['status']}: {error}")
    promotion = (json.loads(job["verdict"]) if job["verdict"] else {}).get("promotion") or {}
    if not promotion.get("promoted"):
        raise ObjectiveNotMet(f"retrain job {job_id}: not promoted: {'; '.join(promotion.get('reasons', []))}")
