"""Reward functions in the user's own Python file, named `file.py:function`, with the signature TRL's trainers call
`reward_funcs` with: `function(prompts=..., completions=..., **columns) -> list[float | None]` (None: the reward
does not apply to that completion)."""

from __future__ import annotations

import importlib.util
import inspect
from pathlib import Path
from typing import Any, Callable, Literal

from pydantic import BaseModel, ConfigDict

from tunelab.errors import TunelabError


class FunctionReward(BaseModel):
    model_config = ConfigDict(extra="forbid")

    type: Literal["function"]
    function: str  # path/to/file.py:function_name
    name: str | None = None  # shown in logs and errors; default: the function's name


def load_function(spec: str, where: str, base: Path | None = None) -> Callable[..., Any]:
    """The function `spec` names, imported from its file (relative paths from `base`, else the working folder),
    after checking it can take TRL's keyword arguments."""
    file_part, _, function_name = spec.rpartition(":")
    if not file_part or not function_name or not file_part.endswith(".py"):
        raise TunelabError(f"{where}: '{spec}' is not file.py:function")
    path = Path(file_part) if Path(file_part).is_absolute() or base is None else base / file_part
    if not path.is_file():
        raise TunelabError(f"{where}: {path}: reward file not found")
    module_spec = importlib.util.spec_from_file_location(f"tunelab_reward_{path.stem}", path)
    module = importlib.util.module_from_spec(module_spec)
    try:
        module_spec.loader.exec_module(module)
    except Exception as error:  # the user's file fails to import: one line naming it, not a traceback
        raise TunelabError(f"{where}: {path} does not import ({type(error).__name__}: {error})") from None
    function = getattr(module, function_name, None)
    if not callable(function):
        raise TunelabError(f"{where}: {path} has no function '{function_name}'")
    check_signature(function, f"{where}: {path}:{function_name}")
    return function


def check_signature(function: Callable[..., Any], where: str) -> None:
    """TRL passes prompts, completions, completion_ids, trainer_state and every dataset column as keywords."""
    try:
        parameters = inspect.signature(function).parameters.values()
    except (TypeError, ValueError):
        return  # a builtin or C function: nothing to read; its first call will tell
    kinds = {parameter.kind for parameter in parameters}
    names = {parameter.name for parameter in parameters
             if parameter.kind in (parameter.POSITIONAL_OR_KEYWORD, parameter.KEYWORD_ONLY)}
    if inspect.Parameter.VAR_KEYWORD not in kinds or "completions" not in names:
        raise TunelabError(f"{where}: a reward function takes (prompts, completions, **kwargs), as TRL's reward_funcs "
                           f"do; this one takes ({', '.join(str(p) for p in parameters)})")
