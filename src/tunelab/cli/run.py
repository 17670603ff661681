"""Commands on runs: train, eval, generate, chat."""

from __future__ import annotations

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
    if config.eval.after_train and not no_eval:
        evaluate_and_show(run.root)
    console.print(f"[bold]done[/bold] in {time.perf_counter() - started:.0f} s: {run.root}")


def evaluate_and_show(run_root: Path, max_rows: int | None = None) -> None:
    from tunelab.evaluate.compare import comparison_table, evaluate_run
    from tunelab.inference import open_run_models

    models = open_run_models(run_root, tunelab_home())
    if models.recipe.task == "classification":
        from tunelab.evaluate.classification import classification_table, confusion_text, evaluate_classification

        report = evaluate_classification(models, console, max_rows=max_rows)
        table = classification_table(report)
    else:
        report = evaluate_run(models, console, max_rows=max_rows)
        table = comparison_table(report)
    record = models.run.read_record()
    record["evaluation"] = {key: report[key] for key in ("rows", "base", "tuned", "delta")}
    models.run.write_record(record)
    console.print(table)
    if models.recipe.task == "classification":
        console.print(confusion_text(report), markup=False)
    console.print(f"[dim]written {models.run.eval_json} and {models.run.eval_worst}[/dim]")


@app.command("eval")
def eval_command(
    run: Path = typer.Argument(..., help="Run folder."),
    max_rows: Optional[int] = typer.Option(None, help="Evaluate on at most this many test rows."),
) -> None:
    """Base vs tuned on the run's held-out test rows, with the same decoding."""
    quiet_libraries()
    evaluate_and_show(run, max_rows)


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
    console.print(reply(model, tokenizer, messages, max_new_tokens, temperature), markup=False)


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
        console.print(answer, markup=False)
