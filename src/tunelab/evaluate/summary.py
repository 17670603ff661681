"""Runs at a glance: what run.json keeps of an evaluation, the verdict line, `tunelab runs` and `runs compare`.

Everything here reads the run folder only (run.json, eval.json, eval/examples.jsonl); no model is loaded.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tunelab.errors import TunelabError
from tunelab.files import read_json, read_jsonl, sha256_file
from tunelab.runs import RUN_SCHEMA_VERSION, RunDir, check_run_format, now


def evaluation_record(report: dict[str, Any]) -> dict[str, Any]:
    """The part of eval.json that run.json keeps, so a run's record alone says how it did."""
    forgetting = report.get("forgetting")
    return {
        **{key: report[key] for key in ("rows", "base", "tuned", "delta", "primary_metric", "intervals")},
        "forgetting": {key: forgetting[key] for key in ("value", "flagged", "threshold", "worst_probe")}
        if forgetting else None,
        "objective": report.get("objective"),
        "evaluated_at": now(),
    }


def verdict_line(verdict: dict[str, Any] | None) -> str:
    if verdict is None:
        return "[dim]no objective in the recipe: add an `objective:` section to gate on one[/dim]"
    if verdict["met"]:
        return f"[bold green]objective met[/bold green]: {verdict['summary']}"
    return f"[bold red]objective NOT met[/bold red]: {verdict['summary']}"


@dataclass
class RunSummary:
    path: Path
    status: str
    started_at: str | None
    model: str | None
    method: str | None
    steps: int | None
    primary: str | None
    base: float | None
    tuned: float | None
    interval: list[float] | None  # of tuned - base
    forgetting: float | None
    verdict: bool | None  # None: no objective or not evaluated
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
        return read_json(path / "run.json").get("started_at")
    except (ValueError, OSError):
        return None


def read_evaluation(run: RunDir) -> dict[str, Any] | None:
    if run.eval_json.is_file():
        return read_json(run.eval_json)
    return run.read_record().get("evaluation")


def summarize_run(path: Path) -> RunSummary:
    """One line of `tunelab runs`. A folder in another run format is listed with a note rather than read."""
    run = RunDir(path)
    try:
        record = run.read_record()
    except ValueError:
        return RunSummary(path, "unreadable", None, None, None, None, None, None, None, None, None, None,
                          "run.json is not valid JSON")
    try:
        check_run_format(path, record)
    except TunelabError:
        return RunSummary(path, record.get("status", "?"), record.get("started_at"), None, None, None, None, None,
                          None, None, None, None, f"run format {record.get('schema_version')}, this tunelab reads "
                          f"{RUN_SCHEMA_VERSION}")
    evaluation = read_evaluation(run)
    model = (record.get("base_model") or {}).get("name") or record.get("recipe", {}).get("model", {}).get("name")
    method = (record.get("method") or {}).get("name")
    summary = RunSummary(path, record.get("status", "?"), record.get("started_at"), model, method,
                         record.get("steps"), None, None, None, None, None, None)
    if evaluation:
        primary = evaluation.get("primary_metric") or next(iter(evaluation.get("delta", {})), None)
        summary.primary = primary
        summary.base = evaluation["base"].get(primary)
        summary.tuned = evaluation["tuned"].get(primary)
        summary.interval = ((evaluation.get("intervals") or {}).get("delta") or {}).get(primary)
        forgetting = evaluation.get("forgetting")
        summary.forgetting = forgetting.get("value") if forgetting else None
        verdict = evaluation.get("objective")
        summary.verdict = verdict.get("met") if verdict else None
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
    from tunelab.runs import open_run

    first, second = open_run(first_path), open_run(second_path)
    evaluations = [read_evaluation(run) for run in (first, second)]
    for run, evaluation in zip((first, second), evaluations):
        if not evaluation:
            raise TunelabError(f"{run.root}: not evaluated yet; run `tunelab eval {run.root}` first")
    records = [run.read_record() for run in (first, second)]
    shared = [name for name in evaluations[0]["delta"] if name in evaluations[1]["delta"]]
    paired = same_test_rows(first, second)
    intervals = paired_run_intervals(first, second, shared, resamples, confidence, seed) if paired else {}
    rows = [{"metric": name, "a": evaluations[0]["tuned"][name], "b": evaluations[1]["tuned"][name],
             "difference": evaluations[1]["tuned"][name] - evaluations[0]["tuned"][name],
             "interval": intervals.get(name)} for name in shared]
    return {
        "a": str(first.root), "b": str(second.root), "same_test_rows": paired, "metrics": rows,
        "recipe": recipe_differences(records[0]["recipe"], records[1]["recipe"]),
        "facts": run_facts(records, evaluations),
    }


def run_facts(records: list[dict[str, Any]], evaluations: list[dict[str, Any]]) -> list[tuple[str, Any, Any]]:
    def fact(record: dict[str, Any], evaluation: dict[str, Any], key: str) -> Any:
        metrics = record.get("metrics") or {}
        forgetting = evaluation.get("forgetting") or {}
        verdict = evaluation.get("objective")
        return {
            "status": record.get("status"), "steps": record.get("steps"), "tokens seen": record.get("tokens_seen"),
            "train seconds": metrics.get("train_runtime_seconds"),
            "train tokens/s": metrics.get("train_tokens_per_second"),
            "best validation loss": metrics.get("best_eval_loss") or metrics.get("final_eval_loss"),
            "test rows": evaluation.get("rows"),
            "forgetting": None if forgetting.get("value") is None else f"{100 * forgetting['value']:+.1f}%",
            "objective": None if verdict is None else ("met" if verdict["met"] else "not met"),
        }[key]

    keys = ("status", "steps", "tokens seen", "train seconds", "train tokens/s", "best validation loss", "test rows",
            "forgetting", "objective")
    return [(key, fact(records[0], evaluations[0], key), fact(records[1], evaluations[1], key)) for key in keys]


def paired_run_intervals(first: RunDir, second: RunDir, names: list[str], resamples: int, confidence: float,
                         seed: int) -> dict[str, list[float]]:
    """Interval of B - A for each metric, recomputed from both runs' saved tuned answers on the same rows."""
    from tunelab.evaluate import registry
    from tunelab.evaluate.bootstrap import percentile_interval, resample_weights, resampled_scores

    if not resamples or not (first.eval_examples.is_file() and second.eval_examples.is_file()):
        return {}
    examples = [read_jsonl(run.eval_examples) for run in (first, second)]
    references = [row["reference"] for row in examples[0]]
    if references != [row["reference"] for row in examples[1]]:
        return {}
    labels = registry.class_labels(references)

    def inputs(rows: list[dict[str, Any]]) -> registry.RowInputs:
        losses = [(row["tuned_loss"] * row.get("answer_tokens", 0), row.get("answer_tokens", 0)) for row in rows]
        return registry.RowInputs([row["tuned"] for row in rows], references, losses, labels)

    usable = [name for name in names if name in registry.METRICS
              and (registry.METRICS[name].family != "loss" or "answer_tokens" in examples[0][0])]
    stats = [registry.row_statistics(usable, inputs(rows)) for rows in examples]
    weights = resample_weights(len(references), resamples, seed)
    result = {}
    for name in usable:
        score = registry.METRICS[name].score
        a, b = resampled_scores(score, stats[0][name], weights), resampled_scores(score, stats[1][name], weights)
        result[name] = percentile_interval(b - a, confidence)
    return result
