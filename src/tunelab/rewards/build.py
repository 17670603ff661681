"""A recipe's rewards as the callables TRL's trainers take (`reward_funcs`), checked before training and on
every call: one line naming the reward and the row where a reward raises or gives a non-number. A reward backed by a
model (score_model) also needs the run's home and placement: `RewardContext`."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Callable, Union

from pydantic import Field

from tunelab.errors import TunelabError
from tunelab.rewards.functions import FunctionReward, load_function
from tunelab.rewards.graders import (
    MultiGrader,
    PythonGrader,
    RewardModelReward,
    ScoreModelGrader,
    StringCheckGrader,
    TextSimilarityGrader,
    check_grader,
    grade,
    item_fields,
)
from tunelab.rewards.score_model import Generate, ScoreModel, generate_replies, model_source

if TYPE_CHECKING:
    from tunelab.device import Placement

# What a recipe's `rewards:` list holds: OpenAI's graders as they are (score_model's model a local one), tunelab's
# reward_model shorthand, or a Python function.
RewardSpec = Annotated[Union[StringCheckGrader, TextSimilarityGrader, PythonGrader, MultiGrader,  # noqa: UP007
                             ScoreModelGrader, RewardModelReward, FunctionReward], Field(discriminator="type")]

# Keywords TRL passes besides the dataset's columns.
TRL_KEYWORDS = {"completion_ids", "trainer_state", "log_extra", "log_metric", "environments"}


@dataclass(frozen=True)
class RewardContext:
    """What a reward backed by a model (score_model) needs from the run using it: the tunelab home (built-in models,
    the base model of a run it names) and the training's placement (its models run on the same device)."""

    home: Path
    placement: "Placement | None" = None  # None: CPU, float32

    def where_models_run(self) -> "Placement":
        from tunelab.device import Placement

        return self.placement or Placement("cpu", "fp32")


def reward_name(spec: Any) -> str:
    if isinstance(spec, FunctionReward):
        return spec.name or spec.function.rpartition(":")[2]
    return spec.name


def check_rewards(specs: list[Any], rows: list[dict[str, Any]], where: str = "rewards", base: Path | None = None,
                  context: RewardContext | None = None) -> None:
    """Before training: each grader's templates and source, that every row has the fields they read, and that each
    score_model's model is there and can score (no weights are loaded)."""
    if not specs:
        raise TunelabError(f"{where}: no reward given; name at least one grader or function")
    for index, spec in enumerate(specs):
        if isinstance(spec, FunctionReward):
            continue
        if isinstance(spec, RewardModelReward):
            reward_model_scorer(spec, f"{where}[{index}]", base, context)
            continue
        check_grader(spec, f"{where}[{index}]")
        if isinstance(spec, ScoreModelGrader):
            ScoreModel(spec, f"{where}[{index}]", base, needs_context(context, spec).home,
                       context.where_models_run())
        for field in sorted(item_fields(spec)):
            missing = [row for row in rows if field not in row]
            if missing:
                raise TunelabError(f"{where}[{index}] ({spec.type} '{spec.name}') reads item.{field}, and "
                                   f"{len(missing)} of {len(rows)} row(s) have no '{field}'")


def reward_funcs(specs: list[Any], base: Path | None = None, context: RewardContext | None = None,
                 generate: Generate = generate_replies) -> list[Callable[..., list[float | None]]]:
    """One TRL reward function per spec, named after it (TRL logs each reward under its function's name).
    `base`: the folder relative paths (function files, score_model models) start from; `context`: needed where a
    score_model is among the specs; `generate`: how a judge writes (tests pass a stub)."""
    return [checked(spec, base, index, context, generate) for index, spec in enumerate(specs)]


def needs_context(context: RewardContext | None, spec: Any) -> RewardContext:
    if context is None:  # the caller's mistake, not the user's: the task must pass the run's home and placement
        raise ValueError(f"score_model '{spec.name}' needs reward_funcs(..., context=RewardContext(home, placement))")
    return context


def reward_model_scorer(spec: RewardModelReward, where: str, base: Path | None,
                        context: RewardContext | None) -> ScoreModel:
    home = needs_context(context, spec).home
    if model_source(spec.as_grader(), where, base, home).kind != "reward_model":
        raise TunelabError(f"{where} (reward_model '{spec.name}'): {spec.run} is not a run of task reward_model; "
                           "to judge with a model that writes text, use type score_model with input")
    return ScoreModel(spec.as_grader(), where, base, home, context.where_models_run())


def checked(spec: Any, base: Path | None, index: int, context: RewardContext | None = None,
            generate: Generate = generate_replies) -> Callable[..., list[float | None]]:
    name = reward_name(spec)
    where = f"rewards[{index}] '{name}'"
    inner = load_function(spec.function, where, base) if isinstance(spec, FunctionReward) else None
    if isinstance(spec, RewardModelReward):
        scorer = reward_model_scorer(spec, f"rewards[{index}]", base, context)
    elif isinstance(spec, ScoreModelGrader):
        scorer = ScoreModel(spec, f"rewards[{index}]", base, needs_context(context, spec).home,
                            context.where_models_run(), generate)
    else:
        scorer = None

    def reward(prompts: list[Any], completions: list[Any], **columns: Any) -> list[float | None]:
        rows = [{key: values[i] for key, values in columns.items()
                 if key not in TRL_KEYWORDS and isinstance(values, list) and len(values) == len(completions)}
                for i in range(len(completions))]
        if inner is not None:
            scores = call(lambda: inner(prompts=prompts, completions=completions, **columns), where, None)
            if not isinstance(scores, (list, tuple)) or len(scores) != len(completions):
                raise TunelabError(f"{where}: returned {type(scores).__name__} for {len(completions)} completions; "
                                   "a reward function returns one number (or None) per completion")
        elif scorer is not None:
            before = scorer.no_number
            scores = scorer(prompts, completions, rows)
            log_metric = columns.get("log_metric")
            if scorer.judges and callable(log_metric):  # TRL logs it next to rewards/NAME/mean
                log_metric(f"rewards/{name}/no_number", (scorer.no_number - before) / len(completions))
        else:
            scores = [call(lambda i=i: grade(spec, rows[i], {"output_text": answer_text(completions[i])},
                                             f"{where}, {row_where(rows[i], prompts[i])}"),
                           where, rows[i], prompts[i]) for i in range(len(completions))]
        for i, score in enumerate(scores):
            number_or_none(score, where, rows[i], prompts[i], allow_none=inner is not None)
        return [None if score is None else float(score) for score in scores]

    reward.__name__ = name
    reward.scorer = scorer  # a score_model's loaded model and its judge's counts (judged, no_number); else None
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
