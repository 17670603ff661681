"""Build the service from runs and a base model, bind the port first (a clear error when it is taken), run uvicorn."""

from __future__ import annotations

import errno
import socket
from pathlib import Path
from typing import Any, Callable

from tunelab.errors import TunelabError
from tunelab.serve.settings import ServeSettings


def parse_run_specs(specs: list[str]) -> list[tuple[str | None, str]]:
    """`RUN` or `NAME=RUN` -> (model id or None, run folder)."""
    from tunelab.serve.registry import check_id

    parsed = []
    for spec in specs:
        name, sep, path = spec.partition("=")
        if sep and not Path(spec).exists():
            if not name or not path:
                raise TunelabError(f"'{spec}': give RUN or NAME=RUN")
            parsed.append((check_id(name, f"'{spec}': NAME"), path))
        else:
            parsed.append((None, spec))
    return parsed


def base_of_runs(runs: list[tuple[str | None, str]], home: Path) -> str:
    """The base model the runs were trained on (they must agree, or --base must say which)."""
    from tunelab.run.models import open_run_models

    bases = {path: open_run_models(path, home, "cpu").base_name() for _, path in runs}
    names = sorted(set(bases.values()))
    if len(names) > 1:
        described = ", ".join(f"{path} on '{name}'" for path, name in bases.items())
        raise TunelabError(f"the runs were trained on different base models ({described}); serve them separately")
    return names[0]


def build_service(runs: list[str], base: str | None, settings: ServeSettings, home: Path,
                  say: Callable[[str], None] = print) -> Any:
    from tunelab.deploy import versions
    from tunelab.monitor.requestlog import RequestLog
    from tunelab.serve.engine import Engine
    from tunelab.serve.metrics import Metrics
    from tunelab.serve.registry import Registry, open_adapter, open_base
    from tunelab.serve.service import Service

    specs = parse_run_specs(runs)
    names = versions.serving(settings.serve_dir)
    taken = [model_id for model_id, _ in specs if model_id in names]
    if taken:
        version = names[taken[0]]
        raise TunelabError(f"'{taken[0]}' is a name in service in {settings.serve_dir} ({version.label}, "
                           f"{version.run_dir}); drop it from the command line (it is served as recorded) or switch "
                           f"it with `tunelab promote {taken[0]} RUN`")
    if base is None and not specs and not names:
        raise TunelabError("give at least one RUN or --base MODEL (or `tunelab promote NAME RUN` into this "
                           "--serve-dir first)")
    base_name = base or base_of_runs(specs + [(name, version.run_dir) for name, version in names.items()], home)
    say(f"loading base model {base_name}")
    model, base_served, ref = open_base(base_name, home, settings.placement)
    engine = Engine(model, base_served.tokenizer.pad_token_id, max_batch_rows=settings.max_batch_rows,
                    max_queue=settings.max_queue, batch_wait=settings.batch_wait,
                    placement=settings.placement)
    registry = Registry(base_served)
    request_log = RequestLog(settings.serve_dir)
    metrics = Metrics(engine.queue_depth)
    engine.on_batch = lambda rows, seconds: metrics.batch_rows.observe(rows)
    service = Service(engine, registry, ref, settings, metrics, request_log, home,
                      context_length=model.config.max_position_embeddings)
    engine.start()
    try:
        for model_id, path in specs:
            served = open_adapter(path, model_id, base_served, ref, registry.adapter_name(), home)
            engine.load_adapter(served.adapter, served.folder, served.mixable).result()
            registry.add(served)
            say(f"adapter {served.id} <- {path}")
        if settings.fine_tuning:
            start_fine_tuning(service, base_name, settings, say)
        if settings.monitor_every > 0:
            service.watch = start_watch(service, [path for _, path in specs]
                                        + [version.run_dir for version in names.values()], settings, home, say)
        from tunelab.serve.deployments import Deployments

        service.deployments = Deployments(service, say).start()
    except BaseException:
        service.close()
        raise
    return service


def start_fine_tuning(service: Any, base_name: str, settings: ServeSettings, say: Callable[[str], None]) -> None:
    """The fine-tuning API's settings, and the thread that serves each succeeded job's model as it finishes."""
    from tunelab.jobs.queue import JobsConfig
    from tunelab.serve.finished_jobs import FinishedJobs

    service.jobs = JobsConfig(Path(settings.serve_dir).resolve(), service.registry.base.id, base_name,
                              settings.max_waiting_jobs, settings.allow_python_graders)
    service.finished_jobs = FinishedJobs(service, say).start()


def start_watch(service: Any, runs: list[str], settings: ServeSettings, home: Path,
                say: Callable[[str], None]) -> Any:
    """The thread that scores drift and live quality every `monitor_every` seconds into the metrics."""
    from tunelab.monitor.drift import Embedder
    from tunelab.monitor.report import parse_window
    from tunelab.monitor.thresholds import layered, recipe_monitor
    from tunelab.monitor.watch import Watch

    window = settings.monitor_window or parse_window(recipe_monitor(runs[0] if runs else None).window)
    return Watch(settings.serve_dir, service.metrics, window, settings.monitor_every,
                 layered(settings.monitor_thresholds),
                 Embedder(home, runner=lambda work: service.engine.call(work).result()), say).start()


def bind(host: str, port: int) -> socket.socket:
    """The listening socket, bound before any model is loaded so a taken port fails in a second."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as error:
        sock.close()
        if error.errno == errno.EADDRINUSE:
            raise TunelabError(f"--port {port}: {host}:{port} is already in use; pick another port") from None
        raise TunelabError(f"--host {host} --port {port}: cannot listen there ({error.strerror})") from None
    sock.listen(2048)
    sock.set_inheritable(True)
    return sock


def run_server(app: Any, sock: socket.socket, log_level: str = "warning") -> None:
    import uvicorn

    config = uvicorn.Config(app, log_level=log_level, timeout_graceful_shutdown=5)
    uvicorn.Server(config).run(sockets=[sock])
