"""A sweep's search space: a YAML file mapping dotted recipe keys to the range each trial draws from.

    train.lr:  {type: float, low: 1.0e-5, high: 1.0e-3, log: true}
    method.r:  {type: categorical, choices: [4, 8, 16]}
    train.warmup: {type: int, low: 0, high: 20, step: 5}

Every problem is one line (all of them at once, so a user fixes the file in one go): a key the recipe's schema does
not know (the schema decides, through the same dotted overrides the command line applies: config/load.py), bounds
that do not make a range, a value the schema refuses at either end of the range.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from tunelab.errors import TunelabError

TYPES = ("float", "int", "categorical")
OPTIONS = {"type", "low", "high", "log", "step", "choices"}


@dataclass(frozen=True)
class Param:
    key: str  # dotted recipe key, e.g. train.lr
    kind: str  # float | int | categorical
    low: float | None = None
    high: float | None = None
    log: bool = False
    step: float | None = None
    choices: tuple = ()

    def ends(self) -> list[Any]:
        """The values that bound the range: each must validate in the recipe."""
        return list(self.choices) if self.kind == "categorical" else [self.low, self.high]


def override_text(key: str, value: Any) -> str:
    """`key=value` as the command line gives it, the value written so that YAML reads it back as the same value
    (PyYAML reads `1e-05` as a string; its own dump writes `1.0e-05`)."""
    text = yaml.safe_dump(value, default_flow_style=True).strip()
    return f"{key}={text.removesuffix('...').strip()}"


def recipe_with(raw: dict[str, Any], values: dict[str, Any], source: str = "recipe") -> Any:
    """The recipe (raw data) with `values` set through the command line's dotted overrides, validated."""
    from tunelab.config.load import apply_overrides, validate_recipe

    data = copy.deepcopy(raw)
    overridden = apply_overrides(data, [override_text(key, value) for key, value in values.items()])
    return validate_recipe(data, source=source, overridden=overridden)


def load_space(path: Path, raw_recipe: dict[str, Any]) -> list[Param]:
    """Read and check the space file against the recipe (as raw data, before validation)."""
    if not path.is_file():
        raise TunelabError(f"{path}: space file not found")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as error:
        raise TunelabError(f"{path}: not valid YAML: {getattr(error, 'problem', error)}") from None
    if not isinstance(data, dict) or not data:
        raise TunelabError(f"{path}: a space file maps dotted recipe keys (train.lr) to {{type, low, high, ...}}")
    params, errors = [], []
    for key, spec in data.items():
        param, problems = parse_param(str(key), spec)
        errors += [f"{path}: {key}: {problem}" for problem in problems]
        if param is not None:
            errors += [f"{path}: {key}: {problem}" for problem in schema_problems(param, raw_recipe)]
            params.append(param)
    if errors:
        raise TunelabError("\n".join(errors))
    return params


def parse_param(key: str, spec: Any) -> tuple[Param | None, list[str]]:
    if not isinstance(spec, dict):
        return None, ["give a mapping {type: float|int|categorical, low, high, log, step, choices}"]
    unknown = sorted(set(spec) - OPTIONS)
    if unknown:
        return None, [f"unknown option(s) {', '.join(map(str, unknown))} (valid: {', '.join(sorted(OPTIONS))})"]
    kind = spec.get("type")
    if kind not in TYPES:
        return None, [f"type: '{kind}' is not one of {', '.join(TYPES)}"]
    if kind == "categorical":
        choices = spec.get("choices")
        if not isinstance(choices, list) or not choices:
            return None, ["categorical: give a non-empty list of choices"]
        extra = sorted(set(spec) - {"type", "choices"})
        return (None, [f"categorical takes choices only, not {', '.join(extra)}"]) if extra else (
            Param(key, kind, choices=tuple(choices)), [])
    return numeric_param(key, kind, spec)


def numeric_param(key: str, kind: str, spec: dict[str, Any]) -> tuple[Param | None, list[str]]:
    low, high, log, step = spec.get("low"), spec.get("high"), spec.get("log", False), spec.get("step")
    number = int if kind == "int" else (int, float)
    problems = [f"{name}: give a{'n integer' if kind == 'int' else ' number'} (got {value!r})"
                for name, value in (("low", low), ("high", high))
                if not isinstance(value, number) or isinstance(value, bool)]
    if "choices" in spec:
        problems.append("choices is for type categorical")
    if not isinstance(log, bool):
        problems.append(f"log: true or false (got {log!r})")
    if step is not None and (not isinstance(step, number) or isinstance(step, bool) or step <= 0):
        problems.append(f"step: a positive {'integer' if kind == 'int' else 'number'} (got {step!r})")
    if problems:
        return None, problems
    if low >= high:
        problems.append(f"low {low} must be below high {high}")
    if log and low <= 0:
        problems.append(f"log: true needs low > 0 (got {low})")
    if log and step is not None:
        problems.append("log and step do not go together (Optuna samples one or the other)")
    return (None, problems) if problems else (Param(key, kind, low, high, log, step), [])


def schema_problems(param: Param, raw_recipe: dict[str, Any]) -> list[str]:
    """What the recipe's schema says of the key at each end of its range (an unknown key, a value out of range)."""
    problems = []
    if param.key.split(".")[0] == "output":
        return ["the sweep decides output.* (each trial's run folder)"]
    for value in param.ends():
        try:
            recipe_with(raw_recipe, {param.key: value})
        except TunelabError as error:
            line = str(error).removeprefix("command line: ")
            if line not in problems:
                problems.append(line)
    return problems


def suggest(trial: Any, param: Param) -> Any:
    """The trial's value for one parameter (Optuna's TPE sampler draws it; an enqueued trial has it fixed)."""
    if param.kind == "categorical":
        return trial.suggest_categorical(param.key, list(param.choices))
    if param.kind == "int":
        return trial.suggest_int(param.key, int(param.low), int(param.high), step=int(param.step or 1), log=param.log)
    return trial.suggest_float(param.key, float(param.low), float(param.high), step=param.step, log=param.log)


def recipe_value(recipe: Any, key: str) -> Any:
    """The validated recipe's value at a dotted key (the starting point, trial 0)."""
    value: Any = recipe.model_dump(mode="json")
    for part in key.split("."):
        value = value.get(part) if isinstance(value, dict) else None
    return value
