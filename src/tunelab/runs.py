"""The run folder: one per training run, shared by train, eval, generate, export and serve.

Layout (paths relative to the run folder):
    run.json          what ran, on what, with what result (see `new_record`)
    recipe.yaml       the resolved recipe
    data/             the splits exactly as used (train/validation/test .jsonl)
    checkpoints/      trainer checkpoints (resume from the last)
    model/            what training produced: an adapter in PEFT's format, or a whole model; plus the tokenizer
    merged/           the adapter folded into the base weights, where the method can merge
    eval.json         base-vs-tuned evaluation; eval_worst.jsonl its worst examples
    eval/             examples.jsonl (every test row: both outputs, flip), forgetting_answers.jsonl
    report.html       the self-contained evaluation report
    train_log.jsonl   the trainer's log history
    tensorboard/      TensorBoard event files
"""

from __future__ import annotations

import os
import platform
import shutil
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

from tunelab import __version__
from tunelab.errors import TunelabError
from tunelab.files import read_json, write_json

RUN_SCHEMA_VERSION = 1
TRACKED_PACKAGES = ("torch", "transformers", "peft", "trl", "accelerate", "datasets", "safetensors", "tokenizers")


@dataclass(frozen=True)
class RunDir:
    root: Path

    @property
    def record_path(self) -> Path:
        return self.root / "run.json"

    @property
    def recipe_path(self) -> Path:
        return self.root / "recipe.yaml"

    @property
    def data(self) -> Path:
        return self.root / "data"

    @property
    def checkpoints(self) -> Path:
        return self.root / "checkpoints"

    @property
    def model(self) -> Path:
        return self.root / "model"

    @property
    def merged(self) -> Path:
        return self.root / "merged"

    @property
    def eval_json(self) -> Path:
        return self.root / "eval.json"

    @property
    def eval_worst(self) -> Path:
        return self.root / "eval_worst.jsonl"

    @property
    def train_log(self) -> Path:
        return self.root / "train_log.jsonl"

    @property
    def eval_dir(self) -> Path:
        return self.root / "eval"

    @property
    def eval_examples(self) -> Path:
        return self.eval_dir / "examples.jsonl"

    @property
    def forgetting_answers(self) -> Path:
        return self.eval_dir / "forgetting_answers.jsonl"

    @property
    def report_html(self) -> Path:
        return self.root / "report.html"

    @property
    def tensorboard(self) -> Path:
        return self.root / "tensorboard"

    def is_run(self) -> bool:
        return self.record_path.is_file()

    def is_prepared_only(self) -> bool:
        """Holds nothing but what `tunelab data prepare` wrote (data/ with its marker): train may use it."""
        return (self.data / "prepared.json").is_file() and [p.name for p in self.root.iterdir()] == ["data"]

    def read_record(self) -> dict[str, Any]:
        return read_json(self.record_path)

    def write_record(self, record: dict[str, Any]) -> None:
        write_json(self.record_path, record)


def check_output_dir(root: Path, resume: bool, overwrite: bool) -> RunDir:
    """Refuse, before anything is written, to clobber a run unless told to, and ever to use a non-run folder."""
    run = RunDir(root)
    if resume and overwrite:
        raise TunelabError("--resume and --overwrite contradict each other; pick one")
    if resume:
        if not run.is_run():
            raise TunelabError(f"{root}: no run to resume here")
        return run
    if is_occupied(run):
        if not run.is_run():
            raise TunelabError(f"{root}: exists and is not a tunelab run; choose another output.dir")
        if not overwrite:
            raise TunelabError(f"{root}: already holds a run; use --resume to continue it or --overwrite to replace it")
    return run


def prepare_run_dir(root: Path, resume: bool, overwrite: bool) -> RunDir:
    """The run folder to write into, checked again (time passed since the first check) and emptied on --overwrite."""
    run = check_output_dir(root, resume, overwrite)
    if not resume and is_occupied(run):
        shutil.rmtree(root)
    root.mkdir(parents=True, exist_ok=True)
    return run


def is_occupied(run: RunDir) -> bool:
    """Anything in the folder but what `data prepare` put there for this run."""
    root = run.root
    occupied = root.exists() and any(root.iterdir()) if root.is_dir() else root.exists()
    return occupied and not run.is_prepared_only()


def open_run(root: str | Path) -> RunDir:
    run = RunDir(Path(root))
    if not run.is_run():
        raise TunelabError(f"{root}: not a tunelab run folder (no run.json)")
    try:
        record = run.read_record()
    except ValueError as error:
        raise TunelabError(f"{run.record_path}: not valid JSON ({error})") from None
    if not isinstance(record, dict):
        raise TunelabError(f"{run.record_path}: not a run record")
    check_run_format(root, record)
    return run


def check_run_format(root: str | Path, record: dict[str, Any]) -> None:
    """A run folder written in another run format is refused with what to do, never half-read."""
    written = record.get("schema_version")
    if written == RUN_SCHEMA_VERSION:
        return
    by = f"tunelab {record.get('tunelab_version', '?')}"
    if isinstance(written, int) and written > RUN_SCHEMA_VERSION:
        advice = "it comes from a newer tunelab; upgrade tunelab to read it"
    elif isinstance(written, int):
        advice = "it comes from an older tunelab; read it with that version or train the run again"
    else:
        advice = "run.json has no valid schema_version"
    raise TunelabError(f"{root}: run format {written} (written by {by}), this tunelab {__version__} reads format "
                       f"{RUN_SCHEMA_VERSION}; {advice}")


def now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def new_record(kind: str, recipe: dict[str, Any]) -> dict[str, Any]:
    return {
        "schema_version": RUN_SCHEMA_VERSION,
        "tunelab_version": __version__,
        "kind": kind,
        "status": "running",
        "started_at": now(),
        "ended_at": None,
        "recipe": recipe,
        "environment": environment(),
    }


def environment() -> dict[str, Any]:
    packages = {}
    for name in TRACKED_PACKAGES:
        try:
            packages[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            packages[name] = None
    return {
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "host": socket.gethostname(),
        "cpu_count": os.cpu_count(),
        "packages": packages,
        "git_sha": git_sha(Path.cwd()),
    }


def git_sha(folder: Path) -> str | None:
    try:
        result = subprocess.run(["git", "rev-parse", "HEAD"], cwd=folder, capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return result.stdout.strip() or None if result.returncode == 0 else None
