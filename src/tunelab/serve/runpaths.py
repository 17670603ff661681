"""Which run folders `POST /v1/adapters` may open: only those inside the server's `--runs-root` folders.

The admin names a run by a path on the server. The path is resolved (symlinks followed) before it is compared with
the roots, and so is every file inside the run that the loader reads (run.json, everything under model/), so a
symlink cannot lead out of the roots: a run.json linked to /etc/shadow is refused, never read. Every refusal has the
same text, whatever the reason (outside the roots, missing, not a run, too long, unreadable, no tokenizer), so the
answers cannot be used to learn which paths exist on the server.

Runs named on the command line (`tunelab serve RUN`) are the operator's own choice and are not confined.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

from tunelab.errors import TunelabError

REFUSED = "run: not a loadable run folder inside this server's --runs-root folders"
MAX_PATH_CHARS = 1024  # a run path longer than this is refused before the file system sees it
MAX_RUN_FILES = 1000  # files under model/ checked one by one; a larger folder is not a saved adapter
MAX_RECORD_BYTES = 16 << 20  # a run.json larger than this is not one tunelab wrote


class RunRefused(TunelabError):
    """The run path an admin gave cannot be loaded; its message is always REFUSED."""

    def __init__(self) -> None:
        super().__init__(REFUSED)


def confined_run(text: str, roots: Sequence[Path]) -> Path:
    """The resolved run folder `text` names, when it and the files the loader reads all lie inside `roots`."""
    roots = resolved_roots(roots)
    if not text or len(text) > MAX_PATH_CHARS or "\x00" in text or not roots:
        raise RunRefused()
    try:
        folder = Path(text).expanduser().resolve(strict=True)
        if not (folder.is_dir() and inside(folder, roots)):
            raise RunRefused()
        record = (folder / "run.json").resolve(strict=True)
        if not (inside(record, roots) and record.is_file() and record.stat().st_size <= MAX_RECORD_BYTES):
            raise RunRefused()
        check_model_files(folder / "model", roots)
    except (OSError, RuntimeError, ValueError):  # missing, a symlink loop, a name too long, unreadable
        raise RunRefused() from None
    return folder


def check_model_files(model: Path, roots: Sequence[Path]) -> None:
    """Everything under the run's model/ folder (adapter, tokenizer) resolves inside the roots."""
    model = model.resolve(strict=True)
    if not (model.is_dir() and inside(model, roots)):
        raise RunRefused()
    files = 0
    for entry in model.rglob("*"):
        files += 1
        if files > MAX_RUN_FILES or not inside(entry.resolve(strict=True), roots):
            raise RunRefused()
    if not (model / "tokenizer_config.json").is_file():
        raise RunRefused()


def inside(path: Path, roots: Sequence[Path]) -> bool:
    return any(path == root or path.is_relative_to(root) for root in roots)


def resolved_roots(roots: Sequence[Path]) -> tuple[Path, ...]:
    """The roots with their own symlinks resolved, so the comparison is between real paths; missing ones dropped."""
    found = []
    for root in roots:
        try:
            real = Path(root).expanduser().resolve(strict=True)
        except (OSError, RuntimeError):
            continue
        if real.is_dir() and real not in found:
            found.append(real)
    return tuple(found)
