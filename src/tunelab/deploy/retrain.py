"""Gated retraining: a new version of a name in service, trained on the data of the version it would replace plus
what came since (new files, users' feedback), and promoted only when it is not worse than that version.

  plan      the version in service -> its run's recipe and prepared splits; the training rows: its train split + the
            new files + the feedback (exported through the data doctor: monitor/feedback_export.py), less a held-out
            slice of the feedback; validation and test: its own splits, unchanged, so the comparison is on the rows
            that judged it
  enqueue   one job of the job service (jobs.sqlite), visible and cancellable through /v1/fine_tuning/jobs; a worker
            (`tunelab serve --jobs`, `tunelab worker`) runs it through the normal lifecycle
  gate      when the job's run has succeeded: the candidate and the version in service answer the original test
            split and the feedback slice, same decoding, paired intervals, forgetting probe
            (evaluate/versus.py); promoted only when the recipe's objective holds and it is not worse on either,
            else kept as a candidate with the reason (deploy/versions.py)
"""

from __future__ import annotations

import json
import random
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from tunelab.data.formats import Example, canonical_row
from tunelab.deploy import versions
from tunelab.errors import TunelabError
from tunelab.files import read_jsonl, write_jsonl

FOLDER = "retrain"  # in the serve folder: one subfolder per retrain, its rows and feedback slice
# What feedback becomes (feedback_export's formats) for a task that trains on rows of this kind (Task.row_kinds)
FEEDBACK_FORMAT = {"chat": "sft", "preference": "dpo", "feedback": "kto"}
MIN_FEEDBACK_HOLDOUT = 4  # below this many feedback rows all of them train, and no feedback slice is compared


@dataclass
class RetrainPlan:
    name: str
    incumbent: versions.Version
    folder: Path  # <serve>/retrain/<name>-<time>/
    recipe: dict[str, Any]  # without output.dir: the job sets it
    task: str
    train_file: Path  # the rows to train on
    feedback_test: Path | None  # the held-out feedback slice, as Example rows
    counts: dict[str, int] = field(default_factory=dict)  # original, new, feedback_train, feedback_test
    max_regression: float = 0.0  # how much worse than the version in service the gate lets pass (metric units)

    def describe(self) -> str:
        counts = self.counts
        parts = [f"{counts.get('original', 0)} rows of {self.incumbent.label}'s training data"]
        if counts.get("new"):
            parts.append(f"{counts['new']} new rows")
        if counts.get("feedback_train") or counts.get("feedback_test"):
            parts.append(f"{counts.get('feedback_train', 0)} feedback rows ({counts.get('feedback_test', 0)} more "
                         "held out to judge it)")
        return f"Retrain of {self.name}: " + " + ".join(parts)


def plan_retrain(serve_dir: Path, name: str, home: Path, recipe_path: Path | None = None,
                 with_feedback: bool = False, new_files: tuple[Path, ...] = (), holdout: float = 0.3,
                 seed: int = 0, max_regression: float = 0.0) -> RetrainPlan:
    """Write the retrain's rows under `<serve>/retrain/` and build its recipe; refuse (TunelabError) before
    writing anything when it cannot be done."""
    from tunelab.config.load import load_recipe, validate_recipe
    from tunelab.data.dataset import read_splits
    from tunelab.run.record import open_run
    from tunelab.tasks.registry import get_task

    incumbent = versions.current(serve_dir, name)
    if incumbent is None:
        raise TunelabError(f"--model {name}: not a name in service in {serve_dir} (`tunelab promote {name} RUN` "
                           "records one)")
    run, record = open_run(incumbent.run_dir)
    recipe = load_recipe(recipe_path) if recipe_path else validate_recipe(record.recipe, source=str(run.record_path))
    task = recipe.task.name
    for path in new_files:
        if not Path(path).is_file():
            raise TunelabError(f"--data {path}: file not found")
    if with_feedback and feedback_format(task) is None:
        raise TunelabError(f"--with-feedback: task '{task}' does not learn from feedback rows (it trains on "
                           f"{' and '.join(get_task(task).row_kinds)} rows; feedback gives "
                           f"{', '.join(FEEDBACK_FORMAT)} rows)")
    splits = read_splits(run.data)
    if not splits.train:
        raise TunelabError(f"{incumbent.run_dir}: {incumbent.label}'s run keeps no training split in {run.data}")
    folder = Path(serve_dir) / FOLDER / f"{name}-{time.strftime('%Y%m%d-%H%M%S')}-{random.randrange(1 << 16):04x}"
    folder.mkdir(parents=True)
    try:
        built, train_file, feedback_test, counts = write_rows(serve_dir, name, recipe, splits, folder, new_files,
                                                             with_feedback, holdout, seed)
    except BaseException:
        shutil.rmtree(folder, ignore_errors=True)  # a refused retrain leaves nothing behind
        raise
    return RetrainPlan(name, incumbent, folder, built, task, train_file, feedback_test, counts, max_regression)


def write_rows(serve_dir: Path, name: str, recipe: Any, splits: Any, folder: Path, new_files: tuple[Path, ...],
               with_feedback: bool, holdout: float, seed: int) -> tuple[dict[str, Any], Path, Path | None,
                                                                         dict[str, int]]:
    """The retrain's files in `folder` (train rows, kept splits, feedback slice) and its recipe as data."""
    task = recipe.task.name
    rows = [canonical_row(example) for example in splits.train]
    counts = {"original": len(rows)}
    new = [row for path in new_files for row in new_rows(Path(path), recipe)]
    counts["new"] = len(new)
    feedback_test: Path | None = None
    if with_feedback:
        train_part, test_part = feedback_rows(serve_dir, name, feedback_format(task), folder, holdout, seed)
        counts.update(feedback_train=len(train_part), feedback_test=len(test_part))
        rows += [canonical_row(example) for example in train_part]
        if test_part:
            feedback_test = folder / "feedback_test.jsonl"
            write_jsonl(feedback_test, [example.to_json() for example in test_part])
    train_file = folder / "train.jsonl"
    write_jsonl(train_file, rows + new)
    splits_kept = {}
    for split in ("validation", "test"):
        examples = getattr(splits, split)
        if examples:
            splits_kept[split] = str(folder / f"{split}.jsonl")
            write_jsonl(Path(splits_kept[split]), [canonical_row(example) for example in examples])
    data = recipe.data.model_dump(mode="json")
    data.update(train=str(train_file), generate=None, validation=splits_kept.get("validation"),
                test=splits_kept.get("test"), format="auto", fields={}, file_type="auto", columns=None,
                # the train split already holds the augmented copies the first run made
                augment={})
    data["split"] = {**data["split"], "validation": 0.0 if "validation" in splits_kept else data["split"]["validation"],
                     "test": 0.0 if "test" in splits_kept else data["split"]["test"]}
    built = recipe.model_dump(mode="json")
    built["data"] = data
    built.pop("output", None)
    return built, train_file, feedback_test, counts


def feedback_format(task: str) -> str | None:
    """The feedback export format of the first row kind `task` trains on that feedback gives; None: none."""
    from tunelab.tasks.registry import get_task

    return next((FEEDBACK_FORMAT[kind] for kind in get_task(task).row_kinds if kind in FEEDBACK_FORMAT), None)


def new_rows(path: Path, recipe: Any) -> list[dict[str, Any]]:
    """A new data file's rows, read as the data doctor reads them (any format it knows), in canonical fields."""
    from tunelab.data.formats import parse_items
    from tunelab.data.readers import read_records

    items = read_records(path, recipe.data.file_type, recipe.data.columns)
    examples, bad = parse_items(items, "auto", {}, recipe.data.system_prompt)
    if bad:
        raise TunelabError(f"--data {path}:{bad[0].line}: {bad[0].reason}")
    if not examples:
        raise TunelabError(f"--data {path}: holds no rows")
    return [canonical_row(example) for example in examples]


def feedback_rows(serve_dir: Path, name: str, fmt: str, folder: Path, holdout: float,
                  seed: int) -> tuple[list[Example], list[Example]]:
    """(train, held out) rows from the feedback on `name`'s answers, through feedback_export's data doctor."""
    from tunelab.monitor.feedback_export import export_feedback

    examples = export_feedback(serve_dir, name, fmt, folder / f"feedback-{fmt}.jsonl").examples
    order = list(range(len(examples)))
    random.Random(seed).shuffle(order)
    held = round(len(examples) * holdout) if len(examples) >= MIN_FEEDBACK_HOLDOUT else 0
    held = max(1, held) if holdout > 0 and len(examples) >= MIN_FEEDBACK_HOLDOUT else held
    test = [examples[index] for index in sorted(order[:held])]
    train = [examples[index] for index in sorted(order[held:])]
    return train, test


def enqueue(serve_dir: Path, plan: RetrainPlan, trigger: str, max_waiting: int = 16) -> str:
    """Queue the retrain as a job of the job service; its id."""
    from tunelab.config.load import validate_recipe
    from tunelab.jobs.db import connect, new_id
    from tunelab.jobs.files import store
    from tunelab.jobs.queue import insert_job
    from tunelab.jobs.recipe import TASKS
    from tunelab.serve.errors import APIError

    serve_dir = Path(serve_dir).resolve()
    content = plan.train_file.read_bytes()
    try:
        stored = store(serve_dir, f"retrain-{plan.name}.jsonl", "fine-tune", content, len(content))
    except APIError as error:
        raise TunelabError(f"{plan.train_file}: {error.message}") from None
    job_id = new_id("ftjob-")
    recipe = {**plan.recipe, "output": {"dir": str(serve_dir / "jobs" / job_id / "run")}}
    recipe["data"] = {**recipe["data"], "train": str(serve_dir / stored.path)}
    validate_recipe(recipe, source=f"the retrain of {plan.name}")
    train = recipe.get("train", {})
    hyperparameters = {"n_epochs": train.get("epochs"), "batch_size": train.get("batch_size"),
                       "learning_rate_multiplier": 1.0}
    method = next((kind for kind, task in TASKS.items() if task == plan.task), "supervised")
    request = {"model": plan.name, "training_file": stored.id, "method": {"type": method},
               "suffix": "retrain", "metadata": {"retrain_of": plan.incumbent.label, "trigger": trigger[:500]},
               "retrain": {"name": plan.name, "incumbent": plan.incumbent.number, "folder": str(plan.folder),
                           "feedback_test": str(plan.feedback_test) if plan.feedback_test else None,
                           "counts": plan.counts, "trigger": trigger, "max_regression": plan.max_regression}}
    connection = connect(serve_dir)
    try:
        insert_job(connection, job_id, plan.name, stored.id, None, "retrain", int(train.get("seed", 42)),
                   json.dumps(request), recipe, hyperparameters, max_waiting,
                   f"{plan.describe()}; trigger: {trigger}")
    except APIError as error:
        raise TunelabError(error.message) from None
    finally:
        connection.close()
    return job_id


def retrain_info(job: Any) -> dict[str, Any] | None:
    """The retrain a job is, from its request; None for a client's job."""
    return json.loads(job["request"]).get("retrain")


@dataclass
class Decision:
    promoted: bool
    version: versions.Version
    reasons: list[str]  # why it was not promoted; empty when it was
    comparisons: list[dict[str, Any]]  # evaluate/versus.py Comparison.to_json of each slice

    def to_json(self) -> dict[str, Any]:
        return {"promoted": self.promoted, "name": self.version.name, "version": self.version.number,
                "reasons": self.reasons, "comparisons": self.comparisons}


def gate(serve_dir: Path, job_id: str, info: dict[str, Any], run_root: Path, evaluation: Any, home: Path,
         device: str, say: Callable[[str], None]) -> Decision:
    """Judge a retrain's finished run against the version in service now, record it as a version, and promote it
    only when its objective holds and it is not worse on the original test split and on the held-out feedback."""
    from tunelab.evaluate.versus import compare_to_incumbent
    from tunelab.run.models import open_run_models

    name = info["name"]
    incumbent = versions.current(serve_dir, name)
    if incumbent is not None and incumbent.number != info.get("incumbent"):
        say(f"{name} changed since the retrain was queued: v{info.get('incumbent')} then, {incumbent.label} now; "
            f"the candidate is compared with {incumbent.label}")
    candidate = open_run_models(run_root, home, device)
    against = open_run_models(incumbent.run_dir, home, device) if incumbent is not None else None
    against_label = incumbent.label if incumbent is not None else "the base model"
    max_regression = float(info.get("max_regression") or 0.0)
    slices: list[tuple[str, list[Example] | None]] = [("test", None)]
    if info.get("feedback_test"):
        slices.append(("feedback", [Example.from_json(row) for row in read_jsonl(Path(info["feedback_test"]))]))
    reasons, comparisons = [], []
    objective = evaluation.objective if evaluation is not None else None
    if evaluation is None:
        reasons.append("the run was not evaluated")
    elif objective is not None and not objective.met:
        reasons.append(f"objective not met: {objective.summary}")
    for label, rows in slices:
        comparison = compare_to_incumbent(candidate, against, rows, lambda _: None, label=label,
                                          max_regression=max_regression)
        comparisons.append(comparison.to_json())
        say(f"Compared with {against_label} on {comparison.rows} {slice_name(label)} rows, same decoding: "
            f"{comparison.not_worse.text}")
        if not comparison.not_worse.ok:
            reasons.append(f"{slice_name(label)}: {comparison.not_worse.text}")
        limit = candidate.recipe.objective.max_forgetting if candidate.recipe.objective is not None else None
        if limit is not None and comparison.forgetting is not None and comparison.forgetting.value > limit:
            reasons.append(f"{slice_name(label)}: forgetting against {against_label} "
                           f"{comparison.forgetting.value:.1%} > max_forgetting {limit:.0%}")
    first = comparisons[0]
    metrics = {"vs_serving": {"against": against_label, "metric": first["metric"], "change": first["change"],
                              "interval": first["interval"], "rows": first["rows"]},
               "vs_serving_by_slice": {entry["label"]: {key: entry[key] for key in
                                                        ("metric", "candidate", "incumbent", "change", "interval",
                                                         "rows")} for entry in comparisons}}
    version = versions.record(serve_dir, name, run_root, metrics=metrics, job_id=job_id)
    if reasons:
        versions.reject(serve_dir, name, version.number, "; ".join(reasons))
        version = versions.find(serve_dir, name, str(version.number))
        return Decision(False, version, reasons, comparisons)
    version = versions.promote(serve_dir, name, version.number, by=f"retrain job {job_id}",
                               reason=f"not worse than {against_label}; objective "
                                      f"{'met' if objective is not None else 'not set'}")
    return Decision(True, version, [], comparisons)


def slice_name(label: str) -> str:
    return {"test": "original test split", "feedback": "held-out feedback"}.get(label, label)


def busy(serve_dir: Path, name: str) -> str | None:
    """The id of a retrain of `name` waiting or running, if there is one (a second would only queue behind it)."""
    from contextlib import closing

    from tunelab.jobs.db import connect, database_path

    if not database_path(serve_dir).is_file():
        return None
    with closing(connect(serve_dir)) as connection:
        rows = connection.execute("SELECT id, request FROM jobs WHERE model = ? AND status IN ('validating_files', "
                                  "'queued', 'running', 'paused') ORDER BY seq", (name,)).fetchall()
    return next((row["id"] for row in rows if json.loads(row["request"]).get("retrain")), None)


@dataclass
class Schedule:
    """When `tunelab retrain --every/--on-flag` queues a retrain: every `every_s` seconds, and when `flagged`
    names a flagged score (checked every `check_s`), at most once per `cooldown_s` for flags, never while a retrain
    of the name waits or runs."""

    every_s: float | None
    check_s: float
    cooldown_s: float
    flagged: Callable[[], list[str]] | None = None


def run_schedule(serve_dir: Path, name: str, schedule: Schedule, queue_one: Callable[[str], str],
                 say: Callable[[str], None], should_stop: Callable[[], bool] = lambda: False,
                 clock: Callable[[], float] = time.time, sleep: Callable[[float], None] = time.sleep) -> None:
    """Queue retrains of `name` as `schedule` says until `should_stop`; `queue_one(trigger)` plans and queues one."""
    start = clock()
    next_at = start + schedule.every_s if schedule.every_s else None
    last_flag_at: float | None = None
    while not should_stop():
        now = clock()
        trigger = None
        if next_at is not None and now >= next_at:
            trigger = f"schedule (every {schedule.every_s:.0f} s)"
            while next_at <= now:
                next_at += schedule.every_s
        elif schedule.flagged is not None and (last_flag_at is None or now - last_flag_at >= schedule.cooldown_s):
            flags = schedule.flagged()
            if flags:
                trigger = "flagged: " + ", ".join(flags)
                last_flag_at = now
        if trigger is not None:
            running = busy(serve_dir, name)
            if running:
                say(f"{trigger}: a retrain of {name} is already waiting or running ({running}); not queued")
            else:
                try:
                    say(f"{trigger}: queued retrain job {queue_one(trigger)}")
                except TunelabError as error:  # e.g. no feedback yet: said, and tried again next time
                    say(f"{trigger}: no retrain queued: {error}")
        sleep(schedule.check_s)
