"""What `tunelab serve` was told: limits, keys and where the request log goes."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

from tunelab.device import Placement
from tunelab.errors import TunelabError


@dataclass(frozen=True)
class ServeSettings:
    serve_dir: Path = Path("serve")
    api_keys: frozenset[str] = field(default_factory=frozenset)  # inference scope; none of either: no key needed
    fine_tune_keys: frozenset[str] = field(default_factory=frozenset)  # inference and fine-tuning (files, jobs)
    admin_key: str | None = None  # None: the admin endpoints (load/unload adapters) are off
    metrics_key: str | None = None  # also opens /metrics (for a Prometheus scraper that holds no API key)
    runs_roots: tuple[Path, ...] = ()  # folders the admin may load runs from (runpaths.py); empty: none
    max_batch_rows: int = 8  # rows (choices) generated together
    batch_wait: float = 0.01  # seconds an idle engine waits for more requests to batch with the first
    max_queue: int = 64  # requests waiting for the engine; past this: 429
    max_tokens: int = 512  # new tokens a request may ask for (and the default when it asks for none)
    max_body_bytes: int = 1 << 20  # request body; past this: 413
    max_file_bytes: int = 512 << 20  # an uploaded file (POST /v1/files, whose body has no other limit); past: 413
    request_timeout: float = 120.0  # seconds from arrival to the last token; past this: 504
    log_content: bool = False  # also keep prompts and outputs in the request log
    placement: Placement = Placement("cpu", "fp32")  # where the model runs, in what compute precision
    fine_tuning: bool = True  # the fine-tuning API (/v1/fine_tuning/jobs); a worker runs the jobs (serve --jobs)
    max_waiting_jobs: int = 16  # jobs validating or queued; past it: 429
    allow_python_graders: bool = False  # python graders in reinforcement jobs run the caller's code in the worker
    monitor_every: float = 60.0  # seconds between drift/quality ticks (monitor/watch.py); 0: no monitor thread
    monitor_window: float | None = None  # seconds scored; None: the first run's recipe `monitor.window`, else 1h
    monitor_thresholds: dict[str, float] = field(default_factory=dict)  # over each run's recipe and the defaults


SCOPES = ("inference", "fine-tuning")


def read_keys_file(path: Path) -> tuple[frozenset[str], frozenset[str]]:
    """(inference keys, fine-tuning keys) from a file of one key a line, optionally followed by its scopes:
    `KEY` or `KEY inference` (the model only), `KEY fine-tuning` or `KEY inference,fine-tuning` (also files and
    jobs). Blank lines and lines starting with # are ignored."""
    if not path.is_file():
        raise TunelabError(f"--api-keys-file {path}: file not found")
    inference, fine_tuning = set(), set()
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        key, _, rest = line.strip().partition(" ")
        if not key or key.startswith("#"):
            continue
        scopes = set(re.split(r"[\s,]+", rest.strip())) - {""} or {"inference"}
        unknown = sorted(scopes - set(SCOPES))
        if unknown:
            raise TunelabError(f"--api-keys-file {path}:{number}: unknown scope '{unknown[0]}' "
                               f"(scopes: {', '.join(SCOPES)})")
        (fine_tuning if "fine-tuning" in scopes else inference).add(key)
    if not inference and not fine_tuning:
        raise TunelabError(f"--api-keys-file {path}: holds no key")
    return frozenset(inference), frozenset(fine_tuning)
