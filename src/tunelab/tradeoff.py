"""`tunelab compare-methods`: the same data and step budget through several tuning methods, base model included.

Each method trains and is evaluated in a fresh process (spawned), so its peak memory is its own. Per method the
table gives trainable parameters, the bytes its weights occupy (4-bit weights counted packed), the process's peak
resident memory (RSS; on a GPU also torch's peak allocation), training tokens/s, training and evaluation time,
and the evaluation metrics on the test split (the same rows for every method). Each method trains at its own
typical learning rate (methods/*.py) unless --same-lr; every other setting comes from the recipe.
"""

from __future__ import annotations

import json
import multiprocessing
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tunelab.errors import TunelabError
from tunelab.files import write_json, write_text_atomic

BASE = "base"
# The metrics each task's table shows (the first is the headline).
TABLE_METRICS = {"sft": ("json_match", "exact_match", "loss"), "classification": ("f1", "mcc", "accuracy")}


@dataclass(frozen=True)
class Plan:
    recipe: dict[str, Any]  # the validated recipe, as data
    methods: list[str]
    steps: int
    out: Path
    same_lr: bool
    eval_rows: int | None


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


def run_method(recipe_data: dict[str, Any], home: str, name: str, results: Any) -> None:
    """In a fresh process: train (unless `name` is the base), evaluate, report one row through `results`."""
    try:
        results.put(measure(recipe_data, Path(home), name))
    except TunelabError as error:
        results.put({"method": name, "error": str(error)})
    except Exception as error:  # one method failing must not lose the others' rows
        results.put({"method": name, "error": f"{type(error).__name__}: {error}"})


def measure(recipe_data: dict[str, Any], home: Path, name: str) -> dict[str, Any]:
    from rich.console import Console

    from tunelab.cli.app import quiet_libraries
    from tunelab.config.load import validate_recipe

    quiet_libraries()
    recipe = validate_recipe(recipe_data)
    quiet = Console(quiet=True)
    row: dict[str, Any] = {"method": name}
    if name == BASE:
        started = time.perf_counter()
        row.update(evaluate_base(recipe, home, quiet))
        row["eval_seconds"] = time.perf_counter() - started
        return {**row, **peak_memory()}
    if recipe.task == "classification":
        from tunelab.train.classify import train
    else:
        from tunelab.train.sft import train
    probe = weight_probe()
    started = time.perf_counter()
    run = train(recipe, home, quiet, overwrite=True, callbacks=(probe,))
    record = run.read_record()
    row.update(train_seconds=time.perf_counter() - started, weight_mib=probe.value / 2**20,
               trainable=record["method"]["trainable_parameters"], total=record["method"]["total_parameters"],
               tokens_per_second=record["metrics"]["train_tokens_per_second"], lr=recipe.train.lr,
               steps=record["steps"], padding_free=record["padding_free"])
    started = time.perf_counter()
    row["metrics"] = evaluate_tuned(run.root, recipe, home, quiet)
    row["eval_seconds"] = time.perf_counter() - started
    return {**row, **peak_memory()}


def evaluate_tuned(root: Path, recipe: Any, home: Path, console: Any) -> dict[str, Any]:
    from tunelab.inference import open_run_models

    models = open_run_models(root, home)
    if recipe.task == "classification":
        from tunelab.evaluate.classification import evaluate_classification

        return evaluate_classification(models, console, which=("tuned",))["tuned"]
    return evaluate_generation(models.tuned(), models.tokenizer(), models.run.data, recipe, is_bf16(models))


def evaluate_base(recipe: Any, home: Path, console: Any) -> dict[str, Any]:
    """The base model on the test split the methods' runs use (the first method's run folder holds it)."""
    from tunelab.inference import open_run_models

    models = open_run_models(Path(recipe.output.dir), home)
    if recipe.task == "classification":
        from tunelab.evaluate.classification import evaluate_classification

        report = evaluate_classification(models, console, which=("base",))
        return {"metrics": report["base"], "majority": report["majority"]}
    return {"metrics": evaluate_generation(models.base(), models.tokenizer(), models.run.data, recipe,
                                           is_bf16(models))}


def is_bf16(models: Any) -> bool:
    return models.record.get("precision") == "bf16"


def evaluate_generation(model: Any, tokenizer: Any, data_dir: Path, recipe: Any, bf16: bool) -> dict[str, Any]:
    """Teacher-forced loss on the answers and greedy-generation metrics on the test rows, for one model."""
    from tunelab.data.prepare import read_splits
    from tunelab.data.templates import encode_conversation, encode_prompt, prompt_and_reference, stop_token_ids
    from tunelab.evaluate.generation import generate_texts
    from tunelab.evaluate.loss import mean_loss, row_losses
    from tunelab.evaluate.metrics import text_metrics
    from tunelab.models.load import model_stop_ids

    test = read_splits(data_dir).test[: recipe.eval.max_rows]
    stop_ids = stop_token_ids(tokenizer, model_stop_ids(model))
    pairs = [prompt_and_reference(example.messages) for example in test]
    references = [reference for _, reference in pairs]
    longest = max(len(tokenizer(text, add_special_tokens=False)["input_ids"]) for text in references)
    max_new_tokens = min(recipe.eval.max_new_tokens, 2 * longest + 16)
    rows = [encode_conversation(tokenizer, example.messages, stop_ids) for example in test]
    loss = mean_loss(row_losses(model, rows, tokenizer.pad_token_id, autocast_bf16=bf16))
    prompts = [encode_prompt(tokenizer, messages) for messages, _ in pairs]
    generated = generate_texts(model, tokenizer, prompts, max_new_tokens, recipe.eval.batch_size, sorted(stop_ids),
                               autocast_bf16=bf16)
    return {"loss": loss, **text_metrics(generated.texts, references), "rows": len(test)}


def compare_methods(plan: Plan, home: Path, say: Any) -> list[dict[str, Any]]:
    """Run every method (and the base) in its own process; returns one row each, in order."""
    context = multiprocessing.get_context("spawn")
    rows = []
    for name in [*plan.methods, BASE]:
        recipe = method_recipe(plan, plan.methods[0]) if name == BASE else method_recipe(plan, name)
        say(f"{name}: {'evaluating' if name == BASE else f'training {plan.steps} steps, then evaluating'}")
        results = context.Queue()
        process = context.Process(target=run_method, args=(recipe, str(home), name, results))
        process.start()
        row = results.get()
        process.join()
        rows.append(row)
        say(summary_line(row))
    return rows


def summary_line(row: dict[str, Any]) -> str:
    if "error" in row:
        return f"  {row['method']} failed: {row['error']}"
    metrics = ", ".join(f"{key} {value:.4f}" for key, value in row["metrics"].items() if isinstance(value, float))
    return f"  {row['method']}: {metrics}"


def headline_metrics(task: str, rows: list[dict[str, Any]]) -> list[str]:
    present = set().union(*(row.get("metrics", {}) for row in rows))
    return [key for key in TABLE_METRICS[task] if key in present]


def table_rows(task: str, rows: list[dict[str, Any]]) -> tuple[list[str], list[list[str]]]:
    metrics = headline_metrics(task, rows)
    headers = ["method", "trainable params", "% trained", "weights MiB", "peak RSS MiB", "tokens/s", "train s",
               "eval s", "lr", *metrics]
    body = []
    for row in rows:
        if "error" in row:
            body.append([row["method"], f"failed: {row['error']}"] + [""] * (len(headers) - 2))
            continue
        trained = row["method"] != BASE
        body.append([
            row["method"],
            f"{row['trainable']:,}" if trained else "0",
            f"{100 * row['trainable'] / row['total']:.3f}" if trained else "0",
            f"{row['weight_mib']:.0f}" if trained else "",
            f"{row['peak_rss_mib']:.0f}",
            f"{row['tokens_per_second']:.0f}" if trained else "",
            f"{row['train_seconds']:.0f}" if trained else "",
            f"{row['eval_seconds']:.0f}",
            f"{row['lr']:g}" if trained else "",
            *[f"{row['metrics'][key]:.4f}" for key in metrics],
        ])
    return headers, body


def markdown(headers: list[str], body: list[list[str]], caption: str) -> str:
    lines = [caption, "", "| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(cells) + " |" for cells in body]
    return "\n".join(lines) + "\n"


def write_results(plan: Plan, rows: list[dict[str, Any]], caption: str) -> tuple[Path, Path]:
    headers, body = table_rows(plan.recipe.get("task", "sft"), rows)
    json_path, markdown_path = plan.out / "methods.json", plan.out / "methods.md"
    write_json(json_path, {"caption": caption, "steps": plan.steps, "methods": plan.methods, "rows": rows})
    write_text_atomic(markdown_path, markdown(headers, body, caption))
    return json_path, markdown_path
