"""Trainer callbacks that write to the run folder."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from transformers import TrainerCallback

from tunelab.files import write_jsonl


class JsonlLog(TrainerCallback):
    """Append each trainer log (loss, lr, validation loss, ...) to train_log.jsonl as it happens.

    On --resume the steps after the checkpoint are trained again, so the log is cut back to the checkpoint's step
    first: each step is logged once, whatever number of resumes the run took (a line cut short by a kill goes too).
    """

    def __init__(self, path: Path):
        self.path = path

    def on_train_begin(self, args, state, control, **kwargs):
        if state.is_world_process_zero and self.path.is_file():
            write_jsonl(self.path, [entry for entry in logged(self.path) if entry["step"] <= state.global_step])

    def on_log(self, args, state, control, logs: dict[str, Any] | None = None, **kwargs):
        if logs and state.is_world_process_zero:
            with self.path.open("a", encoding="utf-8") as handle:
                handle.write(json.dumps({"step": state.global_step, **logs}) + "\n")


def logged(path: Path) -> list[dict[str, Any]]:
    """The entries of a train_log.jsonl, without a last line a kill cut short."""
    entries = []
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        try:
            entry = json.loads(line)
        except ValueError:
            continue
        if isinstance(entry, dict) and isinstance(entry.get("step"), int):
            entries.append(entry)
    return entries
