"""A candidate run against the version in service: is the new model not worse than the one users have now?

Gated retraining promotes a candidate only when its own objective holds (its eval.json, base vs tuned) and it is not
worse than the incumbent: the run in service on the same base model, or the base model itself. Both answer the same
rows the same way (the candidate recipe's task evaluation), one model in memory at a time, and the evaluator's
`score` compares them with the incumbent in the base's seat, so the paired bootstrap intervals of the change, the
flips and the forgetting figure (the candidate's probes against the incumbent's) are the same code as base vs tuned.
`not_worse_check` is the pure verdict on the change.

Writes, in the folder given (default <candidate>/eval/versus-<label>/, never the run's own eval.json):
comparison.json (the comparison and the full scoring), examples.jsonl (every row with both answers, keys named
incumbent_* and candidate_*), outputs-incumbent.json and outputs-candidate.json (raw outputs, for reuse).
"""

from __future__ import annotations

import dataclasses
import hashlib
import math
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

from tunelab.errors import TunelabError
from tunelab.evaluate.outputs import ModelOutputs, load_outputs, save_outputs
from tunelab.evaluate.steps import Progress, Steps
from tunelab.files import write_json, write_jsonl
from tunelab.metrics.registry import METRICS
from tunelab.present.format import format_change, format_interval
from tunelab.run.record import Check, Evaluation, Forgetting

if TYPE_CHECKING:
    from tunelab.data.formats import Example
    from tunelab.run.models import RunModels

IN_SERVICE_BASE = "base"  # Comparison.incumbent_name when the base model itself is in service
SEATS = {"base": "incumbent", "tuned": "candidate"}  # the evaluator's names -> this comparison's


@dataclass
class Comparison:
    """The candidate against the incumbent on `rows` rows: `change` is candidate - incumbent in the metric's units
    (for loss, a negative change is an improvement), `interval` its paired bootstrap interval (None: eval.bootstrap
    0)."""

    metric: str
    candidate: float
    incumbent: float
    change: float
    interval: list[float] | None
    forgetting: Forgetting | None  # the candidate's probes relative to the incumbent's; None: probes disabled
    rows: int
    label: str
    not_worse: Check
    incumbent_name: str  # the incumbent run's folder, or "base" (the candidate's base model is in service)
    folder: Path  # where the comparison's files are
    evaluation: Evaluation  # every metric, with base = the incumbent and tuned = the candidate

    def to_json(self) -> dict[str, Any]:
        return {"metric": self.metric, "candidate": self.candidate, "incumbent": self.incumbent,
                "change": self.change, "interval": self.interval,
                "forgetting": self.forgetting.model_dump(mode="json") if self.forgetting else None,
                "rows": self.rows, "label": self.label, "not_worse": self.not_worse.model_dump(mode="json"),
                "incumbent_name": self.incumbent_name, "folder": str(self.folder)}


def not_worse_check(metric: str, change: float, interval: list[float] | None,
                    max_regression: float = 0.0) -> Check:
    """Candidate - incumbent `change` (and its interval) judged: worse when the interval lies entirely on the losing
    side (significantly worse) or the change loses more than `max_regression` (in the metric's units, as a gain:
    0.02 = two points of a rate, or 0.02 more loss). A metric that is shown, not judged, never fails."""
    higher = METRICS[metric].higher_is_better if metric in METRICS else True
    gain = change if higher else -change  # in "bigger is better" terms, as the gate's checks
    shown = f"{metric} change vs in service {format_change(metric, change)}"
    if interval:
        shown += f" {format_interval(metric, interval, signed=True)}"
    if metric in METRICS and not METRICS[metric].judged:
        return Check(check="not_worse", ok=True, required=None, actual=None,
                     text=f"{shown}: {metric} is shown, not judged")
    if change is None or math.isnan(change):
        return Check(check="not_worse", ok=False, required=-max_regression, actual=None,
                     text=f"{shown}: cannot be compared")
    if interval and (interval[1] < 0 if higher else interval[0] > 0):
        return Check(check="not_worse", ok=False, required=-max_regression, actual=gain,
                     text=f"{shown} is significantly worse")
    if gain < -max_regression:
        allowed = format_change(metric, max_regression).lstrip("+")
        return Check(check="not_worse", ok=False, required=-max_regression, actual=gain,
                     text=f"{shown} loses more than max_regression {allowed}")
    return Check(check="not_worse", ok=True, required=-max_regression, actual=gain, text=f"{shown} is not worse")


def compare_to_incumbent(candidate: "RunModels", incumbent: "RunModels | None", rows: "list[Example] | None",
                         say: Callable[[str], None], max_rows: int | None = None, label: str = "test",
                         folder: Path | None = None, max_regression: float = 0.0,
                         incumbent_outputs: ModelOutputs | None = None,
                         progress: Progress | None = None) -> Comparison:
    """The candidate run against the incumbent (None: the candidate's base model) on `rows` (None: the candidate's
    test split), answered the way the candidate's recipe evaluates. `incumbent_outputs` (outputs-incumbent.json of
    an earlier comparison) is reused where it answered the same rows the same way."""
    from tunelab.data.dataset import read_splits
    from tunelab.evaluate import forgetting
    from tunelab.evaluate.evaluator import collect, fingerprint, score, speed_text
    from tunelab.rewards.build import RewardContext
    from tunelab.tasks.registry import get_task

    check_comparable(candidate, incumbent)
    folder = check_folder(candidate, folder, label)
    recipe, steps = candidate.recipe, Steps(progress, "versus")
    given = rows if rows is not None else read_splits(candidate.run.data).test
    test = given[: max_rows or recipe.eval.max_rows]
    task = get_task(recipe.task.name)
    tokenizer = candidate.tokenizer()
    source = str(candidate.run.root) if rows is None else f"{label} rows"
    spec = task.evaluation(recipe, test, candidate.record.task_state, tokenizer, source,
                           RewardContext(candidate.home, candidate.placement))
    probe = forgetting.load_probe(recipe.eval.forgetting, spec.forgetting_measure)
    name = IN_SERVICE_BASE if incumbent is None else str(incumbent.run.root)
    say(f"versus {name}: {spec.plan.rows} {label} rows, {spec.decoding['strategy']}; judged by "
        f"{spec.plan.primary}")
    print_of = fingerprint(candidate, recipe, spec)
    seat_print = incumbent_print(print_of, incumbent)
    reused = incumbent_outputs if incumbent_outputs is not None else (
        earlier_base(candidate) if incumbent is None else None)
    outputs: dict[str, ModelOutputs] = {}
    if reused is not None and reused.fingerprint == seat_print:
        outputs["base"] = reused
        say("  in service: the same rows, answers and probes as an earlier evaluation; its outputs are reused")
    else:
        steps.begin(f"in service ({name}): {spec.plan.rows} rows")
        load, own_tokenizer = incumbent_loader(candidate, incumbent, tokenizer)
        outputs["base"] = collect(load, own_tokenizer, spec, recipe, probe, candidate.placement, None)
        outputs["base"].fingerprint = seat_print
        say(f"  in service: {speed_text(outputs['base'].speed)}")
    steps.begin(f"candidate: {spec.plan.rows} rows")
    outputs["tuned"] = collect(candidate.inference().load_tuned, tokenizer, spec, recipe, probe, candidate.placement,
                               outputs["base"].prompt_answers)
    outputs["tuned"].fingerprint = print_of
    say(f"  candidate: {speed_text(outputs['tuned'].speed)}")
    steps.begin("scoring")
    lengths = [len(tokenizer(text, add_special_tokens=False)["input_ids"]) for text in spec.plan.references]
    # No objective here: the candidate's objective is judged against its base in its own evaluation.
    evaluation, examples = score(task.name, spec, outputs, recipe.eval, None, probe, lengths)
    steps.begin(None)
    comparison = comparison_of(evaluation, label, name, folder, max_regression)
    write_comparison(comparison, outputs, examples)
    say(f"  {comparison.not_worse.text}")
    return comparison


def check_comparable(candidate: "RunModels", incumbent: "RunModels | None") -> None:
    """Two runs of one task on one base model (one line each way it fails)."""
    from tunelab.serve.registry import same_model

    if incumbent is None:
        return
    where = f"{incumbent.run.root} (in service) vs {candidate.run.root} (candidate)"
    if incumbent.recipe.task.name != candidate.recipe.task.name:
        raise TunelabError(f"{where}: a {incumbent.recipe.task.name} run and a {candidate.recipe.task.name} run; "
                           "only runs of the same task answer the same rows alike")
    if not same_model(incumbent.base_path(), candidate.base_path()):
        raise TunelabError(f"{where}: different base models ({incumbent.base_name()} and {candidate.base_name()}); "
                           "a candidate replaces a version of the same base model")
    labels = [models.record.task_state.get("labels") for models in (incumbent, candidate)]
    if labels[0] != labels[1]:  # a classifier's head answers by class index: other classes are another model
        raise TunelabError(f"{where}: different classes ({labels[0]} and {labels[1]})")


def check_folder(candidate: "RunModels", folder: Path | None, label: str) -> Path:
    """The comparison's own folder: never the run folder or its eval/ (their files are the run's evaluation)."""
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]*", label):
        raise TunelabError(f"versus label '{label}': use letters, digits, '.', '_' or '-' (it names a folder)")
    folder = Path(folder) if folder is not None else candidate.run.versus_dir(label)
    taken = {os.path.realpath(path) for path in (candidate.run.root, candidate.run.eval_dir)}
    if os.path.realpath(folder) in taken:
        raise TunelabError(f"{folder}: holds the run's own evaluation; give the comparison a folder of its own")
    return folder


def incumbent_print(candidate_print: str, incumbent: "RunModels | None") -> str:
    """What the incumbent's outputs depend on: the rows and decoding (the candidate's fingerprint) and which model
    answered; with the base model in service, the evaluator's own fingerprint, so the candidate's eval/ base outputs
    are reused."""
    if incumbent is None:
        return candidate_print
    model = f"{os.path.realpath(incumbent.run.root)}|{incumbent.record.started_at}|{incumbent.record.ended_at}"
    return hashlib.sha256(f"{candidate_print}|{model}".encode("utf-8")).hexdigest()


def earlier_base(candidate: "RunModels") -> ModelOutputs | None:
    return load_outputs(candidate.run.model_outputs("base"))


def incumbent_loader(candidate: "RunModels", incumbent: "RunModels | None",
                     tokenizer: Any) -> tuple[Callable[[], Any], Any]:
    """How the model in service loads, and the tokenizer it is served with. An incumbent run is placed as the
    candidate is (same device and precision: the same decoding) and answers with its own tokenizer, as the server
    holds each model with its own (its chat template may differ)."""
    if incumbent is None:
        return candidate.inference().load_base, tokenizer
    placed = dataclasses.replace(incumbent, placement=candidate.placement)
    return placed.inference().load_tuned, placed.tokenizer()


def comparison_of(evaluation: Evaluation, label: str, name: str, folder: Path, max_regression: float) -> Comparison:
    metric = evaluation.primary_metric
    interval = evaluation.intervals.delta.get(metric) if evaluation.intervals else None
    change = evaluation.delta[metric]
    return Comparison(metric=metric, candidate=evaluation.tuned[metric], incumbent=evaluation.base[metric],
                      change=change, interval=interval, forgetting=evaluation.forgetting, rows=evaluation.rows,
                      label=label, not_worse=not_worse_check(metric, change, interval, max_regression),
                      incumbent_name=name, folder=folder, evaluation=evaluation)


def write_comparison(comparison: Comparison, outputs: dict[str, ModelOutputs], examples: list[dict]) -> None:
    folder = comparison.folder
    folder.mkdir(parents=True, exist_ok=True)
    for seat, name in SEATS.items():
        save_outputs(folder / f"outputs-{name}.json", outputs[seat])
    write_jsonl(folder / "examples.jsonl", [in_service_terms(row) for row in examples])
    write_json(folder / "comparison.json", {**comparison.to_json(), "seats": SEATS,
                                            "evaluation": comparison.evaluation.model_dump(mode="json")})


def in_service_terms(row: dict[str, Any]) -> dict[str, Any]:
    """An evaluator example row with base/tuned named incumbent/candidate (base_loss -> incumbent_loss, a win by
    'tuned' -> 'candidate'); a flip keeps its name: 'fixed' is right by the candidate only."""
    renamed = {}
    for key, value in row.items():
        head, _, rest = key.partition("_")
        if head in SEATS:
            key = SEATS[head] + (f"_{rest}" if rest else "")
        renamed[key] = SEATS.get(value, value) if key == "win" else value
    return renamed
