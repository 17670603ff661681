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

    number = version[1:] if version.lower().startswith("v") else version
    if number.isdigit():
        chosen = versions.find(serve_dir, name, version)
    else:
        if not Path(version).is_dir():
            raise TunelabError(f"{version}: no such run folder (or give a version number such as v2)")
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
