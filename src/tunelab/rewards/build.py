"""A recipe's rewards as the callables TRL's trainers take (`reward_funcs`), checked before training and on
every call: one line naming the reward and the row where a reward raises or gives a non-number."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Annotated, Any, Callable, Union

from pydantic import Field

from tunelab.errors import TunelabError
from tunelab.rewards.functions import FunctionReward, load_function
from tunelab.rewards.graders import (
    MultiGrader,
    PythonGrader,
    StringCheckGrader,
    TextSimilarityGrader,
    check_grader,
    grade,
    item_fields,
)

# What a recipe's `rewards:` list holds: OpenAI's graders as they are, or a Python function.
RewardSpec = Annotated[Union[StringCheckGrader, TextSimilarityGrader, PythonGrader, MultiGrader,  # noqa: UP007
                             FunctionReward], Field(discriminator="type")]

# Keywords TRL passes besides the dataset's columns.
TRL_KEYWORDS = {"completion_ids", "trainer_state", "log_extra", "log_metric", "environments"}


def reward_name(spec: Any) -> str:
    if isinstance(spec, FunctionReward):
        return spec.name or spec.function.rpartition(":")[2]
    return spec.name


def check_rewards(specs: list[Any], rows: list[dict[str, Any]], where: str = "rewards") -> None:
    """Before training: each grader's templates and source, and that every row has the fields they read."""
    if not specs:
        raise TunelabError(f"{where}: no reward given; name at least one grader or function")
    for index, spec in enumerate(specs):
        if isinstance(spec, FunctionReward):
            continue
        check_grader(spec, f"{where}[{index}]")
        for field in sorted(item_fields(spec)):
            missing = [row for row in rows if field not in row]
            if missing:
                raise TunelabError(f"{where}[{index}] ({spec.type} '{spec.name}') reads item.{field}, and "
                                   f"{len(missing)} of {len(rows)} row(s) have no '{field}'")


def reward_funcs(specs: list[Any], base: Path | None = None) -> list[Callable[..., list[float | None]]]:
    """One TRL reward function per spec, named after it (TRL logs each reward under its function's name)."""
    return [checked(spec, base, index) for index, spec in enumerate(specs)]


def checked(spec: Any, base: Path | None, index: int) -> Callable[..., list[float | None]]:
    name = reward_name(spec)
    where = f"rewards[{index}] '{name}'"
    inner = load_function(spec.function, where, base) if isinstance(spec, FunctionReward) else None

    def reward(prompts: list[Any], completions: list[Any], **columns: Any) -> list[float | None]:
        rows = [{key: values[i] for key, values in columns.items()
                 if key not in TRL_KEYWORDS and isinstance(values, list) and len(values) == len(completions)}
                for i in range(len(completions))]
        if inner is not None:
            scores = call(lambda: inner(prompts=prompts, completions=completions, **columns), where, None)
            if not isinstance(scores, (list, tuple)) or len(scores) != len(completions):
                raise TunelabError(f"{where}: returned {type(scores).__name__} for {len(completions)} completions; "
                                   "a reward function returns one number (or None) per completion")
        else:
            scores = [call(lambda i=i: grade(spec, rows[i], {"output_text": answer_text(completions[i])},
                                             f"{where}, {row_where(rows[i], prompts[i])}"),
                           where, rows[i], prompts[i]) for i in range(len(completions))]
        for i, score in enumerate(scores):
            number_or_none(score, where, rows[i], prompts[i], allow_none=inner is not None)
        return [None if score is None else float(score) for score in scores]

    reward.__name__ = name
    return reward


def call(thunk: Callable[[], Any], where: str, row: dict | None, prompt: Any = None) -> Any:
    try:
        return thunk()
    except TunelabError:
        raise
    except Exception as error:  # the user's reward code failed: stop the run with one line naming reward and row
        at = f", {row_where(row, prompt)}" if row is not None else ""
        raise TunelabError(f"{where}{at}: raised {type(error).__name__}: {error}") from None


def number_or_none(score: Any, where: str, row: dict, prompt: Any, allow_none: bool) -> None:
    if score is None and allow_none:
        return
    if isinstance(score, bool) or not isinstance(score, (int, float)) or not math.isfinite(score):
        raise TunelabError(f"{where}, {row_where(row, prompt)}: gave {score!r}; a reward is a finite number")


def row_where(row: dict, prompt: Any) -> str:
    """The row a score is for: its file:line where the data doctor kept it, else the start of its prompt."""
    if isinstance(row.get("where"), str):
        return f"row {row['where']}"
    return f"row with prompt {answer_text(prompt)[:60]!r}"


def answer_text(completion: Any) -> str:
    """A completion (or prompt) as text: plain text as it is, a conversation as its last message's content."""
    if isinstance(completion, str):
        return completion
    if isinstance(completion, list) and completion and isinstance(completion[-1], dict):
        return str(completion[-1].get("content", ""))
    return str(completion)
