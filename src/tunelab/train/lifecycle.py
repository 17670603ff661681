"""The training lifecycle every task's recipe runs, top to bottom: a recipe in, a run folder out.

    set_up      check the run folder, the method, the trackers, the base model; the data doctor; the task turns the
                rows into training examples; what the evaluation after training would refuse is refused now
    start       the model to train (the task builds it, the method wraps it); the run folder and run.json
    fit         the task's trainer, with progress, checkpoints (committed with a manifest: checkpoints.py), --resume
                from the newest complete one, and trackers; save. A full disk or a kill leaves a run that --resume
                continues, never a half-written artefact taken for a whole one
    finish      once training's model and trainer are gone (memory: host_memory.py): merge, run.json completed
    evaluate    base vs tuned through the one evaluator; run.json keeps its summary; report.html
The order matters: everything that can fail on the user's input is checked before the run folder is created or
cleared, so a bad recipe never costs the user an earlier run. The gate's verdict is returned; the CLI enforces it.
"""

from __future__ import annotations

import errno
import gc
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tunelab.errors import StopRequested, TunelabError
from tunelab.methods.base import Method, check_merge_request, no_merge_note, wants_merge
from tunelab.methods.registry import get_method
from tunelab.plan.fit import plan_and_check
from tunelab.rewards.build import RewardContext
from tunelab.run.folder import RunDir, check_output_dir, prepare_run_dir
from tunelab.run.record import (
    BaseModelInfo,
    DataFileInfo,
    DataInfo,
    DoctorSummary,
    Evaluation,
    MethodInfo,
    RunRecord,
    environment,
    now,
    read_record,
    write_record,
)
from tunelab.tasks.base import Task, TaskData, TaskInputs, TrainerParts, check_row_kinds
from tunelab.tasks.registry import get_task
from tunelab.train.engines import World

if TYPE_CHECKING:
    from rich.console import Console

    from tunelab.config.schema import Recipe
    from tunelab.data.cache import Prepared
    from tunelab.device import Placement
    from tunelab.models.load import ModelRef
    from tunelab.run.record import StartInfo
    from tunelab.train.checkpoints import Choice

# Recipe sections a resumed run may change: they do not alter what is trained.
RESUMABLE_CHANGES = ("eval", "objective", "output")


@dataclass
class Setup:
    """Everything a run needs, checked before its folder is touched."""

    recipe: "Recipe"
    task: Task
    method: Method
    placement: "Placement"
    ref: "ModelRef"
    tokenizer: Any
    prepared: "Prepared"
    data: TaskData
    prior: RunRecord | None  # the record of the run being resumed
    overwrite: bool
    resume_from: "Choice | None" = None  # on --resume: the newest complete checkpoint, and the newer ones skipped
    started_from: "StartInfo | None" = None  # a chained run's start (model.from_run: run/chain.py)
    rewards: "RewardContext | None" = None  # what the recipe's model-backed rewards need (home, placement)
    world: World = World()  # the processes training together (train/distributed.py); one by default
    rank: int = 0  # this process's rank among them: rank 0 is the one writer of the run folder


@dataclass
class Outcome:
    run: RunDir
    record: RunRecord
    evaluation: Evaluation | None


def run_recipe(recipe: "Recipe", home: Path, console: "Console", resume: bool = False, overwrite: bool = False,
               device: str = "auto", evaluate: bool = True, callbacks: tuple = (),
               memory_budget: int | None = None) -> Outcome:
    """Train as the recipe says and, unless told not to (or eval.after_train is false), evaluate."""
    setup = set_up(recipe, home, console, resume, overwrite, device)
    if is_complete(setup):
        return already_complete(setup, home, console, device, evaluate)
    plan_and_check(setup, console, memory_budget)  # the plan; a run that cannot fit is refused here
    model = build_model(setup)
    run, record = start(setup, model, console)
    fit(setup, run, record, model, console, callbacks)
    del model  # the trainer went with fit: the merge's fresh base does not stack on training's memory
    finish(setup, run, record, console)
    evaluation = None
    if evaluate and recipe.eval.after_train:
        evaluation = evaluate_and_record(run.root, home, console, device)
    return Outcome(run, record, evaluation)


def is_complete(setup: Setup) -> bool:
    """--resume of a run that finished: every planned step done (or stopped early) and the model saved."""
    from tunelab.train.checkpoints import finished_training, trainer_state

    prior, choice = setup.prior, setup.resume_from
    if prior is None or prior.status != "completed" or not RunDir(Path(setup.recipe.output.dir)).model.is_dir():
        return False
    return choice is None or choice.checkpoint is None or finished_training(trainer_state(choice.checkpoint))


def already_complete(setup: Setup, home: Path, console: "Console", device: str, evaluate: bool) -> Outcome:
    """Nothing to train: the run's own evaluation, made now only where it has none."""
    from tunelab.run.record import read_evaluation

    run = RunDir(Path(setup.recipe.output.dir))
    training = setup.prior.training
    done = f"{training.steps}/{training.max_steps} steps" if training else "training"
    console.print(f"[bold]already complete[/bold]: {run.root} finished {done}; nothing to train "
                  "(--overwrite trains it again from the start)")
    evaluation = read_evaluation(run)
    if evaluation is None and evaluate and setup.recipe.eval.after_train:
        evaluation = evaluate_and_record(run.root, home, console, device)
    return Outcome(run, read_record(run), evaluation)


def set_up(recipe: "Recipe", home: Path, console: "Console", resume: bool, overwrite: bool, device: str) -> Setup:
    from tunelab.run.chain import chained_recipe
    from tunelab.train.trackers import check_trackers

    recipe = chained_recipe(recipe, home)  # model.from_run checked, model.name its root: what resume compares
    prior, resume_from = check_run_dir(Path(recipe.output.dir), resume, overwrite, recipe)
    check_merge_request(get_method(recipe.method.name),
                        "merge" in recipe.output.model_fields_set and recipe.output.merge)
    check_trackers(recipe.train.report_to)
    setup = checked_inputs(recipe, home, console, device, prior)
    check_evaluation(setup.task, recipe, setup.data, setup.tokenizer, setup.rewards)
    return replace(setup, overwrite=overwrite, resume_from=resume_from)


def checked_inputs(recipe: "Recipe", home: Path, console: "Console", device: str,
                   prior: RunRecord | None = None) -> Setup:
    """What every run starts from, checked: the base model resolved, the data doctor (cached: the data `data
    prepare` made), the task's training examples. `set_up` adds the run folder's checks; `tunelab plan` uses it
    alone (a plan writes nothing and reads no earlier run). `recipe` is already chained (run/chain.py)."""
    from tunelab.data.cache import prepare_data
    from tunelab.data.templates import resolve_chat_template
    from tunelab.device import resolve_placement
    from tunelab.models.load import model_limits
    from tunelab.models.tokenizer import load_tokenizer
    from tunelab.run.chain import check_same_start, recipe_base

    task, method = get_task(recipe.task.name), get_method(recipe.method.name)
    placement = resolve_placement(device, recipe.train.precision)
    ref, started_from = recipe_base(recipe, home, console)
    if prior is not None:
        check_same_start(prior, started_from)
    tokenizer = load_tokenizer(ref.path, resolve_chat_template(recipe.model.chat_template))
    limits = model_limits(ref.path, tokenizer)
    with stage_progress(console) as progress:
        prepared = prepare_data(recipe.data, tokenizer, limits.stop_ids, limits.context, home, progress=progress)
    check_row_kinds(task, prepared.report["splits"]["train"]["kinds"], recipe.data.train or "data")
    if prior is not None:
        check_same_data(prior, prepared)
    rewards = RewardContext(home, placement)
    data = task.prepare(TaskInputs(recipe, prepared, tokenizer, limits.stop_ids, ref.path,
                                   padding_free=recipe.train.padding_free and method.padding_free,
                                   rewards_context=rewards))
    check_trainable(recipe, data)
    return Setup(recipe, task, method, placement, ref, tokenizer, prepared, data, prior, False, None, started_from,
                 rewards)


def build_model(setup: Setup) -> Any:
    """The model to train: the task builds it from the base checkpoint, the method wraps it (seeded: adapter
    initialisation is random, and the same recipe must give the same run)."""
    from transformers import set_seed

    recipe = setup.recipe
    set_seed(recipe.train.seed)
    model = setup.task.load_model(setup.ref.path, setup.data, recipe, setup.tokenizer)
    return setup.method.wrap(model, recipe.method)


def start(setup: Setup, model: Any, console: "Console") -> tuple[RunDir, RunRecord]:
    """The run folder before the first step: the data as trained on, the recipe as resolved, run.json."""
    from tunelab.config.load import recipe_to_yaml
    from tunelab.files import write_text_atomic
    from tunelab.present.console import print_doctor, print_plan

    recipe = setup.recipe
    run = prepare_run_dir(Path(recipe.output.dir), setup.prior is not None, setup.overwrite)
    if setup.resume_from is not None:
        report_resume_point(console, run, setup.resume_from)
    described = describe(setup, model)
    record = (setup.prior.model_copy(update={**described, "status": "running", "error": None})
              if setup.prior else RunRecord(task=setup.task.name, started_at=now(), environment=environment(),
                                            recipe=recipe.model_dump(mode="json"), **described))
    # run.json first: a run killed while its data is copied is still a run that --resume or --overwrite can take.
    write_record(run, record)
    setup.prepared.copy_to(run.data, setup.data.splits)
    write_text_atomic(run.recipe_path, recipe_to_yaml(recipe))
    print_plan(console, record, run)
    print_doctor(console, setup.prepared, run)
    return run, record


def report_resume_point(console: "Console", run: RunDir, choice: "Choice") -> None:
    """Say where training goes on from and which newer checkpoints were passed over, and why; remove those."""
    from tunelab.train.checkpoints import discard

    for folder, reason in choice.skipped:
        console.print(f"[yellow]skipped[/yellow] {folder}: {reason}; removed")
    discard([folder for folder, _ in choice.skipped])
    if choice.checkpoint is None:
        console.print(f"[yellow]no complete checkpoint[/yellow] in {run.checkpoints}: training again from step 0 "
                      "(same recipe and seed, so the same run)")
    else:
        console.print(f"resuming from {choice.checkpoint}")


def describe(setup: Setup, model: Any) -> dict[str, Any]:
    from tunelab.data.cache import doctor_summary

    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    loaded = setup.prepared.loaded()
    return dict(
        base_model=BaseModelInfo(name=setup.ref.name, kind=setup.ref.kind, path=str(setup.ref.path)),
        started_from=setup.started_from,
        method=MethodInfo(name=setup.method.name, trainable_parameters=trainable, total_parameters=total),
        data=DataInfo(files=[DataFileInfo(**vars(item)) for item in loaded.files], splits=setup.data.counts,
                      doctor=DoctorSummary(**doctor_summary(setup.prepared))),
        device=setup.placement.device, precision=setup.placement.precision, padding_free=setup.data.padding_free,
        task_state=setup.data.state,
    )


@dataclass
class Writing:
    """What a run is writing, and where: a failure names it, and removes it where it was left half-written."""

    what: str
    folder: Path


def fit(setup: Setup, run: RunDir, record: RunRecord, model: Any, console: "Console", callbacks: tuple) -> None:
    """Train with the task's trainer and save the trained model, keeping run.json true to what happened: failed or
    interrupted (a later --resume goes on from the newest complete checkpoint). The trainer, with its optimizer
    state, is gone when this returns; `finish` (merge, completed) comes after the caller has let go of `model`."""
    from tunelab.present.progress import RichProgress
    from tunelab.train.distributed import savable_model
    from tunelab.train.trainer import training_arguments, training_callbacks, training_speed

    recipe, tokenizer = setup.recipe, setup.tokenizer
    writer = setup.rank == 0  # under torchrun the other ranks train, and leave the run folder to rank 0
    writing = Writing("a checkpoint or the training log", run.checkpoints)
    with failure_recorded(run, record, writing, writer):
        arguments = training_arguments(recipe.train, run, setup.placement, setup.data.validation is not None,
                                       setup.world)
        parts = TrainerParts(model, tokenizer, setup.data, arguments,
                             training_callbacks(recipe.train, run, RichProgress(console), callbacks),
                             setup.rewards,
                             training_speed(recipe.train, setup.method.bf16_frozen, setup.placement,
                                            setup.data.padding_free))
        trainer = setup.task.build_trainer(parts)
        checkpoint = setup.resume_from.checkpoint if setup.resume_from else None
        record.training = train_or_restore(trainer, checkpoint)
        trained = savable_model(setup, trainer)  # under FSDP / ZeRO-3 the shards gathered, by every rank
        if writer:
            writing.what, writing.folder = "the trained model", run.model
            setup.method.save(trained, run.model)
            tokenizer.save_pretrained(str(run.model))
        if setup.world.distributed:
            trainer.accelerator.wait_for_everyone()  # the workers' group stays until rank 0 has saved


def finish(setup: Setup, run: RunDir, record: RunRecord, console: "Console") -> None:
    """Rank 0, once training's model and trainer are gone: the merged model when asked, then run.json completed.
    The merge loads a fresh base; done while training's weights, gradients and optimizer state were still held, it
    stacked on them, and that phase was the run's peak (by how much depended on what the allocator kept)."""
    from tunelab.present.console import print_trained
    from tunelab.train.host_memory import handed_back

    if setup.rank != 0:
        return
    recipe, method, tokenizer = setup.recipe, setup.method, setup.tokenizer
    gc.collect()  # the trainer's reference cycles (its optimizer state), before a merge or the evaluation after
    with failure_recorded(run, record, Writing("the merged model", run.merged), writer=True):
        if wants_merge(method, recipe.output.merge):
            with handed_back():  # what training freed, given back first (train/host_memory.py)
                # from what was saved, onto a freshly loaded base: the trained model may hold its frozen weights in
                # bf16 (train/frozen_weights.py), and the merged model is what merging the saved adapter gives
                merged = method.merge(method.load(
                    lambda: setup.task.load_model(setup.ref.path, setup.data, recipe, tokenizer), run.model))
                merged.save_pretrained(str(run.merged))
                del merged
            tokenizer.save_pretrained(str(run.merged))
            record.merged = True
        elif note := no_merge_note(method, recipe.output.merge):
            console.print(f"[dim]{note}[/dim]")
            record.merge_note = note
    record.status, record.ended_at = "completed", now()
    write_record(run, record)
    print_trained(console, record, run)


@contextmanager
def failure_recorded(run: RunDir, record: RunRecord, writing: Writing, writer: bool) -> Iterator[None]:
    """On any failure, rank 0 removes what was left half-written and marks run.json failed (interrupted on a stop);
    a full disk becomes one line naming what was being written and where."""
    try:
        yield
    except BaseException as error:
        if not writer:
            raise
        record.status = "interrupted" if isinstance(error, (KeyboardInterrupt, StopRequested)) else "failed"
        removed, written = record_failure(run, record, error, writing.folder)
        if is_write_failure(error, run):
            raise TunelabError(write_failure_line(error, writing, removed, written)) from error
        raise


def train_or_restore(trainer: Any, checkpoint: Path | None) -> Any:
    """Train (from `checkpoint` on --resume) and return the summary over the whole run. A checkpoint that ends
    training (killed after the last save) is not trained on: the Trainer would take one step more before checking
    (transformers' loop checks max_steps at a step's end), so its weights are loaded and training is over."""
    from transformers import TrainerState

    from tunelab.train.checkpoints import finished_training, saved_clock_seconds, trainer_state
    from tunelab.train.trainer import training_clock, training_summary

    saved = trainer_state(checkpoint) if checkpoint else {}
    resumed_at = saved.get("global_step", 0)
    if checkpoint is None or not finished_training(saved):
        result = trainer.train(resume_from_checkpoint=str(checkpoint) if checkpoint else None)
        return training_summary(trainer, result, resumed_at, training_clock(trainer))
    trainer.state = TrainerState(**saved)  # what TrainerState.load_from_json makes of the same file
    best = trainer.state.best_model_checkpoint
    weights = best if trainer.args.load_best_model_at_end and best and Path(best).is_dir() else str(checkpoint)
    # The Trainer's own loader: it knows every format it saved (adapters, whole models, sharded weights).
    trainer._load_from_checkpoint(weights)
    return training_summary(trainer, None, resumed_at, saved_clock_seconds(saved))


def is_write_failure(error: BaseException, run: RunDir) -> bool:
    """A disk that is full (or over quota, or read-only). safetensors and torch.save report it as their own
    errors (torch.save only as an 'unexpected pos' in its zip writer), not as an OSError, so a failed write that
    does not say why is taken for a full disk when the run's disk has almost no space left."""
    import shutil

    if isinstance(error, OSError):
        return error.errno in (errno.ENOSPC, errno.EDQUOT, errno.EROFS)
    text = str(error)
    if any(sign in text for sign in ("No space left on device", "StorageFull", "Disk quota exceeded")):
        return True
    try:
        nearly_full = shutil.disk_usage(run.root).free < 64 * 2**20
    except OSError:
        nearly_full = False
    return nearly_full and any(sign in text for sign in ("file write failed", "inline_container", "I/O error"))


def write_failure_line(error: BaseException, writing: Writing, removed: list[Path], written: bool) -> str:
    """One line: the OS's reason, the path (the file the OS names, else the folder being written), what was being
    written, what was cleaned up, and how to go on."""
    what, folder = writing.what, writing.folder
    reason = error.strerror if isinstance(error, OSError) and error.strerror else "No space left on device"
    where = getattr(error, "filename", None) or (removed[0] if removed else folder)
    cleaned = f"removed the partial {', '.join(str(path) for path in removed)}; " if removed else ""
    marked = "the run is marked failed" if written else "run.json could not be marked failed either"
    return (f"{reason}: {where} (while writing {what}); {cleaned}{marked}; free some space, then --resume "
            "continues from the last complete checkpoint")


def record_failure(run: RunDir, record: RunRecord, error: BaseException, folder: Path) -> tuple[list[Path], bool]:
    """Remove what the failure left half-written, then say so in run.json: (what was removed, whether run.json
    could be written; not where the disk is still full)."""
    removed = remove_partial(run, folder)
    record.error, record.ended_at = str(error) or type(error).__name__, now()
    try:
        write_record(run, record)
    except OSError:
        return removed, False
    return removed, True


def remove_partial(run: RunDir, folder: Path) -> list[Path]:
    """Checkpoints without a manifest (a save cut short) and the model folder that was being written: each would
    be taken for a whole artefact later (by --resume, serve or export); removing them also frees the space."""
    from tunelab.train.checkpoints import checkpoint_folders, discard, is_committed

    partial = [path for path in checkpoint_folders(run.checkpoints) if not is_committed(path)]
    if folder in (run.model, run.merged) and folder.exists():
        partial.append(folder)
    discard(partial)
    return partial


def evaluate_and_record(run_root: Path, home: Path, console: "Console", device: str = "auto",
                        max_rows: int | None = None, overrides: list[str] = (),
                        base_outputs: Any = None, base_risks: Any = None) -> Evaluation:
    """Evaluate, keep the summary in run.json, print the comparison and the verdict, write report.html."""
    from tunelab.evaluate.evaluator import evaluate_run
    from tunelab.present.console import print_evaluation, verdict_line
    from tunelab.present.eval_report import write_report
    from tunelab.run.models import open_run_models

    models = open_run_models(run_root, home, device)
    recipe = evaluation_recipe(models.record.recipe, overrides, str(models.run.record_path))
    with stage_progress(console) as progress:
        evaluation = evaluate_run(models, recipe, lambda line: console.print(line, markup=False), max_rows,
                                  base_outputs, progress=progress, base_risks=base_risks)
    models.record.evaluation = evaluation.summary()
    write_record(models.run, models.record)
    write_report(models.run)
    print_evaluation(console, evaluation)
    console.print(f"[dim]written {models.run.eval_json}, {models.run.report_html}[/dim]")
    console.print(verdict_line(evaluation.objective))
    return evaluation


def stage_progress(console: "Console") -> Any:
    """Bars for the passes that are not training, on stderr; none where the run's console is quiet."""
    from rich.console import Console

    from tunelab.present.progress import StageProgress

    return StageProgress(Console(stderr=True, quiet=console.quiet))


def evaluation_recipe(recipe: dict, overrides: list[str], source: str) -> "Recipe":
    """The run's recipe with `eval.*` / `objective.*` overrides: what to measure may change, what was trained not."""
    import copy

    from tunelab.config.load import apply_overrides, validate_recipe

    for item in overrides:
        section = item.partition("=")[0].strip().split(".")[0]
        if section not in ("eval", "objective"):
            raise TunelabError(f"command line: '{item}': tunelab eval can change eval.* and objective.* only")
    raw = copy.deepcopy(recipe)
    overridden = apply_overrides(raw, list(overrides))
    return validate_recipe(raw, source=source, overridden=overridden)


# ---- checks before anything is written ------------------------------------------------------------------------


def check_run_dir(root: Path, resume: bool, overwrite: bool,
                  recipe: "Recipe") -> tuple[RunRecord | None, "Choice | None"]:
    """Refuse early what prepare_run_dir would refuse later; on --resume, the run's record and the checkpoint to
    go on from (the newest that verifies; none: the run starts again from step 0, the same seeded run)."""
    from tunelab.train.checkpoints import newest_verified

    run = check_output_dir(root, resume, overwrite)
    if not resume:
        return None, None
    prior = read_record(run)
    check_same_recipe(as_now(prior.recipe), recipe.model_dump(mode="json"))
    return prior, newest_verified(run.checkpoints)


def as_now(recipe: dict[str, Any]) -> dict[str, Any]:
    """A recorded recipe as this tunelab reads it: fields added since it was written take their defaults (so a run
    started by an earlier version resumes), where it still validates; else as recorded."""
    from pydantic import ValidationError

    from tunelab.config.schema import Recipe

    try:
        return Recipe.model_validate(recipe).model_dump(mode="json")
    except ValidationError:
        return recipe


def check_same_recipe(before: dict[str, Any], after: dict[str, Any], path: str = "") -> None:
    for key in sorted(set(before) | set(after)):
        if not path and key in RESUMABLE_CHANGES:
            continue
        old, new = before.get(key), after.get(key)
        if isinstance(old, dict) and isinstance(new, dict):
            check_same_recipe(old, new, f"{path}{key}.")
        elif old != new:
            raise TunelabError(
                f"--resume: the recipe changed since the run started ({path}{key}: {old!r} -> {new!r}); "
                "resume with the same recipe or start a new run"
            )


def check_same_data(prior: RunRecord, prepared: "Prepared") -> None:
    before = {item.role: item.sha256 for item in prior.data.files}
    for item in prepared.loaded().files:
        if before.get(item.role) not in (None, item.sha256):
            raise TunelabError(f"--resume: {item.path} changed since the run started (sha256 differs)")


def check_trainable(recipe: "Recipe", data: TaskData) -> None:
    train = data.counts["train"]
    if train.kept == 0:
        raise TunelabError(f"no training rows left: all {train.dropped_overlong} are longer than data.max_length="
                           f"{recipe.data.max_length}; raise it or set data.overlong: truncate")
    if recipe.train.early_stopping_patience and data.validation is None:
        raise TunelabError("train.early_stopping_patience needs validation rows (data.validation or data.split)")


def check_evaluation(task: Task, recipe: "Recipe", data: TaskData, tokenizer: Any,
                     rewards: "RewardContext | None" = None) -> None:
    """What the evaluation after training would refuse (metrics that do not fit, a missing probe file, an
    objective without test rows) is refused now, before the training it would come after."""
    from tunelab.evaluate.forgetting import load_probe

    test, measure = data.splits.test, "perplexity"
    if test and (recipe.eval.after_train or recipe.objective is not None):
        measure = task.evaluation(recipe, test, data.state, tokenizer, "test split", rewards).forgetting_measure
    elif recipe.objective is not None:
        raise TunelabError("objective: needs test rows to be checked on (data.test or data.split.test > 0)")
    load_probe(recipe.eval.forgetting, measure)

