"""`tunelab serve [RUN ...] [--base MODEL]`: an OpenAI-compatible server with hot-swappable adapters."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Optional

import typer

from tunelab.cli.app import Command, app, console, device_option
from tunelab.paths import tunelab_home
from tunelab.quiet import quiet_libraries


@app.command(cls=Command)
def serve(
    runs: Optional[list[str]] = typer.Argument(None, metavar="RUN",
        help="Runs whose adapters to serve: RUN or NAME=RUN."),
    base: Optional[str] = typer.Option(None, help="Base model (built-in name, checkpoint folder or .gguf); "
                                                  "default: the runs' base."),
    host: str = typer.Option("127.0.0.1", help="Address to listen on."),
    port: int = typer.Option(8000, min=0, max=65535),
    serve_dir: Path = typer.Option(Path("serve"), help="Folder of the request log (requests.sqlite)."),
    api_key: Optional[list[str]] = typer.Option(
        None, "--api-key", metavar="KEY", help="Key clients send as Authorization: Bearer KEY (repeatable; default: "
                                "$TUNELAB_API_KEY, read as one key)."),
    api_keys_file: Optional[Path] = typer.Option(
        None, help="File with one API key a line, each optionally followed by its scopes: inference (the default) "
                   "or fine-tuning (also /v1/files and /v1/fine_tuning)."),
    fine_tune_key: Optional[list[str]] = typer.Option(
        None, "--fine-tune-key", metavar="KEY", help="A key that may also upload files and run fine-tuning jobs "
                                                     "(repeatable; default: $TUNELAB_FINE_TUNE_KEY)."),
    admin_key: Optional[str] = typer.Option(None, envvar="TUNELAB_ADMIN_KEY",
                                            help="Key for POST/DELETE /v1/adapters; without it they are off."),
    metrics_key: Optional[str] = typer.Option(
        None, envvar="TUNELAB_METRICS_KEY", help="A key that opens GET /metrics only (for a Prometheus scraper); "
                                                 "with --api-key, /metrics otherwise needs an API key."),
    runs_root: Optional[list[Path]] = typer.Option(
        None, "--runs-root", metavar="FOLDER",
        help="Folder POST /v1/adapters may load runs from (repeatable; default: the working directory and "
             "$TUNELAB_HOME). Runs given on this command line are not confined."),
    max_batch: int = typer.Option(8, min=1, help="Rows (choices) generated together."),
    batch_wait_ms: float = typer.Option(10.0, min=0, help="How long an idle server waits to batch requests."),
    max_queue: int = typer.Option(64, min=1, help="Requests waiting past the running batch; beyond: 429."),
    max_tokens: int = typer.Option(512, min=1, help="Most new tokens a request may ask for (and the default)."),
    max_body_kb: int = typer.Option(1024, min=1, help="Largest request body; beyond: 413."),
    max_file_mb: int = typer.Option(512, min=1, help="Largest file uploaded to /v1/files; beyond: 413."),
    timeout: float = typer.Option(120.0, min=0.1, help="Seconds a request may take from arrival; beyond: 504."),
    log_content: bool = typer.Option(False, "--log-content", help="Keep prompts and outputs in the request log."),
    threads: Optional[int] = typer.Option(
        None, min=1, help="torch intra-op threads; on a CPU shared with other busy processes 1 can be many times "
                          "faster (see README)."),
    precision: Optional[str] = typer.Option(
        None, help="fp32, bf16 (autocast; on a CPU only where it has bf16 natively), fp16 (a GPU) or auto (bf16 "
                   "where native). Default: fp32 on a CPU, where bf16 autocast measured slower for small-batch "
                   "generation (see README), auto on a GPU."),
    jobs: bool = typer.Option(False, "--jobs", help="Also run the fine-tuning jobs clients create (POST "
                              "/v1/fine_tuning/jobs) in a worker process (`tunelab worker`) on the same device."),
    max_waiting_jobs: int = typer.Option(16, min=1, help="Fine-tuning jobs waiting to run; beyond: 429."),
    allow_python_graders: bool = typer.Option(
        False, "--allow-python-graders", help="Let reinforcement jobs use python graders (they run the client's "
                                              "code in the worker)."),
    monitor_every: float = typer.Option(60.0, min=0, help="Seconds between drift and quality scores (Prometheus "
                                                          "gauges, a line when one crosses its threshold); 0: off."),
    monitor_window: Optional[str] = typer.Option(
        None, help="Time window the scores cover: 30m, 1h, 7d (default: the first run's recipe monitor.window, 1h)."),
    monitor_threshold: Optional[list[str]] = typer.Option(
        None, "--monitor-threshold", metavar="NAME=VALUE", help="A drift or quality score's threshold (repeatable); "
                                                                "wins over the runs' recipes (monitor.thresholds)."),
    device: str = device_option(),
) -> None:
    """Serve a base model and run adapters over OpenAI's API (/v1/chat/completions, /v1/completions, ...), and
    fine-tune it through OpenAI's files and fine-tuning API (/v1/files, /v1/fine_tuning/jobs)."""
    from tunelab.device import resolve_placement
    from tunelab.monitor.report import parse_window
    from tunelab.monitor.thresholds import parse_threshold_options
    from tunelab.serve.server import bind, build_service, run_server
    from tunelab.serve.settings import ServeSettings, read_keys_file

    # Read here, not through click's envvar: click splits a list option's environment value on whitespace.
    env_key = os.environ.get("TUNELAB_API_KEY", "").strip()
    env_fine_tune_key = os.environ.get("TUNELAB_FINE_TUNE_KEY", "").strip()
    from_file = read_keys_file(api_keys_file) if api_keys_file else (frozenset(), frozenset())
    keys = frozenset(api_key or ([env_key] if env_key else [])) | from_file[0]
    fine_tune_keys = frozenset(fine_tune_key or ([env_fine_tune_key] if env_fine_tune_key else [])) | from_file[1]
    placement = resolve_placement(device, precision or "auto", cpu_auto="bf16" if precision else "fp32")
    home = tunelab_home()
    roots = runs_roots(runs_root, home)
    thresholds = parse_threshold_options(monitor_threshold or [], "--monitor-threshold")
    window = parse_window(monitor_window, "--monitor-window") if monitor_window else None
    sock = bind(host, port)
    quiet_libraries()
    if threads:
        import torch

        torch.set_num_threads(threads)
    settings = ServeSettings(
        serve_dir=serve_dir, api_keys=keys, fine_tune_keys=fine_tune_keys, admin_key=admin_key,
        metrics_key=metrics_key,
        runs_roots=roots, max_batch_rows=max_batch,
        batch_wait=batch_wait_ms / 1000, max_queue=max_queue, max_tokens=max_tokens,
        max_body_bytes=max_body_kb * 1024, max_file_bytes=max_file_mb << 20, request_timeout=timeout,
        log_content=log_content, placement=placement, max_waiting_jobs=max_waiting_jobs,
        allow_python_graders=allow_python_graders, monitor_every=monitor_every, monitor_window=window,
        monitor_thresholds=thresholds,
    )
    say = lambda text: console.print(f"[dim]{text}[/dim]")  # noqa: E731
    try:
        service = build_service(runs or [], base, settings, home, say=say)
    except BaseException:
        sock.close()
        raise
    from tunelab.serve.app import create_app

    bound_host, bound_port = sock.getsockname()[:2]
    needed = "required" if keys or fine_tune_keys else "none"
    console.print(f"[bold green]serving[/bold green] {', '.join(service.registry.ids())} on "
                  f"http://{bound_host}:{bound_port}/v1 (keys: {needed}; admin: "
                  f"{admin_line(admin_key, roots)}; {placement.describe()}); request log {service.request_log.path}")
    if jobs:  # the app's shutdown (service.close) stops it
        from tunelab.serve.worker_process import WorkerProcess

        service.worker = WorkerProcess(serve_dir.resolve(), placement.device, home, say=say).start()
    console.print(f"fine-tuning: jobs queue in {service.jobs.serve_dir / 'jobs.sqlite'}; "
                  f"{'a worker runs them on ' + placement.device if jobs else 'run `tunelab worker` to run them'}")
    run_server(create_app(service), sock)


def runs_roots(given: Optional[list[Path]], home: Path) -> tuple[Path, ...]:
    """The folders POST /v1/adapters may load runs from: --runs-root, else the working directory (where `tunelab
    train` writes runs/ by default) and $TUNELAB_HOME. A given folder that does not exist is a typo: refused."""
    from tunelab.errors import TunelabError

    for root in given or []:
        if not root.is_dir():
            raise TunelabError(f"--runs-root {root}: not a folder")
    return tuple(given) if given else (Path.cwd(), home)


def admin_line(admin_key: Optional[str], roots: tuple[Path, ...]) -> str:
    return f"on, runs from {', '.join(str(root) for root in roots)}" if admin_key else "off"
