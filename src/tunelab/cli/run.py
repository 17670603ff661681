"""Commands on runs: train, eval, generate, chat."""

from __future__ import annotations

import copy
import time
from pathlib import Path
from typing import Optional

import typer

from tunelab.cli.app import app, console, quiet_libraries
from tunelab.errors import TunelabError
from tunelab.paths import tunelab_home


@app.command()
def train(
    recipe: Path = typer.Argument(..., help="Recipe YAML file."),
    overrides: Optional[list[str]] = typer.Argument(None, help="Dotted overrides, e.g. train.lr=1e-4"),
    resume: bool = typer.Option(False, "--resume", help="Continue the run in output.dir from its last checkpoint."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace the run already in output.dir."),
    no_eval: bool = typer.Option(False, "--no-eval", help="Skip the base-vs-tuned evaluation at the end."),
) -> None:
    """Fine-tune a model as a recipe says, then evaluate it against its base."""
    from tunelab.config.load import load_recipe
    from tunelab.evaluate.gate import enforce

    config = load_recipe(recipe, overrides or [])
    quiet_libraries()
    if config.task == "classification":
        from tunelab.train.classify import train as run_training
    else:
        from tunelab.train.sft import train as run_training

    started = time.perf_counter()
    run = run_training(config, tunelab_home(), console, resume=resume, overwrite=overwrite)
    record = run.read_record()
    metrics = record.get("metrics", {})
    console.print(f"[bold green]trained[/bold green] {record['steps']} steps, {record['tokens_seen']:,} tokens, "
                  f"{metrics.get('train_tokens_per_second') or 0:.0f} tokens/s; saved {run.model}")
    verdict = None
    if config.eval.after_train and not no_eval:
        verdict = evaluate_and_show(run.root)
    elif config.objective is not None:
        console.print(f"[yellow]objective not checked[/yellow] (no evaluation); `tunelab eval {run.root}` checks it")
    console.print(f"[bold]done[/bold] in {time.perf_counter() - started:.0f} s: {run.root}")
    enforce(verdict)


def evaluate_and_show(run_root: Path, max_rows: int | None = None, overrides: list[str] = ()) -> dict | None:
    """Evaluate, record, print the comparison and verdict, write report.html; returns the objective's verdict."""
    from tunelab.evaluate.compare import comparison_table, evaluate_run, flip_line, forgetting_lines
    from tunelab.evaluate.report import write_report
    from tunelab.evaluate.summary import evaluation_record, verdict_line
    from tunelab.inference import open_run_models

    models = open_run_models(run_root, tunelab_home())
    recipe = evaluation_recipe(models.record["recipe"], overrides, str(models.run.record_path))
    if recipe.task == "classification":
        report = show_classification(models, recipe, max_rows)
    else:
        report = evaluate_run(models, console, max_rows=max_rows, recipe=recipe)
        console.print(comparison_table(report))
        for line in [*forgetting_lines(report["forgetting"]), flip_line(report["flips"])]:
            console.print(line)
    record = models.run.read_record()
    record["evaluation"] = evaluation_record(report)
    models.run.write_record(record)
    write_report(models.run)
    console.print(f"[dim]written {models.run.eval_json}, {models.run.report_html}[/dim]")
    console.print(verdict_line(report["objective"]))
    return report["objective"]


def show_classification(models, recipe, max_rows: int | None) -> dict:
    """Classification: base, tuned and the majority class on the test rows, with the objective's verdict."""
    from tunelab.evaluate.classification import classification_table, confusion_text, evaluate_classification
    from tunelab.evaluate.gate import check_objective
    from tunelab.files import write_json

    report = evaluate_classification(models, console, max_rows=max_rows)
    report.update(primary_metric="f1", intervals=None, objective=check_objective(recipe.objective, report))
    write_json(models.run.eval_json, report)
    console.print(classification_table(report))
    console.print(confusion_text(report), markup=False)
    return report


def evaluation_recipe(recipe: dict, overrides: list[str], source: str):
    """The run's recipe with `eval.*` / `objective.*` overrides: what to measure may change, what was trained not."""
    from tunelab.config.load import apply_overrides, validate_recipe

    for item in overrides:
        section = item.partition("=")[0].strip().split(".")[0]
        if section not in ("eval", "objective"):
            raise TunelabError(f"command line: '{item}': tunelab eval can change eval.* and objective.* only")
    raw = copy.deepcopy(recipe)
    overridden = apply_overrides(raw, list(overrides))
    return validate_recipe(raw, source=source, overridden=overridden)


@app.command("eval")
def eval_command(
    run: Path = typer.Argument(..., help="Run folder."),
    overrides: Optional[list[str]] = typer.Argument(
        None, help="eval.* or objective.* changes for this evaluation, e.g. objective.min=0.9 eval.max_rows=50"),
    max_rows: Optional[int] = typer.Option(None, help="Evaluate on at most this many test rows."),
) -> None:
    """Base vs tuned on the run's held-out test rows with the same decoding; checks the objective, rebuilds the report.

    Exit code 0 when the recipe's objective is met (or there is none), 3 when it is not.
    """
    quiet_libraries()
    verdict = evaluate_and_show(run, max_rows, overrides or [])
    from tunelab.evaluate.gate import enforce

    enforce(verdict)


def load_for_chat(run: Path, base: bool):
    from tunelab.inference import open_run_models

    models = open_run_models(run, tunelab_home())
    if models.record.get("classification", {}).get("style") == "head":
        raise TunelabError(f"{run}: this run is a classifier with a head, it does not write text; "
                           "use tunelab classify RUN TEXT")
    return models, (models.base() if base else models.tuned()), models.tokenizer()


def reply(model, tokenizer, messages: list[dict[str, str]], max_new_tokens: int, temperature: float) -> str:
    from tunelab.data.templates import encode_prompt
    from tunelab.evaluate.generation import generate_texts
    from tunelab.models.load import model_stop_ids

    stop_ids = sorted({tokenizer.eos_token_id, *model_stop_ids(model)})
    prompt = encode_prompt(tokenizer, messages)
    return generate_texts(model, tokenizer, [prompt], max_new_tokens, 1, stop_ids, temperature).texts[0]


@app.command()
def generate(
    run: Path = typer.Argument(..., help="Run folder."),
    text: str = typer.Argument(..., help="The user message."),
    base: bool = typer.Option(False, "--base", help="Answer with the run's base model instead."),
    system: Optional[str] = typer.Option(None, help="A system message."),
    max_new_tokens: int = typer.Option(256, min=1),
    temperature: float = typer.Option(0.0, min=0.0, help="0 = greedy."),
) -> None:
    """Answer one message with the tuned model (or --base)."""
    quiet_libraries()
    _, model, tokenizer = load_for_chat(run, base)
    messages = ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": text}]
    console.print(reply(model, tokenizer, messages, max_new_tokens, temperature), markup=False, soft_wrap=True)


@app.command()
def chat(
    run: Path = typer.Argument(..., help="Run folder."),
    base: bool = typer.Option(False, "--base", help="Chat with the run's base model instead."),
    system: Optional[str] = typer.Option(None, help="A system message."),
    max_new_tokens: int = typer.Option(256, min=1),
    temperature: float = typer.Option(0.0, min=0.0, help="0 = greedy."),
) -> None:
    """Talk to the tuned model (or --base). /reset clears the history, /exit or Ctrl-D leaves."""
    quiet_libraries()
    _, model, tokenizer = load_for_chat(run, base)
    opening = [{"role": "system", "content": system}] if system else []
    history = list(opening)
    console.print(f"[dim]chatting with the {'base' if base else 'tuned'} model of {run}; /reset, /exit[/dim]")
    while True:
        try:
            text = console.input("[bold]you>[/bold] ")
        except EOFError:
            break
        if text.strip() == "/exit":
            break
        if text.strip() == "/reset":
            history = list(opening)
            continue
        history.append({"role": "user", "content": text})
        answer = reply(model, tokenizer, history, max_new_tokens, temperature)
        history.append({"role": "assistant", "content": answer})
        console.print("[bold]model>[/bold] ", end="")
        console.print(answer, markup=False, soft_wrap=True)
