"""Where an export is written: never into the run's own files, never over a user's folder unless told to.

The export is built in a private scratch folder beside the destination and renamed into place at the end, so an
interrupted export never leaves a half-written folder under the destination's name.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from tunelab.errors import TunelabError
from tunelab.run.folder import RunDir

# Folders of a run that an export may never write into or replace (the run's own results).
PROTECTED = ("model", "merged", "data", "checkpoints")


def default_destination(run: RunDir, label: str) -> Path:
    return run.root / "export" / label


def check_destination(dest: Path, run: RunDir, overwrite: bool) -> None:
    """Refuse a destination that is (or holds, or lies inside) the run's own files, or a non-empty folder."""
    target = dest.resolve()
    root = run.root.resolve()
    protected = [root / name for name in PROTECTED]
    if target == root or root.is_relative_to(target) or any(target.is_relative_to(p) for p in protected):
        raise TunelabError(f"--out {dest}: would overwrite the run {run.root} itself; choose another folder")
    if target.exists() and not target.is_dir():
        raise TunelabError(f"--out {dest}: exists and is not a folder")
    if target.is_dir() and any(target.iterdir()) and not overwrite:
        raise TunelabError(f"--out {dest}: folder is not empty; use --overwrite to replace it")


def scratch_folder(dest: Path) -> Path:
    partial = dest.with_name(f".{dest.name}.partial-{os.getpid()}")
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    return partial


def move_into_place(partial: Path, dest: Path) -> None:
    if dest.exists():
        shutil.rmtree(dest)
    partial.rename(dest)
