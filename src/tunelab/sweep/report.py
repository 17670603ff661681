"""What a sweep leaves behind: sweep.json (every trial as data), best.yaml (the best trial's recipe, ready for
`tunelab train`), sweep.html (the table and two plots: the objective per trial and against the most important
parameter), and the rows of the console table. The plots are the dashboard's hand-drawn SVG (serve/ui/svg.py):
a page of a few dozen points needs no matplotlib.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from tunelab.files import write_json, write_text_atomic
from tunelab.sweep.space import Param, recipe_with

STATE_NAMES = {"COMPLETE": "complete", "PRUNED": "pruned", "FAIL": "failed", "RUNNING": "running",
               "WAITING": "waiting"}


def trial_rows(study: Any) -> list[dict[str, Any]]:
    rows = []
    for trial in study.trials:
        seconds = trial.user_attrs.get("seconds") or trial.user_attrs.get("train_seconds")
        if seconds is None and trial.duration is not None:
            seconds = trial.duration.total_seconds()
        rows.append({"trial": trial.number, "state": STATE_NAMES.get(trial.state.name, trial.state.name.lower()),
                     "params": dict(trial.params), "value": trial.value, "seconds": seconds,
                     "run": trial.user_attrs.get("run"), "pruned_at_step": trial.user_attrs.get("pruned_at_step"),
                     "error": trial.user_attrs.get("error") or (
                         "interrupted (the sweep was stopped)" if trial.state.name == "FAIL" else None),
                     "validation_losses": {str(step): value for step, value in trial.intermediate_values.items()}})
    return rows


def most_important(study: Any, space: list[Param]) -> str:
    """The parameter that explains most of the objective's variation (Optuna's fANOVA), or the only one; the
    first of the space where there are too few finished trials to tell."""
    if len(space) == 1:
        return space[0].key
    import optuna

    try:
        importances = optuna.importance.get_param_importances(study)
    except Exception:  # noqa: BLE001  (a plot's axis, not worth failing a finished sweep over)
        return space[0].key
    return next(iter(importances), space[0].key)


def best_recipe_yaml(plan_recipe: dict[str, Any], params: dict[str, Any], folder: Path) -> str:
    """The recipe with the best trial's values, training into <dir>/best (not over a trial's folder)."""
    from tunelab.config.load import recipe_to_yaml

    recipe = recipe_with(plan_recipe, {**params, "output.dir": str(folder / "best")}, source="best recipe")
    shown = ", ".join(f"{key}={value}" for key, value in params.items())
    return f"# tunelab sweep: the best trial's values ({shown}); train it with `tunelab train`\n" + \
        recipe_to_yaml(recipe)


def write_outputs(plan: Any, study: Any, metric: str, test: dict[str, Any] | None, seconds: float) -> dict[str, Any]:
    from tunelab.sweep.study import best_trial

    rows = trial_rows(study)
    best = best_trial(study)
    important = most_important(study, plan.space)
    result = {"metric": metric, "direction": study.direction.name.lower(), "trials": rows,
              "space": [param.key for param in plan.space], "most_important": important, "seconds": seconds,
              "best": None if best is None else {"trial": best.number, "params": best.params, "value": best.value,
                                                 "run": best.user_attrs.get("run")},
              "test": test}
    if best is not None:
        write_text_atomic(plan.folder / "best.yaml", best_recipe_yaml(plan.recipe, best.params, plan.folder))
    write_json(plan.folder / "sweep.json", result)
    write_text_atomic(plan.folder / "sweep.html", html_page(result, plan.space))
    return result


def format_param(value: Any) -> str:
    return f"{value:.3g}" if isinstance(value, float) else str(value)


def table(result: dict[str, Any]) -> tuple[list[str], list[list[str]]]:
    """Headers and rows of the results table (console and page alike)."""
    keys = result["space"]
    best = (result["best"] or {}).get("trial")
    metric = result["metric"]
    headers = ["trial", *keys, metric if "validation" in metric else f"{metric} (validation)", "state", "time s"]
    body = []
    for row in result["trials"]:
        state = row["state"] + (f" at step {row['pruned_at_step']}" if row["pruned_at_step"] is not None else "")
        if row["error"] and row["state"] == "failed":
            state += f": {row['error']}"
        body.append([f"{row['trial']}{' (best)' if row['trial'] == best else ''}",
                     *[format_param(row["params"].get(key, "")) for key in keys],
                     "" if row["value"] is None else f"{row['value']:.4f}", state,
                     "" if row["seconds"] is None else f"{row['seconds']:.0f}"])
    return headers, body


def html_page(result: dict[str, Any], space: list[Param]) -> str:
    from tunelab.present.html import Markup, Section, page, paragraph
    from tunelab.present.html import table as html_table

    headers, body = table(result)
    summary = Section("Trials").add(html_table(headers, body))
    best = result["best"]
    if best is not None:
        values = ", ".join(f"{key}={format_param(value)}" for key, value in best["params"].items())
        summary.add(paragraph(f"Best: trial {best['trial']} ({values}), {result['metric']} {best['value']:.4f} on "
                              "the validation rows; its recipe is best.yaml."))
    plots = Section("Plots").add(Markup(value_per_trial(result))).add(Markup(value_against(result, space)))
    sections = [summary, plots]
    if result["test"]:
        sections.append(test_section(result))
    return page("tunelab sweep", sections,
                f"{len(result['trials'])} trials; objective {result['metric']} on the validation rows "
                f"({result['direction']}); the test rows are evaluated once, for the best trial")


def test_section(result: dict[str, Any]) -> Any:
    from tunelab.present.format import format_value
    from tunelab.present.html import Section, paragraph
    from tunelab.present.html import table as html_table

    test = result["test"]
    rows = [[name, format_value(name, test["base"][name]), format_value(name, value)]
            for name, value in test["tuned"].items()]
    section = Section(f"Test rows: trial {test['trial']}, once").add(html_table(["metric", "base", "tuned"], rows))
    if test.get("objective"):
        verdict = test["objective"]
        section.add(paragraph(f"objective {'met' if verdict['met'] else 'not met'}: {verdict['summary']}"))
    return section


def finite_points(result: dict[str, Any], x_of: Any) -> list[tuple[float, float | None]]:
    """(x, value) for the trials with a value, each followed by a gap so the chart draws dots, not a line."""
    points: list[tuple[float, float | None]] = []
    for row in result["trials"]:
        x = x_of(row)
        if row["value"] is not None and math.isfinite(row["value"]) and x is not None:
            points += [(x, row["value"]), (x, None)]
    return points


def value_per_trial(result: dict[str, Any]) -> str:
    from tunelab.serve.ui.svg import PALETTE, Line, line_chart

    dots = Line("trial", finite_points(result, lambda row: float(row["trial"])), PALETTE[0])
    best_so_far, best, sign = [], None, 1 if result["direction"] == "minimize" else -1
    for row in result["trials"]:
        if row["value"] is not None and math.isfinite(row["value"]):
            best = row["value"] if best is None else (min if sign > 0 else max)(best, row["value"])
        if best is not None:
            best_so_far.append((float(row["trial"]), best))
    return line_chart([dots, Line("best so far", best_so_far, PALETTE[2])],
                      title=f"{result['metric']} per trial", x_label="trial", y_label=result["metric"])


def value_against(result: dict[str, Any], space: list[Param]) -> str:
    from tunelab.serve.ui.svg import PALETTE, Line, line_chart

    key = result["most_important"]
    param = next(param for param in space if param.key == key)
    if param.kind == "categorical":  # choices are placed at 0, 1, 2 ... in the space's order
        position = {repr(choice): index for index, choice in enumerate(param.choices)}
        x_of, label = (lambda row: position.get(repr(row["params"].get(key)))), f"{key} (choice index)"
    elif param.log:
        x_of = lambda row: math.log10(row["params"][key]) if row["params"].get(key, 0) > 0 else None  # noqa: E731
        label = f"log10 {key}"
    else:
        x_of, label = (lambda row: row["params"].get(key)), key
    dots = Line(key, finite_points(result, x_of), PALETTE[1])
    return line_chart([dots], title=f"{result['metric']} against {key} (the most important parameter)",
                      x_label=label, y_label=result["metric"])
