"""A fine-tuning job as a tunelab recipe: OpenAI's method and hyperparameters mapped onto tunelab's tasks, and
tunelab's extras laid over it. The job's run is then an ordinary run (`tunelab eval`, `serve`, `export` read it).

  method        task        what it reads
  supervised    sft         chat rows (OpenAI's chat format), prompt/completion, ...
  dpo           dpo         preference rows (OpenAI's preference format, or tunelab's prompt/chosen/rejected)
  reinforcement grpo        prompt rows (chat rows whose last message is the user's) with the fields the grader reads

"auto" is tunelab's default: the recipe's own epochs, batch size and learning rate (learning_rate_multiplier scales
that rate), the task's own beta. The resolved values are what the job reports under `hyperparameters`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tunelab.jobs.request import CreateJob

TASKS = {"supervised": "sft", "dpo": "dpo", "reinforcement": "grpo"}
VALIDATION_SPLIT = 0.1  # held out of the training file when no validation_file is given (tunelab's default)


@dataclass(frozen=True)
class JobRecipe:
    recipe: dict[str, Any]  # a recipe as data, validated by the caller with config.load.validate_recipe
    hyperparameters: dict[str, Any]  # OpenAI's names, resolved: what the job says it used


def job_recipe(request: CreateJob, base: str, training: dict[str, Any], validation: str | None, run_dir: Path,
               seed: int) -> JobRecipe:
    """The recipe of a job: `base` is the served base model's source (name or folder), `training` the training
    upload's data options (files.data_options: its path, format and fields), `validation` the validation upload's
    path, `run_dir` the job's run folder under the serve folder."""
    from tunelab.config.schema import TrainSection

    extras = request.extras()
    given = request.method_hyperparameters()
    train_defaults = TrainSection()
    train = {**(extras.get("train") or {})}
    epochs = given_or(given.n_epochs, train.get("epochs", train_defaults.epochs))
    batch = given_or(given.batch_size, train.get("batch_size", train_defaults.batch_size))
    multiplier = float(given_or(given.learning_rate_multiplier, 1.0))
    train.update(epochs=epochs, batch_size=batch, lr=train.get("lr", train_defaults.lr) * multiplier, seed=seed)
    data = {**(extras.get("data") or {}), **training}
    split = {"validation": 0.0 if validation else VALIDATION_SPLIT, "seed": seed, **(data.get("split") or {})}
    data["split"] = split
    if validation:
        data["validation"] = validation
    task = {**(extras.get("task") or {}), "name": TASKS[request.method_type()]}
    resolved = {"n_epochs": epochs, "batch_size": batch, "learning_rate_multiplier": multiplier}
    if request.method_type() == "dpo":
        task.setdefault("beta", given_or(given.beta, task_default("dpo", "beta")))
        resolved["beta"] = task["beta"]
    recipe: dict[str, Any] = {"model": {"name": base}, "data": data, "task": task, "train": train,
                              "output": {"dir": str(run_dir)}}
    for section in ("method", "eval", "objective"):
        if extras.get(section) is not None:
            recipe[section] = extras[section]
    if request.method_type() == "reinforcement":
        recipe["rewards"] = [request.method.reinforcement.grader.model_dump(mode="json", exclude_none=True)]
    return JobRecipe(recipe, resolved)


def given_or(value: Any, default: Any) -> Any:
    """A hyperparameter as given, or the default where it is "auto" or absent."""
    return default if value in (None, "auto") else value


def task_default(task: str, option: str) -> Any:
    from tunelab.tasks.registry import get_task

    return get_task(task).config_class.model_fields[option].default
