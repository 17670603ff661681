"""Commands on runs: train, eval, generate, chat, classify."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Optional

import typer

from tunelab.cli.app import OVERRIDES, Command, app, console, device_option, error_console
from tunelab.cli.plan import memory_budget_option
from tunelab.errors import TunelabError
from tunelab.paths import tunelab_home
from tunelab.quiet import quiet_libraries


@app.command(cls=Command)
def train(
    recipe: Path = typer.Argument(..., help="Recipe YAML file."),
    overrides: Optional[list[str]] = typer.Argument(None, metavar=OVERRIDES,
        help="Dotted overrides, e.g. train.lr=1e-4"),
    resume: bool = typer.Option(False, "--resume/--no-resume",
                                help="Continue the run in output.dir from its last checkpoint."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace the run already in output.dir."),
    no_eval: bool = typer.Option(False, "--no-eval", help="Skip the base-vs-tuned evaluation at the end."),
    device: str = device_option(),
    nproc: int = typer.Option(1, "--nproc", min=1, help="Training processes on this machine (one per GPU), "
                              "launched with torchrun; train.distributed says how they share the model."),
    nnodes: int = typer.Option(1, "--nnodes", min=1, help="Machines training together (run the command tunelab "
                               "prints on each)."),
    node_rank: int = typer.Option(0, "--node-rank", min=0, help="This machine's number, 0 to nnodes-1; node 0 "
                                  "writes the run folder and evaluates."),
    master: Optional[str] = typer.Option(None, "--master", help="ADDR:PORT of node 0, where the nodes meet "
                                         "(needed with --nnodes > 1)."),
    worker: bool = typer.Option(False, "--worker", hidden=True, help="One torchrun worker: training only."),
    memory_budget: Optional[str] = memory_budget_option(),
) -> None:
    """Fine-tune a model as a recipe says, then evaluate it against its base."""
    from tunelab.config.load import load_recipe
    from tunelab.evaluate.gate import enforce
    from tunelab.plan.fit import parse_size
    from tunelab.train.lifecycle import run_recipe

    config = load_recipe(recipe, overrides or [])
    budget = parse_size(memory_budget) if memory_budget else None
    quiet_libraries()
    if worker:
        train_worker_process(config, device)
        return
    world = check_world(nproc, nnodes, node_rank, master)
    started = time.perf_counter()
    try:
        from tunelab.train.engines import needs_launcher

        if needs_launcher(config.train, world):
            from tunelab.train.distributed import launch_run

            if node_rank > 0:  # this node's workers find the data prepared in its tunelab home, as node 0's do
                from tunelab.cli.data import run_doctor

                run_doctor(config, check=False)
            outcome = launch_run(config, recipe, overrides or [], tunelab_home(), console, world, resume=resume,
                                 overwrite=overwrite, device=device, evaluate=not no_eval, memory_budget=budget)
            if outcome is None:  # a node other than 0: its workers are done; node 0 evaluates
                console.print(f"[bold]done[/bold]: node {node_rank}'s workers finished")
                return
        else:
            outcome = run_recipe(config, tunelab_home(), console, resume=resume, overwrite=overwrite, device=device,
                                 evaluate=not no_eval, memory_budget=budget)
    except KeyboardInterrupt:
        from tunelab.train.distributed import world_flags

        again = [*(overrides or []), *world_flags(world)]
        error_console.print(interrupted_line(recipe, again, Path(config.output.dir)), soft_wrap=True)
        raise typer.Exit(130) from None
    if outcome.evaluation is None and config.objective is not None:
        console.print(f"[yellow]objective not checked[/yellow] (no evaluation); `tunelab eval {outcome.run.root}` "
                      "checks it")
    console.print(f"[bold]done[/bold] in {time.perf_counter() - started:.0f} s: {outcome.run.root}")
    enforce(outcome.evaluation.objective if outcome.evaluation else None)


def check_world(nproc: int, nnodes: int, node_rank: int, master: str | None):
    from tunelab.train.engines import World

    if node_rank >= nnodes:
        raise TunelabError(f"--node-rank {node_rank}: nodes are numbered 0 to --nnodes - 1 ({nnodes - 1})")
    world = World(nproc=nproc, nnodes=nnodes, node_rank=node_rank, master=master)
    if nnodes > 1 or master is not None:
        world.master_address()  # checked now: ADDR:PORT
    return world


def train_worker_process(config, device: str) -> None:
    """A torchrun worker: its rank from torchrun's environment (read here, at the boundary), training only; the
    ranks other than 0 print nothing (rank 0 speaks for the run)."""
    import os

    from rich.console import Console

    from tunelab.train.distributed import train_worker, worker_rank

    rank = worker_rank(dict(os.environ))
    train_worker(config, tunelab_home(), console if rank.primary else Console(quiet=True), rank, device)


def interrupted_line(recipe: Path, overrides: list[str], output_dir: Path) -> str:
    """What Ctrl-C during `tunelab train` leaves, and the command that continues it."""
    import shlex

    from tunelab.run.folder import RunDir
    from tunelab.run.record import raw_record

    run = RunDir(output_dir)
    if not run.is_run():
        return f"interrupted before training started; nothing was written to {output_dir}"
    try:
        status = raw_record(run).get("status")
    except TunelabError:
        status = None
    if status == "completed":  # the evaluation after training was interrupted, not the training
        return f"interrupted during the evaluation; the run is trained: `tunelab eval {output_dir}` evaluates it"
    again = shlex.join(["tunelab", "train", str(recipe), *overrides, "--resume"])
    return f"interrupted; `{again}` continues the run in {output_dir} from its last checkpoint"


@app.command("eval", cls=Command)
def eval_command(
    run: Path = typer.Argument(..., help="Run folder."),
    overrides: Optional[list[str]] = typer.Argument(
        None, metavar=OVERRIDES,
        help="eval.* or objective.* changes for this evaluation, e.g. objective.min=0.9 eval.max_rows=50"),
    max_rows: Optional[int] = typer.Option(None, help="Evaluate on at most this many test rows."),
    device: str = device_option(),
) -> None:
    """Base vs tuned on the run's held-out test rows, answered the same way; checks the objective, rebuilds the
    report.

    Exit code 0 when the recipe's objective is met (or there is none), 3 when it is not.
    """
    from tunelab.evaluate.gate import enforce
    from tunelab.train.lifecycle import evaluate_and_record

    quiet_libraries()
    evaluation = evaluate_and_record(run, tunelab_home(), console, device, max_rows, overrides or [])
    enforce(evaluation.objective)


def text_model(run: Path, base: bool, device: str):
    """The run's tuned (or base) model and tokenizer, for a command that needs a model that writes text."""
    from tunelab.run.models import open_run_models

    models = open_run_models(run, tunelab_home(), device)
    inference = models.inference()
    if not inference.writes_text:
        raise TunelabError(f"{run}: {inference.instead}")
    model = inference.load_base() if base else inference.load_tuned()
    return models, model, models.tokenizer()


def reply(model, tokenizer, messages: list[dict[str, str]], max_new_tokens: int, temperature: float,
          placement=None) -> str:
    from tunelab.data.templates import encode_prompt
    from tunelab.evaluate.answers import model_stops
    from tunelab.evaluate.generation import generate_texts

    prompt = encode_prompt(tokenizer, messages)
    return generate_texts(model, tokenizer, [prompt], max_new_tokens, 1, sorted(model_stops(model, tokenizer)),
                          temperature, placement=placement).texts[0]


@app.command(cls=Command)
def generate(
    run: Path = typer.Argument(..., help="Run folder."),
    text: str = typer.Argument(..., help="The user message."),
    base: bool = typer.Option(False, "--base", help="Answer with the run's base model instead."),
    system: Optional[str] = typer.Option(None, help="A system message."),
    max_new_tokens: int = typer.Option(256, min=1),
    temperature: float = typer.Option(0.0, min=0.0, help="0 = greedy."),
    device: str = device_option(),
) -> None:
    """Answer one message with the tuned model (or --base), decoded as evaluation decodes."""
    quiet_libraries()
    models, model, tokenizer = text_model(run, base, device)
    messages = ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": text}]
    answer = reply(model, tokenizer, messages, max_new_tokens, temperature, models.placement)
    console.print(answer, markup=False, soft_wrap=True)


@app.command(cls=Command)
def chat(
    run: Path = typer.Argument(..., help="Run folder."),
    base: bool = typer.Option(False, "--base", help="Chat with the run's base model instead."),
    system: Optional[str] = typer.Option(None, help="A system message."),
    max_new_tokens: int = typer.Option(256, min=1),
    temperature: float = typer.Option(0.0, min=0.0, help="0 = greedy."),
    device: str = device_option(),
) -> None:
    """Talk to the tuned model (or --base). /reset clears the history, /exit or Ctrl-D leaves."""
    quiet_libraries()
    models, model, tokenizer = text_model(run, base, device)
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
        answer = reply(model, tokenizer, history, max_new_tokens, temperature, models.placement)
        history.append({"role": "assistant", "content": answer})
        console.print("[bold]model>[/bold] ", end="")
        console.print(answer, markup=False, soft_wrap=True)


@app.command(cls=Command)
def classify(
    run: Path = typer.Argument(..., help="Run folder of a classification run."),
    texts: list[str] = typer.Argument(..., metavar="TEXT", help="One or more texts."),
    base: bool = typer.Option(False, "--base", help="Use the run's base model instead."),
    device: str = device_option(),
) -> None:
    """Print the class of each text (tab-separated: class, text)."""
    from tunelab.run.models import open_run_models

    quiet_libraries()
    models = open_run_models(run, tunelab_home(), device)
    inference = models.inference()
    if inference.classify is None:
        raise TunelabError(f"{run}: a {models.record.task} run answers with text, not classes; use tunelab generate")
    tokenizer = models.tokenizer()
    model = inference.load_base() if base else inference.load_tuned()
    for label, text in zip(inference.classify(model, tokenizer, texts), texts):
        typer.echo(f"{label}\t{text}")  # plain tab-separated lines, for scripts
