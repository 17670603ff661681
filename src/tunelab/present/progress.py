"""Progress on the terminal: the trainer's bar (step, loss, learning rate, tokens/s, ETA; a bar for each validation
pass, lines with its loss) and the stage bars of data preparation, evaluation and export."""

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
        self.validation = None  # the bar of a validation pass while one runs

    def on_train_begin(self, args, state, control, **kwargs):
        if not state.is_world_process_zero:
            return
        self.progress = Progress(
            TextColumn("[bold]{task.description}"),
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

    def on_prediction_step(self, args, state, control, eval_dataloader=None, **kwargs):
        """A validation batch done: without this bar a long validation pass (the final one above all) looks like
        a frozen run."""
        if self.progress is None:
            return
        if self.validation is None:
            total = len(eval_dataloader) if eval_dataloader is not None else None
            self.validation = self.progress.add_task("validation", total=total, stats="")
        self.progress.advance(self.validation)

    def on_evaluate(self, args, state, control, metrics: dict[str, Any] | None = None, **kwargs):
        if self.progress is not None and self.validation is not None:
            self.progress.remove_task(self.validation)
            self.validation = None
        if self.progress is not None and metrics and "eval_loss" in metrics:
            self.progress.console.print(f"  step {state.global_step}: validation loss {metrics['eval_loss']:.4f}")

    def on_train_end(self, args, state, control, **kwargs):
        if self.progress is not None:
            self.progress.update(self.task, completed=state.global_step)
            self.progress.stop()
            self.progress = None


class StageProgress:
    """Progress of the long passes that are not training (data preparation, evaluation, export), on stderr.

    Domain code is handed this as a plain callable, `progress(stage, done, total)`, and knows nothing of rich. One
    bar per stage; a stage whose `done` reaches `total` is marked complete. Nothing is drawn when stderr is not a
    terminal (CI logs, pipes) or the console is quiet, so output that scripts read stays as it was.
    """

    def __init__(self, console: Console | None = None):
        self.console = console or Console(stderr=True)
        self.progress = Progress(
            TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
            console=self.console, transient=True,
            disable=self.console.quiet or not self.console.is_terminal,
        )
        self.tasks: dict[str, Any] = {}

    def __enter__(self) -> "StageProgress":
        self.progress.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.progress.stop()

    def __call__(self, stage: str, done: int, total: int) -> None:
        if stage not in self.tasks:
            self.tasks[stage] = self.progress.add_task(stage, total=total)
        self.progress.update(self.tasks[stage], completed=done, total=total)
