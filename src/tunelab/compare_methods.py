"""`tunelab compare-methods`: the same data and step budget through several tuning methods, base model included.

Each method runs the ordinary lifecycle (train/lifecycle.py) and the one evaluator in a fresh process (spawned),
so its peak memory is its own and its evaluation is exactly `tunelab eval`'s: base vs tuned on the same test rows,
with intervals, flips and forgetting. The base model's outputs from the first method's evaluation are reused by the
others where the rows, decoding and probes are the same (evaluate/outputs.py), so the base runs once. Per method
the table gives trainable parameters, the bytes its weights occupy (4-bit weights counted packed), the process's
peak resident memory (RSS; on a GPU also torch's peak allocation), training tokens/s, training and evaluation time,
and the headline metrics with their intervals. Each method trains at its own typical learning rate (methods/*.py)
unless --same-lr; every other setting comes from the recipe.
"""

from __future__ import annotations

import json
import multiprocessing
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from tunelab.errors import TunelabError
from tunelab.files import write_json, write_text_atomic
from tunelab.present.format import format_interval, format_percent, format_value

BASE = "base"


@dataclass(frozen=True)
class Plan:
    recipe: dict[str, Any]  # the validated recipe, as data
    methods: list[str]
    steps: int
    out: Path
    same_lr: bool
    eval_rows: int | None
    device: str = "auto"


def method_options(recipe: dict[str, Any], name: str) -> dict[str, Any]:
    """The recipe's method options that the method also has (LoRA's r and alpha carry over to DoRA and QLoRA),
    or the method's defaults where they do not validate for it."""
    from pydantic import ValidationError

    from tunelab.methods.registry import get_method

    config_class = get_method(name).config_class
    shared = {key: value for key, value in recipe["method"].items() if key in config_class.model_fields}
    try:
        return config_class(**{**shared, "name": name}).model_dump()
    except ValidationError:
        return config_class(name=name).model_dump()


def method_recipe(plan: Plan, name: str) -> dict[str, Any]:
    from tunelab.methods.registry import get_method

    recipe = json.loads(json.dumps(plan.recipe))
    recipe["method"] = method_options(plan.recipe, name)
    lr = recipe["train"]["lr"] if plan.same_lr else get_method(name).typical_lr
    recipe["train"].update(max_steps=plan.steps, lr=lr, eval_every=plan.steps, save_every=plan.steps,
                           early_stopping_patience=None)
    recipe["output"].update(dir=str(plan.out / name), merge=False)  # the table is about training, not export
    if plan.eval_rows:
        recipe["eval"]["max_rows"] = plan.eval_rows
    return recipe


def peak_memory() -> dict[str, float | None]:
    import resource

    import torch

    gpu = torch.cuda.max_memory_allocated() / 2**20 if torch.cuda.is_available() else None
    return {"peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, "peak_gpu_mib": gpu}


def weight_probe() -> Any:
    from transformers import TrainerCallback

    class WeightBytes(TrainerCallback):
        value = None

        def on_train_begin(self, args, state, control, model=None, **kwargs):
            from tunelab.models.quantize import weight_bytes

            self.value = weight_bytes(model)

    return WeightBytes()


def run_method(recipe_data: dict[str, Any], home: str, name: str, device: str, base_run: str | None,
               results: Any) -> None:
    """In a fresh process: train, evaluate, report one row through `results`."""
    try:
        results.put(measure(recipe_data, Path(home), name, device, base_run))
    except TunelabError as error:
        results.put({"method": name, "error": str(error)})
    except Exception as error:  # one method failing must not lose the others' rows
        results.put({"method": name, "error": f"{type(error).__name__}: {error}"})


def measure(recipe_data: dict[str, Any], home: Path, name: str, device: str, base_run: str | None) -> dict[str, Any]:
    from rich.console import Console

    from tunelab.config.load import validate_recipe
    from tunelab.evaluate.outputs import load_outputs
    from tunelab.files import read_json
    from tunelab.quiet import quiet_libraries
    from tunelab.run.folder import RunDir
    from tunelab.train.lifecycle import evaluate_and_record, run_recipe

    quiet_libraries()
    recipe = validate_recipe(recipe_data)
    quiet = Console(quiet=True)
    probe = weight_probe()
    started = time.perf_counter()
    outcome = run_recipe(recipe, home, quiet, overwrite=True, device=device, evaluate=False, callbacks=(probe,))
    train_seconds = time.perf_counter() - started
    started = time.perf_counter()
    base_outputs = load_outputs(RunDir(Path(base_run)).model_outputs("base")) if base_run else None
    risks_path = RunDir(Path(base_run)).risk_outputs("base") if base_run else None
    base_risks = read_json(risks_path) if risks_path and risks_path.is_file() else None  # the risk probes' too
    evaluation = evaluate_and_record(outcome.run.root, home, quiet, device, base_outputs=base_outputs,
                                     base_risks=base_risks)
    record, training = outcome.record, outcome.record.training
    return {"method": name, "run": str(outcome.run.root), "train_seconds": train_seconds,
            "eval_seconds": time.perf_counter() - started, "weight_mib": probe.value / 2**20,
            "trainable": record.method.trainable_parameters, "total": record.method.total_parameters,
            "tokens_per_second": training.train_tokens_per_second, "lr": recipe.train.lr, "steps": training.steps,
            "padding_free": record.padding_free, "evaluation": evaluation.model_dump(mode="json"), **peak_memory()}


def compare_methods(plan: Plan, home: Path, say: Callable[[str], None]) -> list[dict[str, Any]]:
    """Run every method in its own process; returns one row each, in order, then the base model's row."""
    rows: list[dict[str, Any]] = []
    for name in plan.methods:
        base_run = next((row["run"] for row in rows if "error" not in row), None)
        say(f"{name}: training {plan.steps} steps, then evaluating")
        row = measure_in_process(method_recipe(plan, name), home, name, plan.device, base_run)
        rows.append(row)
        say(summary_line(row))
    first = next((row for row in rows if "error" not in row), None)
    rows.append(base_row(first))
    return rows


def measure_in_process(recipe_data: dict[str, Any], home: Path, name: str, device: str,
                       base_run: str | None) -> dict[str, Any]:
    """`measure` in a fresh (spawned) process, so that its peak memory is its own; its row (or its error)."""
    context = multiprocessing.get_context("spawn")
    results = context.Queue()
    process = context.Process(target=run_method, args=(recipe_data, str(home), name, device, base_run, results))
    process.start()
    row = results.get()
    process.join()
    return row


def base_row(first: dict[str, Any] | None) -> dict[str, Any]:
    """The base model as the methods' evaluations measured it (the same rows, outputs run once)."""
    if first is None:
        return {"method": BASE, "error": "no method was evaluated, so neither was the base"}
    evaluation = first["evaluation"]
    intervals = evaluation["intervals"] or {}
    return {"method": BASE, "metrics": evaluation["base"], "intervals": intervals.get("base") or {},
            "reference_points": evaluation["reference_points"]}


def tuned_metrics(row: dict[str, Any]) -> tuple[dict[str, float], dict[str, list[float]]]:
    if row["method"] == BASE:
        return row["metrics"], row["intervals"]
    evaluation = row["evaluation"]
    return evaluation["tuned"], (evaluation["intervals"] or {}).get("tuned") or {}


def summary_line(row: dict[str, Any], facts: str | None = None) -> str:
    """One compared row: its headline metric tuned (base), then `facts` (default: its training tokens/s)."""
    if "error" in row:
        return f"  {row['method']} failed: {row['error']}"
    evaluation = row["evaluation"]
    primary = evaluation["primary_metric"]
    facts = facts if facts is not None else f"{row['tokens_per_second'] or 0:.0f} tokens/s"
    return (f"  {row['method']}: {primary} {format_value(primary, evaluation['tuned'][primary])} (base "
            f"{format_value(primary, evaluation['base'][primary])}), {facts}")


def headline_metrics(rows: list[dict[str, Any]]) -> list[str]:
    """The headline metric of the evaluation, the next two it computed, and the loss."""
    evaluated = next((row["evaluation"] for row in rows if "evaluation" in row), None)
    if evaluated is None:
        return []
    primary = evaluated["primary_metric"]
    others = [name for name in evaluated["metrics"] if name not in (primary, "loss", "perplexity")]
    return list(dict.fromkeys([primary, *others[:2], "loss"]))


def table_rows(rows: list[dict[str, Any]]) -> tuple[list[str], list[list[str]]]:
    metrics = headline_metrics(rows)
    headers = ["method", "trainable params", "% trained", "weights MiB", "peak RSS MiB", "tokens/s", "train s",
               "eval s", "lr", *metrics, "forgetting"]
    body = []
    for row in rows:
        if "error" in row:
            body.append([row["method"], f"failed: {row['error']}"] + [""] * (len(headers) - 2))
            continue
        values, intervals = tuned_metrics(row)
        trained = row["method"] != BASE
        forgetting = (row["evaluation"]["forgetting"] or {}).get("value") if trained else None
        body.append([
            row["method"],
            f"{row['trainable']:,}" if trained else "0",
            f"{100 * row['trainable'] / row['total']:.3f}" if trained else "0",
            f"{row['weight_mib']:.0f}" if trained else "",
            f"{row['peak_rss_mib']:.0f}" if trained else "",
            f"{row['tokens_per_second']:.0f}" if trained else "",
            f"{row['train_seconds']:.0f}" if trained else "",
            f"{row['eval_seconds']:.0f}" if trained else "",
            f"{row['lr']:g}" if trained else "",
            *[f"{format_value(key, values.get(key))} {format_interval(key, intervals.get(key))}".strip()
              for key in metrics],
            format_percent(forgetting) if forgetting is not None else "",
        ])
        for name, scores in row.get("reference_points", {}).items():  # e.g. the majority class, after the base
            body.append([name, *[""] * 8, *[format_value(key, scores.get(key)) if key in scores else ""
                                            for key in metrics], ""])
    return headers, body


def markdown(headers: list[str], body: list[list[str]], caption: str) -> str:
    lines = [caption, "", "| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(cells) + " |" for cells in body]
    return "\n".join(lines) + "\n"


def write_results(plan: Plan, rows: list[dict[str, Any]], caption: str) -> tuple[Path, Path]:
    headers, body = table_rows(rows)
    json_path, markdown_path = plan.out / "methods.json", plan.out / "methods.md"
    write_json(json_path, {"caption": caption, "steps": plan.steps, "methods": plan.methods, "rows": rows})
    write_text_atomic(markdown_path, markdown(headers, body, caption))
    return json_path, markdown_path
