"""A long command's steps as progress: each step (a model answering the test rows, writing an export, loading it
back) is a `progress(stage, done, total)` stage of one unit, so the terminal shows which step runs and for how long
(present/progress.py StageProgress draws it). Without a `progress` nothing happens."""

from __future__ import annotations

from typing import Callable

Progress = Callable[[str, int, int], None]


class Steps:
    def __init__(self, progress: Progress | None, prefix: str):
        self.progress, self.prefix, self.current = progress, prefix, None

    def begin(self, name: str | None) -> None:
        """Step `name` starts and the one before it is done; None: the last one is done."""
        if self.progress is None:
            return
        if self.current is not None:
            self.progress(self.current, 1, 1)
        self.current = None if name is None else f"{self.prefix}: {name}"
        if self.current is not None:
            self.progress(self.current, 0, 1)
