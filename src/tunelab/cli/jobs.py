"""`tunelab worker`: run the fine-tuning jobs queued in a serve folder (what `tunelab serve --jobs` starts)."""

from __future__ import annotations

import signal
from pathlib import Path

import typer

from tunelab.cli.app import Command, app, console, device_option
from tunelab.paths import tunelab_home
from tunelab.quiet import quiet_libraries


@app.command(cls=Command)
def worker(
    serve_dir: Path = typer.Option(Path("serve"), help="The serve folder whose jobs to run (jobs.sqlite)."),
    device: str = device_option(),
    once: bool = typer.Option(False, "--once", help="Stop when the queue is empty instead of waiting for jobs."),
    wait_for_device: bool = typer.Option(
        False, "--wait-for-device", help="If another worker holds this device, wait for it instead of stopping."),
) -> None:
    """Run fine-tuning jobs one at a time on this device, each through the same lifecycle as `tunelab train`. A job
    left running by a worker that died goes on from its last checkpoint."""
    from tunelab.device import resolve_placement
    from tunelab.jobs.worker import run_worker

    if not serve_dir.is_dir():
        from tunelab.errors import TunelabError

        raise TunelabError(f"--serve-dir {serve_dir}: not a folder (start `tunelab serve` there first)")
    placement = resolve_placement(device, "auto")
    quiet_libraries()
    # SIGTERM (a supervisor, `tunelab serve` shutting down) ends the worker as Ctrl-C does: the job is requeued and
    # goes on from its last checkpoint.
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    say = lambda text: console.print(f"[dim]{text}[/dim]")  # noqa: E731
    say(f"worker on {placement.device}: running the jobs of {serve_dir.resolve()}")
    try:
        run_worker(serve_dir, tunelab_home(), placement.device, say=say, once=once, wait=wait_for_device)
    except KeyboardInterrupt:
        say("worker stopped")
