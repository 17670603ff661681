"""`tunelab compare-models`: one recipe on several base models, side by side: "the smallest model that meets your
needs".

The same shape as compare-methods (compare_methods.py, whose helpers this reuses): each model trains and is
evaluated in its own spawned process (`measure_in_process`: the ordinary lifecycle and the one evaluator, so each
run folder is what `tunelab train` makes, and the peak memory is that model's own). Unlike compare-methods the base
model differs per row, so every row has its own base metrics (nothing is shared between evaluations). Per model:
parameters, trainable parameters, training and evaluation time, peak memory, base and tuned metrics with
intervals, and the recipe objective's verdict; the verdict line names the smallest model that meets the
objective (without an objective: the smallest not significantly worse than the best on the headline metric).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from tunelab.compare_methods import headline_metrics, markdown, measure_in_process
from tunelab.compare_methods import summary_line as methods_summary_line
from tunelab.errors import TunelabError
from tunelab.files import write_json, write_text_atomic
from tunelab.present.format import format_interval, format_value


@dataclass(frozen=True)
class ModelsPlan:
    recipe: dict[str, Any]  # the validated recipe, as data
    models: list[str]  # built-in names or checkpoint folders
    out: Path
    steps: int | None = None  # None: the recipe's own schedule
    eval_rows: int | None = None
    device: str = "auto"


def check_model_name(name: str) -> None:
    """A built-in name, a checkpoint folder or a .gguf file (models/load.resolve_model takes them), checked before
    any training and without converting anything yet."""
    from tunelab.models.catalog import BUILTIN_MODELS

    path = Path(name).expanduser()
    if name in BUILTIN_MODELS or (path.is_dir() and (path / "config.json").is_file()) or \
            (path.is_file() and path.suffix == ".gguf"):
        return
    raise TunelabError(f"--models: '{name}' is not a built-in model ({', '.join(BUILTIN_MODELS)}), a checkpoint "
                       "folder (with config.json) or a .gguf file")


def labels(models: list[str]) -> list[str]:
    """A short, distinct name per model (its folder's name), used for its run folder and its row."""
    short = [Path(name).name or name for name in models]
    return short if len(set(short)) == len(short) else [f"{index}-{name}" for index, name in enumerate(short)]


def model_recipe(plan: ModelsPlan, name: str, label: str) -> dict[str, Any]:
    recipe = json.loads(json.dumps(plan.recipe))
    recipe["model"]["name"] = name
    if plan.steps:
        recipe["train"].update(max_steps=plan.steps, eval_every=plan.steps, save_every=plan.steps,
                               early_stopping_patience=None)
    recipe["output"].update(dir=str(plan.out / label), merge=False)  # the table is about training, not export
    if plan.eval_rows:
        recipe["eval"]["max_rows"] = plan.eval_rows
    return recipe


def compare_models(plan: ModelsPlan, home: Path, say: Callable[[str], None]) -> list[dict[str, Any]]:
    """Train and evaluate the recipe on each model in turn, each in its own process; one row each, in order."""
    rows = []
    for name, label in zip(plan.models, labels(plan.models)):
        say(f"{label}: training, then evaluating base and tuned")
        recipe = model_recipe(plan, name, label)
        planned = planned_peak_mib(recipe, home, plan.device)
        row = measure_in_process(recipe, home, label, plan.device, None)
        row["model"], row["plan_peak_mib"] = name, planned
        rows.append(row)
        say(summary_line(row))
    return rows


def planned_peak_mib(recipe: dict[str, Any], home: Path, device: str) -> float | None:
    """`tunelab plan`'s estimate of the run's peak memory (MiB), before it trains; None where the plan cannot
    describe the model (it still trains)."""
    from rich.console import Console

    from tunelab.config.load import validate_recipe
    from tunelab.plan.estimate import make_plan, plan_setup
    from tunelab.plan.memory import MIB

    try:
        setup = plan_setup(validate_recipe(json.loads(json.dumps(recipe)), source="compare-models"), home,
                           Console(quiet=True), device)
        return make_plan(setup).memory.peak / MIB
    except Exception:  # noqa: BLE001 (as `tunelab train`: a model the plan cannot describe is still compared)
        return None


def summary_line(row: dict[str, Any]) -> str:
    if "error" in row:
        return methods_summary_line(row)
    return methods_summary_line(row, f"{row['total']:,} parameters, {row['train_seconds']:.0f} s training")


def verdict(rows: list[dict[str, Any]]) -> str:
    """The smallest model that meets the recipe's objective; without one, the smallest not significantly worse
    than the best on the headline metric (its interval reaches the best one's value)."""
    from tunelab.metrics.registry import METRICS

    done = sorted((row for row in rows if "error" not in row), key=lambda row: row["total"])
    if not done:
        return "no model was trained and evaluated"
    judged = [row for row in done if row["evaluation"]["objective"] is not None]
    if judged:
        meeting = [row for row in judged if row["evaluation"]["objective"]["met"]]
        if not meeting:
            return "no model meets the objective: " + "; ".join(
                f"{row['method']}: {row['evaluation']['objective']['summary']}" for row in judged)
        smallest = meeting[0]
        return (f"the smallest model that meets your needs: {smallest['method']} ({smallest['total']:,} "
                f"parameters): {smallest['evaluation']['objective']['summary']}")
    primary = done[0]["evaluation"]["primary_metric"]
    higher = METRICS[primary].higher_is_better
    best = (max if higher else min)(done, key=lambda row: row["evaluation"]["tuned"][primary])
    target = best["evaluation"]["tuned"][primary]
    for row in done:
        interval = ((row["evaluation"]["intervals"] or {}).get("tuned") or {}).get(primary)
        value = row["evaluation"]["tuned"][primary]
        reaches = value == target or (interval is not None and interval[0] <= target <= interval[1])
        if reaches:
            return (f"no objective in the recipe; the smallest model not significantly worse than the best "
                    f"({best['method']}, {primary} {format_value(primary, target)}) is {row['method']} "
                    f"({row['total']:,} parameters, {primary} {format_value(primary, value)})")
    return f"no objective in the recipe; the best on {primary} is {best['method']}"


def table_rows(rows: list[dict[str, Any]]) -> tuple[list[str], list[list[str]]]:
    metrics = headline_metrics(rows)
    headers = ["model", "parameters", "trainable", "train s", "eval s", "plan MiB", "peak RSS MiB",
               *[f"{key} base" for key in metrics], *[f"{key} tuned" for key in metrics], "objective"]
    body = []
    for row in rows:
        if "error" in row:
            body.append([row["method"], f"failed: {row['error']}"] + [""] * (len(headers) - 2))
            continue
        evaluation = row["evaluation"]
        intervals = evaluation["intervals"] or {}
        objective = evaluation["objective"]
        body.append([
            row["method"], f"{row['total']:,}", f"{row['trainable']:,}", f"{row['train_seconds']:.0f}",
            f"{row['eval_seconds']:.0f}",
            "" if row.get("plan_peak_mib") is None else f"{row['plan_peak_mib']:.0f}", f"{row['peak_rss_mib']:.0f}",
            *[cell(key, evaluation[label], intervals.get(label) or {}) for label in ("base", "tuned")
              for key in metrics],
            "" if objective is None else ("met" if objective["met"] else "not met"),
        ])
    return headers, body


def cell(key: str, values: dict[str, float], intervals: dict[str, list[float]]) -> str:
    return f"{format_value(key, values.get(key))} {format_interval(key, intervals.get(key))}".strip()


def write_results(plan: ModelsPlan, rows: list[dict[str, Any]], caption: str) -> tuple[Path, Path, str]:
    headers, body = table_rows(rows)
    line = verdict(rows)
    json_path, markdown_path = plan.out / "models.json", plan.out / "models.md"
    write_json(json_path, {"caption": caption, "models": plan.models, "verdict": line, "rows": rows})
    write_text_atomic(markdown_path, markdown(headers, body, caption) + f"\n{line}\n")
    return json_path, markdown_path, line
