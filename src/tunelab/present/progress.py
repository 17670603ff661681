"""A rich progress bar for the trainer: step, loss, learning rate, tokens/s, ETA; validation lines as they come."""

from __future__ import annotations

import time
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from transformers import TrainerCallback


class RichProgress(TrainerCallback):
    def __init__(self, console: Console):
        self.console = console
        self.progress: Progress | None = None
        self.task = None
        self.started = 0.0
        self.tokens_at_start = 0
        self.tokens_per_second = 0.0

    def on_train_begin(self, args, state, control, **kwargs):
        if not state.is_world_process_zero:
            return
        self.progress = Progress(
            TextColumn("[bold]train"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[stats]}"),
            TimeElapsedColumn(),
            TextColumn("eta"),
            TimeRemainingColumn(),
            console=self.console,
        )
        self.progress.start()
        self.task = self.progress.add_task("train", total=state.max_steps, completed=state.global_step, stats="")
        self.started = time.perf_counter()
        # A resumed run starts with the tokens its earlier part saw: speed counts this session's only.
        self.tokens_at_start = state.num_input_tokens_seen

    def on_step_end(self, args, state, control, **kwargs):
        if self.progress is None:
            return
        elapsed = time.perf_counter() - self.started
        if elapsed > 0:
            self.tokens_per_second = (state.num_input_tokens_seen - self.tokens_at_start) / elapsed
        self.progress.update(self.task, completed=state.global_step)

    def on_log(self, args, state, control, logs: dict[str, Any] | None = None, **kwargs):
        if self.progress is not None and logs and "loss" in logs:
            rate = f"{self.tokens_per_second:,.0f} tok/s"
            stats = f"loss {logs['loss']:.4f}  lr {logs.get('learning_rate', 0):.2e}  {rate}"
            self.progress.update(self.task, stats=stats)

    def on_evaluate(self, args, state, control, metrics: dict[str, Any] | None = None, **kwargs):
        if self.progress is not None and metrics and "eval_loss" in metrics:
            self.progress.console.print(f"  step {state.global_step}: validation loss {metrics['eval_loss']:.4f}")

    def on_train_end(self, args, state, control, **kwargs):
        if self.progress is not None:
            self.progress.update(self.task, completed=state.global_step)
            self.progress.stop()
            self.progress = None
