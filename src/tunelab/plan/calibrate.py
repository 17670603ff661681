"""The time a run will take: measured by a short calibration on this machine, or computed from a given peak.

Calibration builds the real model and the real trainer through the task (the same code `tunelab train` runs, with
its speed levers) and trains on the run's own first batches (the same seed draws the same rows) twice: one warm-up
step and three timed steps, then the same four steps again. On CPU the first time a batch shape is met costs more
than the step itself (PyTorch's oneDNN kernels set up and cache a primitive for every new matmul shape); a run meets
a few shapes (train.pad_to_multiple_of rounds batches) many times. So the second pass gives the steady rate: tokens
per second over its timed steps, times the tokens the run will train on; the first pass, what a new shape costs
(its timed steps' excess over the second pass's, per step), times the shapes the run is expected to meet (plan/
data_size.py); plus what the very first step took beyond its tokens (the run pays it once too). Validation during
training, checkpoint saves and the evaluation after training are not included (said in the plan): their cost
depends on settings the steps do not show.

From a peak: a step costs 6N FLOPs per token for full fine-tuning (forward 2N, backward 4N) and 4N where the base is
frozen (no weight gradients), N = parameters a token multiplies by (all but the input embedding); at 100% of the
given peak, so a lower bound.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from tunelab.plan.data_size import DataSize
    from tunelab.plan.memory import Holding
    from tunelab.plan.model_size import ModelSize
    from tunelab.train.lifecycle import Setup

WARMUP_STEPS = 1
TIMED_STEPS = 3
EXCLUDED = "validation, checkpoint saves and the evaluation after training are not included"


@dataclass(frozen=True)
class TimeEstimate:
    source: str  # how it was estimated
    tokens_per_second: float
    train_seconds: float  # all the run's optimizer steps
    excluded: str = EXCLUDED


def step_recorder() -> Any:
    from transformers import TrainerCallback

    class StepRecorder(TrainerCallback):
        """Seconds and tokens of each optimizer step (tokens: the Trainer's own count of non-padding inputs), and
        the seconds of its update (the optimizer's step, the schedule, zeroing the gradients): a cost per step,
        whatever its tokens."""

        def __init__(self) -> None:
            self.steps: list[tuple[float, int, float]] = []
            self.began, self.updating, self.tokens_before = 0.0, 0.0, 0

        def on_step_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            self.began, self.tokens_before = time.perf_counter(), state.num_input_tokens_seen

        def on_pre_optimizer_step(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            self.updating = time.perf_counter()

        def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            now = time.perf_counter()
            update = now - self.updating if self.updating > self.began else 0.0
            self.steps.append((now - self.began, state.num_input_tokens_seen - self.tokens_before, update))

    return StepRecorder()


def calibration_arguments(setup: "Setup", folder: Any) -> dict[str, Any]:
    """The run's training arguments for a few steps that save, validate and report nothing."""
    from pathlib import Path

    from tunelab.run.folder import RunDir
    from tunelab.train.trainer import training_arguments

    arguments = training_arguments(setup.recipe.train, RunDir(Path(folder)), setup.placement, False)
    arguments.update(max_steps=WARMUP_STEPS + TIMED_STEPS, save_strategy="no", eval_strategy="no", report_to=[],
                     load_best_model_at_end=False, metric_for_best_model=None, greater_is_better=None,
                     logging_first_step=False, logging_steps=10_000)
    return arguments


def calibrated_time(setup: "Setup", data: "DataSize") -> TimeEstimate:
    import tempfile

    from tunelab.tasks.base import TrainerParts
    from tunelab.train.lifecycle import build_model
    from tunelab.train.trainer import training_speed

    recipe = setup.recipe
    model = build_model(setup)
    recorder = step_recorder()
    with tempfile.TemporaryDirectory(prefix="tunelab-calibrate-") as folder:
        parts = TrainerParts(model, setup.tokenizer, setup.data, calibration_arguments(setup, folder), [recorder],
                             setup.rewards,
                             training_speed(recipe.train, setup.method.bf16_frozen, setup.placement,
                                            setup.data.padding_free))
        trainer = setup.task.build_trainer(parts)
        trainer.train()
        trainer.train()  # the same batches again (the same seed): their shapes met before
    return scaled(recorder.steps, data, setup.placement.describe())


def scaled(steps: list[tuple[float, int, float]], data: "DataSize", where: str) -> TimeEstimate:
    """The run's training time from measured (seconds, tokens, update seconds) steps: two passes over the same
    batches, each a warm-up step and timed steps (the module's doc). A step costs its update (the same whatever its
    tokens: for full fine-tuning AdamW over every weight) plus its tokens at the forward and backward's rate, so a
    calibration on shorter or longer batches than the run's mean still scales right."""
    per_pass = WARMUP_STEPS + TIMED_STEPS
    first, second = steps[:per_pass], steps[per_pass:2 * per_pass]
    timed, timed_first = second[WARMUP_STEPS:], first[WARMUP_STEPS:]
    seconds, tokens = sum(step[0] for step in timed), sum(step[1] for step in timed)
    update = sum(step[2] for step in timed) / len(timed)
    # what meeting a shape for the first time adds to a step (each timed step of the first pass met a new one)
    new_shape = max(sum(step[0] for step in timed_first) - seconds, 0.0) / len(timed)
    later_shapes = new_shape * max(data.shapes - 1, 0)  # the first step's shape is in `first_step`
    source = (f"calibration: {len(timed)} steps after {WARMUP_STEPS} warm-up, twice, on {where}; "
              f"{update:.2f} s a step's update, {new_shape:.2f} s each new batch shape ({data.shapes} expected)")
    if not tokens:  # a trainer that counts no tokens (a classifier head): seconds per step instead
        per_step = seconds / len(timed)
        first_step = max(first[0][0] - per_step, 0.0)
        return TimeEstimate(source, data.tokens_per_step / per_step,
                            first_step + later_shapes + per_step * data.steps)
    per_token = max(seconds - update * len(timed), 0.0) / tokens
    first_step = max(first[0][0] - update - first[0][1] * per_token, 0.0)
    return TimeEstimate(source, tokens / seconds if seconds else float("inf"),
                        first_step + later_shapes + update * data.steps + data.trained_tokens * per_token)


def peak_time(size: "ModelSize", holding: "Holding", data: "DataSize", peak_gflops: float) -> TimeEstimate:
    arch = size.architecture
    # all but the embedding lookup; a tied output head is the embedding, and every token multiplies by it
    multiplied = size.total - (0 if arch.tied else arch.vocabulary * arch.hidden)
    per_token = (6 if size.trainable >= size.base else 4) * multiplied
    rate = peak_gflops * 1e9 / per_token
    return TimeEstimate(f"{peak_gflops:g} GFLOP/s peak at 100% ({per_token / 1e9:.2f} GFLOP per token)", rate,
                        data.trained_tokens / rate)
