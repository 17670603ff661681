"""What a running job tells the jobs database, from inside the trainer (a transformers TrainerCallback): each
log becomes an event (OpenAI's `metrics` events: step, train_loss, valid_loss, total_steps), each saved checkpoint
a checkpoint row, the estimated finish is kept current, and a cancel or pause asked through the API stops training
at the end of the current optimizer step (pause first saves a checkpoint, so resume loses nothing)."""

from __future__ import annotations

import json
import sqlite3
import time
from pathlib import Path
from typing import Any

from transformers import TrainerCallback

from tunelab.errors import StopRequested
from tunelab.jobs.db import new_id, transaction
from tunelab.jobs.queue import add_event

# The trainer's log names -> OpenAI's metric names
METRICS = {"loss": "train_loss", "eval_loss": "valid_loss", "mean_token_accuracy": "train_mean_token_accuracy",
           "eval_mean_token_accuracy": "valid_mean_token_accuracy"}


def openai_metrics(step: int, logs: dict[str, Any]) -> dict[str, float]:
    metrics = {"step": step}
    metrics.update({name: float(logs[key]) for key, name in METRICS.items() if isinstance(logs.get(key), (int,
                                                                                                          float))})
    return metrics


class JobProgress(TrainerCallback):
    def __init__(self, connection: sqlite3.Connection, job_id: str, fine_tuned_model: str, serve_dir: Path):
        self.connection, self.job_id, self.model, self.serve_dir = connection, job_id, fine_tuned_model, serve_dir
        self.started = time.monotonic()
        self.first_step: int | None = None
        self.stopping: str | None = None
        self.last: dict[str, float] = {}  # the latest metrics, for the checkpoint rows

    def on_train_begin(self, args, state, control, **kwargs):
        """On resume the steps after the checkpoint are trained again: their events go, as train_log.jsonl cuts
        them, so each step is listed once."""
        self.first_step = state.global_step
        with transaction(self.connection):
            self.connection.execute("DELETE FROM events WHERE job_id = ? AND type = 'metrics' AND "
                                    "json_extract(data, '$.step') > ?", (self.job_id, state.global_step))
            if state.global_step:
                add_event(self.connection, self.job_id, f"Resumed from the checkpoint at step {state.global_step}")

    def on_log(self, args, state, control, logs: dict[str, Any] | None = None, **kwargs):
        if not logs or not any(key in logs for key in METRICS):
            return
        metrics = openai_metrics(state.global_step, logs)
        self.last.update(metrics)
        parts = ", ".join(f"{name.replace('_', ' ')}={value:.4g}" for name, value in metrics.items() if name != "step")
        with transaction(self.connection):
            add_event(self.connection, self.job_id, f"Step {state.global_step}/{state.max_steps}: {parts}",
                      kind="metrics", data={**metrics, "total_steps": state.max_steps})
            self.connection.execute("UPDATE jobs SET estimated_finish = ? WHERE id = ?",
                                    (self.estimate(state), self.job_id))

    def estimate(self, state) -> int | None:
        done = state.global_step - (self.first_step or 0)
        if done <= 0:
            return None
        per_step = (time.monotonic() - self.started) / done
        return int(time.time() + per_step * (state.max_steps - state.global_step))

    def on_step_begin(self, args, state, control, **kwargs):
        if self.stopping:  # the pause's checkpoint is saved and committed by now
            raise StopRequested(self.stopping)

    def on_step_end(self, args, state, control, **kwargs):
        row = self.connection.execute("SELECT requested FROM jobs WHERE id = ?", (self.job_id,)).fetchone()
        requested = row["requested"] if row else None
        if requested == "cancel":
            raise StopRequested("cancel")
        if requested == "pause" and state.global_step < state.max_steps:
            control.should_save = True
            self.stopping = "pause"

    def on_train_end(self, args, state, control, **kwargs):
        with transaction(self.connection):
            add_event(self.connection, self.job_id, f"Training done at step {state.global_step}; evaluating the "
                                                    "tuned model against the base on the held-out test rows")

    def on_save(self, args, state, control, **kwargs):
        folder = Path(args.output_dir) / f"checkpoint-{state.global_step}"
        with transaction(self.connection):
            self.connection.execute(
                "INSERT INTO checkpoints (id, job_id, created_at, step, metrics, fine_tuned_model_checkpoint, path) "
                "VALUES (?, ?, ?, ?, ?, ?, ?)",
                (new_id("ftckpt-"), self.job_id, int(time.time()), state.global_step,
                 json.dumps({**self.last, "step": state.global_step}),
                 f"{self.model}:ckpt-step-{state.global_step}", relative(folder, self.serve_dir)))
            add_event(self.connection, self.job_id, f"Checkpoint created at step {state.global_step}")


def relative(path: Path, root: Path) -> str:
    try:
        return str(path.resolve().relative_to(root.resolve()))
    except ValueError:
        return str(path)
