"""The interface every training task implements.

A task is what is learned from which rows: supervised fine-tuning of a causal LM on conversations or text,
classification, preference tuning (dpo), and (later) the other preference and RL tasks. Like a tuning method
(methods/base.py), a task is data plus plain functions, gathered in one `Task(...)` and listed in registry.py; the
training lifecycle (train/lifecycle.py), the evaluator (evaluate/evaluator.py), export and serving ask the task
instead of branching on its name.

What a task declares, in the order a run needs it:
  row_kinds      the kinds of rows it trains on (data/formats.py Example.kind); others are refused in one line
  prepare        the doctor's rows -> training examples (datasets, collator, counts) and what it decided (task_state)
  load_model     the model to train, freshly built from the base checkpoint (before the method wraps it)
  build_trainer  the trainer, from the parts every task shares (arguments, callbacks, datasets)
  evaluation     how a run is evaluated: the plan (metrics, references), how each model answers, the probes
  inference      what a trained run is for: loading base and tuned, whether it writes text, how it classifies
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

from pydantic import BaseModel, ConfigDict

if TYPE_CHECKING:
    from tunelab.config.schema import Recipe
    from tunelab.data.cache import Prepared
    from tunelab.data.split import Splits
    from tunelab.evaluate.outputs import ModelOutputs
    from tunelab.evaluate.plan import EvalPlan
    from tunelab.rewards.build import RewardContext
    from tunelab.run.models import RunModels
    from tunelab.run.record import SplitCounts


class TaskConfig(BaseModel):
    """Options of one task (the recipe's `task:` section). Subclasses add `name: Literal[...]` and their fields."""

    model_config = ConfigDict(extra="forbid")

    name: str


@dataclass
class TaskInputs:
    """What `prepare` gets: the recipe, the data doctor's result and the base model's tokenizer and checkpoint."""

    recipe: "Recipe"
    prepared: "Prepared"
    tokenizer: Any
    stop_ids: set[int]
    checkpoint: Path  # the base model's folder
    padding_free: bool  # the recipe asks for it and the method allows it
    # What the recipe's model-backed rewards (score_model) need: the tunelab home and the training's placement
    rewards_context: "RewardContext | None" = None


@dataclass
class TaskData:
    """Training examples as the trainer takes them, and what the run records about them."""

    splits: "Splits"  # the rows as trained and evaluated on: the run's data/ folder holds exactly these
    train: Any  # datasets.Dataset
    validation: Any | None  # datasets.Dataset, or None without validation rows
    counts: dict[str, "SplitCounts"]
    collator: Any
    padding_free: bool
    state: dict[str, Any] = field(default_factory=dict)  # what the task decided (e.g. classes and style)


@dataclass
class TrainerParts:
    """What every task's trainer is built from; the lifecycle fills it in."""

    model: Any
    tokenizer: Any
    data: TaskData
    arguments: dict[str, Any]  # transformers.TrainingArguments keyword arguments (TRL's configs extend them)
    callbacks: list[Any]
    rewards_context: "RewardContext | None" = None  # as TaskInputs': the rewards' models run where training runs
    speed: Any = None  # train/trainer.py Speed: the speed levers that apply (None: none)


@dataclass
class Inference:
    """A trained run of the task, for use: how its models load and what they do."""

    writes_text: bool  # a causal LM that answers with text: generate, chat, serve, GGUF export
    load_base: Callable[[], Any]
    load_tuned: Callable[[], Any]
    # The class of each text (classification), or None where the model answers with text only.
    classify: Callable[[Any, Any, list[str]], list[str]] | None = None
    # For a model that writes no text: what to use instead (said when generate, chat, serve or GGUF is asked for).
    instead: str = ""


@dataclass
class TaskEvaluation:
    """How a run of the task is evaluated: the evaluator loads each model (Inference), runs `answer` on it, and
    scores the outputs of both."""

    plan: "EvalPlan"
    # (model, tokenizer, placement) -> what the model produced on the test rows
    answer: Callable[[Any, Any, Any], "ModelOutputs"]
    prompts: list[str]  # what each test row asked, as the report shows it
    forgetting_measure: str  # perplexity (a causal LM) or drift (a model with a head: hidden-state drift)
    decoding: dict[str, Any]
    reference_points: dict[str, list[str]] = field(default_factory=dict)  # e.g. the majority class's answers
    judging: Any = None  # evaluate/judged.py Judging: how answers are judged by the recipe's rewards, where they are


@dataclass(frozen=True)
class Task:
    name: str
    config_class: type[TaskConfig]
    summary: str
    row_kinds: tuple[str, ...]
    prepare: Callable[[TaskInputs], TaskData]
    load_model: Callable[[Path, TaskData, "Recipe", Any], Any]  # (checkpoint, data, recipe, tokenizer)
    build_trainer: Callable[[TrainerParts], Any]
    # (recipe, test rows, task state, tokenizer, where, rewards context) -> the evaluation; no model is loaded to
    # make it, so a recipe whose evaluation cannot work is refused before training
    evaluation: Callable[["Recipe", list[Any], dict[str, Any], Any, str], TaskEvaluation]
    inference: Callable[["RunModels"], Inference]
    # the outputs of the classification head the task's model ends in, from the task's state; None: the language
    # model's own head over the vocabulary (what `tunelab plan` sizes the head's activations by)
    head_labels: Callable[[dict[str, Any]], int | None] = lambda state: None


def check_row_kinds(task: Task, kinds: dict[str, int], where: str) -> None:
    """Training rows of a kind the task does not learn from stop here, with what would use them."""
    from tunelab.errors import TunelabError

    other = [kind for kind in kinds if kind not in task.row_kinds]
    if not other:
        return
    from tunelab.tasks.registry import tasks_for_kind

    users = tasks_for_kind(other[0])
    hint = (f"use task: {' or '.join(users)}" if users else
            "no task trains on them; give conversation, text, label or preference rows")
    raise TunelabError(f"{where}: {kinds[other[0]]} '{other[0]}' row(s), and task '{task.name}' trains on "
                       f"{' and '.join(task.row_kinds)} rows; {hint}")

