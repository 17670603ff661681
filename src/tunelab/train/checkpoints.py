"""Checkpoints a kill cannot leave half-written: a manifest committed last, verified before a run resumes from it.

transformers' Trainer writes `checkpoint-N/` in place (weights, optimizer, scheduler, RNG state,
trainer_state.json) and then calls the callbacks' `on_save`. Writing to a temporary folder and renaming it cannot be
done from outside the Trainer: it names the folder itself and tracks the best and the rotated checkpoints by that
name, and overriding its private `_save_checkpoint` in every task's trainer (TRL's included) would tie tunelab to
its internals. So the commit is the manifest instead: `commit` fsyncs every file of the folder, writes
`tunelab-manifest.json` (each file's size and sha256) under a temporary name, fsyncs it, renames it into place and
fsyncs the folder. A checkpoint is complete exactly when its manifest is there and every file matches it: a kill
at any moment of the save leaves a folder without a manifest, and bytes damaged later (truncated, zeroed, emptied)
no longer match their hash. `--resume` takes the newest checkpoint that verifies and says which it skipped, and why.

Rotation (`train.save_total_limit`) is done here too, after the commit, so it never deletes the last complete
checkpoint while the newest one is still being written (the Trainer's own rotation runs before `on_save`).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from transformers import TrainerCallback
from transformers.trainer_callback import ExportableState

from tunelab.files import sha256_file

MANIFEST = "tunelab-manifest.json"
MANIFEST_FORMAT = 1
TRAINER_STATE = "trainer_state.json"
CHECKPOINT_NAME = re.compile(r"checkpoint-(\d+)")


@dataclass
class Choice:
    """The checkpoint to resume from (None: none is complete) and the newer ones passed over, with the reason."""

    checkpoint: Path | None
    skipped: list[tuple[Path, str]] = field(default_factory=list)


def checkpoint_step(folder: Path) -> int | None:
    match = CHECKPOINT_NAME.fullmatch(folder.name)
    return int(match.group(1)) if match else None


def checkpoint_folders(root: Path) -> list[Path]:
    """The checkpoint-N folders under `root`, oldest step first."""
    if not root.is_dir():
        return []
    folders = [path for path in root.iterdir() if path.is_dir() and checkpoint_step(path) is not None]
    return sorted(folders, key=checkpoint_step)


def checkpoint_files(folder: Path) -> list[Path]:
    return sorted(path for path in folder.rglob("*")
                  if path.is_file() and path.name != MANIFEST and not path.name.startswith(f".{MANIFEST}"))


def commit(folder: Path) -> None:
    """Make `folder` durable and mark it complete: fsync each file, then the manifest, atomically, then the folder."""
    files: dict[str, dict[str, Any]] = {}
    for path in checkpoint_files(folder):
        fsync_path(path)
        files[path.relative_to(folder).as_posix()] = {"size": path.stat().st_size, "sha256": sha256_file(path)}
    temporary = folder / f".{MANIFEST}.tmp"
    try:
        with temporary.open("w", encoding="utf-8") as handle:
            json.dump({"format": MANIFEST_FORMAT, "files": files}, handle, indent=1)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, folder / MANIFEST)
    except OSError as error:
        temporary.unlink(missing_ok=True)
        if error.filename is None:
            raise OSError(error.errno, error.strerror, str(folder / MANIFEST)) from error
        raise
    fsync_path(folder)
    fsync_path(folder.parent)


def fsync_path(path: Path) -> None:
    descriptor = os.open(path, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def is_committed(folder: Path) -> bool:
    """The save finished (its manifest is there); whether the files still match it is `verify`'s question."""
    return (folder / MANIFEST).is_file()


def trainer_state(folder: Path) -> dict[str, Any]:
    """A checkpoint's trainer_state.json, as data."""
    return json.loads((folder / TRAINER_STATE).read_text(encoding="utf-8"))


def verify(folder: Path) -> str | None:
    """Why `folder` is not a complete checkpoint, or None when every file matches its manifest."""
    if not is_committed(folder):
        return "no manifest: the save never finished"
    try:
        manifest = json.loads((folder / MANIFEST).read_text(encoding="utf-8"))
        files = manifest["files"]
        assert manifest["format"] == MANIFEST_FORMAT and isinstance(files, dict)
    except (ValueError, KeyError, TypeError, AssertionError):
        return f"{MANIFEST} is damaged"
    if TRAINER_STATE not in files:
        return f"no {TRAINER_STATE} in the manifest"
    for name, expected in files.items():
        path = folder / name
        if not path.is_file():
            return f"{name} is missing"
        size = path.stat().st_size
        if size != expected["size"]:
            return f"{name} is {size} bytes, {expected['size']} were written"
        if sha256_file(path) != expected["sha256"]:
            return f"{name} changed since it was written (sha256 differs)"
    return None


def newest_verified(root: Path) -> Choice:
    """The newest checkpoint under `root` that verifies, and every newer one that does not, with why."""
    skipped: list[tuple[Path, str]] = []
    for folder in reversed(checkpoint_folders(root)):
        reason = verify(folder)
        if reason is None:
            return Choice(folder, skipped)
        skipped.append((folder, reason))
    return Choice(None, skipped)


def discard(folders: list[Path]) -> None:
    """Remove checkpoints that will never be resumed from: the Trainer would write the same step into them again,
    and a stale file left inside would end up in the new manifest."""
    for folder in folders:
        shutil.rmtree(folder, ignore_errors=True)


def rotate(root: Path, limit: int | None, best: str | None) -> None:
    """Keep the newest `limit` complete checkpoints (and the best one); drop older ones and incomplete leftovers."""
    folders = checkpoint_folders(root)
    complete = [folder for folder in folders if is_committed(folder)]
    if not complete:
        return
    newest = checkpoint_step(complete[-1])
    keep = set(complete[-limit:]) if limit else set(complete)
    if best:
        keep.add(Path(best))
    doomed = [folder for folder in folders if folder not in keep and
              (folder in complete or checkpoint_step(folder) < newest)]
    discard(doomed)


class CheckpointCommit(TrainerCallback):
    """Commits each checkpoint the Trainer has just written, then rotates. It must be the last callback: a
    callback that runs after it would run after the commit, so an interruption there could not be a half save."""

    def __init__(self, root: Path, save_total_limit: int | None):
        self.root = root
        self.save_total_limit = save_total_limit

    def on_save(self, args, state, control, **kwargs):
        if args.world_size > 1:
            wait_for_every_rank()  # each rank writes its own files (RNG state, optimizer shards) before the commit
        if not state.is_world_process_zero:  # one writer: the process that wrote the checkpoint's shared files
            return
        commit(self.root / f"checkpoint-{state.global_step}")
        rotate(self.root, self.save_total_limit, state.best_model_checkpoint)


def wait_for_every_rank() -> None:
    """A barrier of the run's processes. The Trainer calls `on_save` on every rank right after that rank's own
    part of the checkpoint is written, without waiting for the others; the manifest must list all of them."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.barrier()


class TrainingClock(TrainerCallback, ExportableState):
    """Seconds spent inside training steps over the whole run. Validation, saving and logging happen after a step's
    end, so they are not counted; the total is kept in each checkpoint's trainer_state.json (the Trainer's stateful
    callbacks) so a resumed run goes on counting from where the checkpoint was."""

    def __init__(self, seconds: float = 0.0):
        self.seconds = seconds
        self.began: float | None = None

    def on_step_begin(self, args, state, control, **kwargs):
        self.began = time.perf_counter()

    def on_step_end(self, args, state, control, **kwargs):
        if self.began is not None:
            self.seconds += time.perf_counter() - self.began
            self.began = None

    def state(self) -> dict:
        return {"args": {"seconds": self.seconds}, "attributes": {}}


def callback_state(trainer_state: dict[str, Any], name: str) -> dict[str, Any] | None:
    """What the stateful callback `name` kept in a checkpoint's trainer_state.json (the first, where several)."""
    saved = (trainer_state.get("stateful_callbacks") or {}).get(name)
    if isinstance(saved, list):
        saved = saved[0] if saved else None
    return saved if isinstance(saved, dict) else None


def saved_clock_seconds(trainer_state: dict[str, Any]) -> float:
    """The TrainingClock total a checkpoint's trainer_state.json holds (0 for checkpoints without one)."""
    saved = callback_state(trainer_state, TrainingClock.__name__)
    return float(saved["args"]["seconds"]) if saved else 0.0


def finished_training(trainer_state: dict[str, Any]) -> bool:
    """The checkpoint is the end of training: every planned step is done, or early stopping had run out of
    patience there. The Trainer takes a step before it checks either, so it must not be asked to go on."""
    max_steps = trainer_state.get("max_steps") or 0
    if trainer_state.get("global_step", 0) >= max_steps > 0:
        return True
    stopping = callback_state(trainer_state, "EarlyStoppingCallback")
    if stopping is None:
        return False
    patience = stopping.get("args", {}).get("early_stopping_patience") or 0
    return 0 < patience <= stopping.get("attributes", {}).get("early_stopping_patience_counter", 0)
