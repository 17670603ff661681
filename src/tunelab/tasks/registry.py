"""The training tasks tunelab offers: adding one is one module and one line here."""

from __future__ import annotations

from typing import Annotated, Union

from pydantic import Field

from tunelab.errors import TunelabError
from tunelab.tasks import classification, dpo, grpo, kto, orpo, ppo, reward_model, rloo, sft, simpo
from tunelab.tasks.base import Task

TASKS: dict[str, Task] = {
    task.name: task
    for task in (
        sft.TASK,
        classification.TASK,
        dpo.TASK,
        reward_model.TASK,
        kto.TASK,
        orpo.TASK,
        simpo.TASK,
        grpo.TASK,
        rloo.TASK,
        ppo.TASK,
    )
}

DEFAULT_TASK = "sft"


def get_task(name: str) -> Task:
    try:
        return TASKS[name]
    except KeyError:
        raise TunelabError(f"unknown task '{name}' (available: {', '.join(TASKS)})") from None


def tasks_for_kind(kind: str) -> list[str]:
    """The tasks that train on rows of this kind (data/formats.py Example.kind)."""
    return [name for name, task in TASKS.items() if kind in task.row_kinds]


# The recipe's `task` section: validated by the schema of the task it names.
TaskSection = Annotated[
    Union[tuple(task.config_class for task in TASKS.values())],  # noqa: UP007 (built from the registry)
    Field(discriminator="name"),
]
