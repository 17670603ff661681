"""Runs at a glance: `tunelab runs` (one line per run) and `tunelab runs compare A B`.

Everything here reads the run folder only (run.json, eval.json, eval/examples.jsonl) through the typed readers of
record.py; no model is loaded.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tunelab.errors import TunelabError
from tunelab.files import read_jsonl, sha256_file
from tunelab.run.folder import RunDir
from tunelab.run.record import RunRecord, open_run, raw_record, read_evaluation, read_record


@dataclass
class RunSummary:
    path: Path
    status: str
    started_at: str | None
    task: str | None = None
    model: str | None = None
    method: str | None = None
    steps: int | None = None
    primary: str | None = None
    base: float | None = None
    tuned: float | None = None
    interval: list[float] | None = None  # of tuned - base
    forgetting: float | None = None
    verdict: bool | None = None  # None: no objective or not evaluated
    note: str = ""


def find_runs(folder: Path) -> list[Path]:
    """`folder` itself if it is a run, else the runs directly inside it, oldest first."""
    if not folder.is_dir():
        raise TunelabError(f"{folder}: no such folder")
    if RunDir(folder).is_run():
        return [folder]
    runs = [child for child in folder.iterdir() if child.is_dir() and RunDir(child).is_run()]
    return sorted(runs, key=lambda path: (started_at(path) or "", path.name))


def started_at(path: Path) -> str | None:
    try:
        return raw_record(RunDir(path)).get("started_at")
    except (TunelabError, OSError):
        return None


def summarize_run(path: Path) -> RunSummary:
    """One line of `tunelab runs`. A folder that cannot be read as a run is listed with a note rather than read."""
    run = RunDir(path)
    try:
        record = read_record(run)
    except TunelabError as error:
        return RunSummary(path, "unreadable", started_at(path), note=str(error).removeprefix(f"{path}: "))
    summary = RunSummary(path, record.status, record.started_at, record.task, record.base_model.name,
                         record.method.name, record.training.steps if record.training else None)
    evaluation = record.evaluation
    if evaluation is not None:
        primary = evaluation.primary_metric
        summary.primary, summary.base, summary.tuned = primary, evaluation.base[primary], evaluation.tuned[primary]
        summary.interval = (evaluation.delta_intervals or {}).get(primary)
        summary.forgetting = evaluation.forgetting.value if evaluation.forgetting else None
        summary.verdict = evaluation.objective.met if evaluation.objective else None
    return summary


def flatten(value: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(value, dict):
        flat: dict[str, Any] = {}
        for key, inner in value.items():
            flat.update(flatten(inner, f"{prefix}{key}."))
        return flat
    return {prefix[:-1]: value}


def recipe_differences(first: dict[str, Any], second: dict[str, Any]) -> list[tuple[str, Any, Any]]:
    """Dotted recipe keys whose values differ between two runs (output.dir aside)."""
    a, b = flatten(first), flatten(second)
    keys = sorted(set(a) | set(b))
    return [(key, a.get(key), b.get(key)) for key in keys if a.get(key) != b.get(key) and key != "output.dir"]


def same_test_rows(first: RunDir, second: RunDir) -> bool:
    paths = [run.data / "test.jsonl" for run in (first, second)]
    return all(path.is_file() for path in paths) and sha256_file(paths[0]) == sha256_file(paths[1])


def compare_runs(first_path: Path, second_path: Path, resamples: int = 1000, confidence: float = 0.95,
                 seed: int = 0) -> dict[str, Any]:
    """Two runs side by side: recipe differences, each tuned metric in A and B with B - A, and where both were
    evaluated on the same test rows, a paired bootstrap interval of B - A from their saved answers."""
    (first, first_record), (second, second_record) = open_run(first_path), open_run(second_path)
    evaluations = [read_evaluation(run) for run in (first, second)]
    for run, evaluation in zip((first, second), evaluations):
        if evaluation is None:
            raise TunelabError(f"{run.root}: not evaluated yet; run `tunelab eval {run.root}` first")
    shared = [name for name in evaluations[0].metrics if name in evaluations[1].metrics]
    paired = same_test_rows(first, second)
    intervals = paired_run_intervals(first, second, shared, resamples, confidence, seed) if paired else {}
    rows = [{"metric": name, "a": evaluations[0].tuned[name], "b": evaluations[1].tuned[name],
             "difference": evaluations[1].tuned[name] - evaluations[0].tuned[name],
             "interval": intervals.get(name)} for name in shared]
    return {
        "a": str(first.root), "b": str(second.root), "same_test_rows": paired, "metrics": rows,
        "recipe": recipe_differences(first_record.recipe, second_record.recipe),
        "facts": run_facts([first_record, second_record], evaluations),
    }


def run_facts(records: list[RunRecord], evaluations: list[Any]) -> list[tuple[str, Any, Any]]:
    def facts(record: RunRecord, evaluation: Any) -> dict[str, Any]:
        training, verdict = record.training, evaluation.objective
        return {
            "task": record.task, "status": record.status, "steps": training.steps if training else None,
            "tokens seen": training.tokens_seen if training else None,
            "train seconds": training.train_runtime_seconds if training else None,
            "train tokens/s": training.train_tokens_per_second if training else None,
            "best validation loss": (training.best_eval_loss or training.final_eval_loss) if training else None,
            "test rows": evaluation.rows,
            "forgetting": None if evaluation.forgetting is None else f"{100 * evaluation.forgetting.value:+.1f}%",
            "objective": None if verdict is None else ("met" if verdict.met else "not met"),
        }

    first, second = (facts(record, evaluation) for record, evaluation in zip(records, evaluations))
    return [(key, first[key], second[key]) for key in first]


def paired_run_intervals(first: RunDir, second: RunDir, names: list[str], resamples: int, confidence: float,
                         seed: int) -> dict[str, list[float]]:
    """Interval of B - A for each metric, recomputed from both runs' saved tuned answers on the same rows."""
    from tunelab.evaluate.bootstrap import percentile_interval, resample_weights, resampled_scores
    from tunelab.metrics import registry

    if not resamples or not (first.eval_examples.is_file() and second.eval_examples.is_file()):
        return {}
    examples = [read_jsonl(run.eval_examples) for run in (first, second)]
    references = [row["reference"] for row in examples[0]]
    if references != [row["reference"] for row in examples[1]]:
        return {}
    labels = registry.class_labels(references)

    def inputs(rows: list[dict[str, Any]]) -> registry.RowInputs:
        losses = [(row["tuned_loss"] * row["answer_tokens"], row["answer_tokens"]) for row in rows]
        return registry.RowInputs([row["tuned"] for row in rows], references, losses, labels)

    usable = [name for name in names if name in registry.METRICS]
    stats = [registry.row_statistics(usable, inputs(rows)) for rows in examples]
    weights = resample_weights(len(references), resamples, seed)
    result = {}
    for name in usable:
        score = registry.METRICS[name].score
        a, b = resampled_scores(score, stats[0][name], weights), resampled_scores(score, stats[1][name], weights)
        result[name] = percentile_interval(b - a, confidence)
    return result
