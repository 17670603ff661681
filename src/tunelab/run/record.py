"""run.json and eval.json: what a run is and how it did, as typed objects, with one writer each.

`RunRecord` (run.json) is written by `write_record` alone: the training lifecycle writes it at the start and the
end of training, and the evaluation commands add their summary to it. `Evaluation` (eval.json) is written by
`write_evaluation` alone, called by the evaluator. Everything else (the CLI, report.html, the model card,
`tunelab runs`, `runs compare`, `compare-methods`) reads these objects through `read_record` / `read_evaluation`,
so a key that one module reads and none writes cannot exist: pydantic refuses it.

A run folder written in another format (schema_version) is refused with what to do, never half-read.
"""

from __future__ import annotations

import os
import platform
import socket
import subprocess
import sys
import time
from importlib import metadata
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from tunelab import __version__
from tunelab.errors import TunelabError
from tunelab.files import read_json, write_json
from tunelab.risks.base import RiskResult
from tunelab.run.folder import RunDir

RUN_SCHEMA_VERSION = 2  # 1: untyped record (tunelab 0.1.0 before the task registry)
EVAL_FORMAT = 3  # 2: no task, no reference points, classification in its own layout
TRACKED_PACKAGES = ("torch", "transformers", "peft", "trl", "accelerate", "datasets", "safetensors", "tokenizers")


class Part(BaseModel):
    model_config = ConfigDict(extra="forbid")


# ---- run.json -----------------------------------------------------------------------------------------------------


class Environment(Part):
    python: str
    platform: str
    host: str
    cpu_count: int | None
    packages: dict[str, str | None]
    git_sha: str | None


class BaseModelInfo(Part):
    name: str  # what the recipe said
    kind: str  # builtin / gguf / folder / run (a chained run's start: run/chain.py)
    path: str  # the checkpoint folder loaded


class StartInfo(Part):
    """Where a chained run (model.from_run) started: the earlier run and the checkpoint its base weights are."""

    run: str  # the earlier run's folder, as the recipe named it
    task: str
    method: str
    base_model: str  # the earlier run's base model: the root of the chain
    checkpoint: str  # the folder this run's base weights load from (run/chain.py)
    sha256: dict[str, str]  # weight file name -> sha256 when the run started: a later change is refused


class MethodInfo(Part):
    name: str
    trainable_parameters: int
    total_parameters: int


class DataFileInfo(Part):
    role: str  # train / validation / test / generated
    path: str
    sha256: str
    rows: int


class SplitCounts(Part):
    rows: int  # rows in the split as trained or evaluated
    kept: int  # rows that became training examples
    dropped_overlong: int = 0
    truncated: int = 0
    tokens: int = 0
    label_tokens: int = 0


class DoctorSummary(Part):
    key: str
    from_cache: bool
    counts: dict[str, Any]
    rejected: dict[str, int]


class DataInfo(Part):
    files: list[DataFileInfo]
    splits: dict[str, SplitCounts]
    doctor: DoctorSummary | None = None


class TrainingSummary(Part):
    steps: int
    max_steps: int
    stopped_early: bool
    tokens_seen: int
    train_loss: float | None
    final_eval_loss: float | None
    best_eval_loss: float | None
    best_checkpoint: str | None
    train_runtime_seconds: float
    train_tokens_per_second: float | None


class Check(Part):
    check: str  # min, max, min_gain_over_base, significant, max_forgetting, max_<risk> (objective fields)
    ok: bool
    required: float | None
    actual: float | None
    text: str


class Verdict(Part):
    met: bool
    metric: str
    checks: list[Check]
    summary: str


class ForgettingSummary(Part):
    value: float  # the largest change over the probes: what the gate compares with max_forgetting
    flagged: bool
    threshold: float
    worst_probe: str
    measure: str  # perplexity (relative increase) or drift (1 - cosine of hidden states)


class EvaluationSummary(Part):
    """What run.json keeps of eval.json, so the record alone says how the run did."""

    rows: int
    primary_metric: str
    base: dict[str, float]
    tuned: dict[str, float]
    delta: dict[str, float]
    delta_intervals: dict[str, list[float]] | None
    forgetting: ForgettingSummary | None
    objective: Verdict | None
    evaluated_at: str
    risks: dict[str, float] = Field(default_factory=dict)  # each risk probe's gated figure (eval.json has the rest)


class RunRecord(Part):
    schema_version: int = RUN_SCHEMA_VERSION
    tunelab_version: str = __version__
    task: str
    status: Literal["running", "completed", "failed", "interrupted"] = "running"
    started_at: str
    ended_at: str | None = None
    recipe: dict[str, Any]  # the resolved recipe, as data (recipe.yaml holds the same)
    environment: Environment
    base_model: BaseModelInfo
    started_from: StartInfo | None = None  # a chained run's start (model.from_run); None: the recipe's model.name
    method: MethodInfo
    data: DataInfo
    device: str
    precision: str
    padding_free: bool
    task_state: dict[str, Any] = Field(default_factory=dict)  # what the task decided (classes, style, ...)
    merged: bool = False  # a merged model is in merged/
    merge_note: str | None = None
    training: TrainingSummary | None = None
    evaluation: EvaluationSummary | None = None
    error: str | None = None


# ---- eval.json ----------------------------------------------------------------------------------------------------


class Intervals(Part):
    confidence: float
    resamples: int
    method: str
    base: dict[str, list[float]]
    tuned: dict[str, list[float]]
    delta: dict[str, list[float]]


class Flips(Part):
    fixed: int
    broken: int
    both_right: int
    both_wrong: int
    judged_by: str


class ProbeResult(Part):
    rows: int
    tokens: int
    measure: str  # perplexity | drift
    base: float | None  # the probe's value for each model (perplexity); None where only the change is defined
    tuned: float | None
    change: float  # perplexity: tuned / base - 1; drift: 1 - mean cosine similarity
    interval: list[float] | None
    flagged: bool


class Forgetting(Part):
    threshold: float
    measure: str
    probes: dict[str, ProbeResult]
    value: float
    flagged: bool
    worst_probe: str

    def summary(self) -> ForgettingSummary:
        return ForgettingSummary(value=self.value, flagged=self.flagged, threshold=self.threshold,
                                 worst_probe=self.worst_probe, measure=self.measure)


class Evaluation(Part):
    format: int = EVAL_FORMAT
    task: str
    rows: int
    kind: str  # chat | label | text | preference | prompt: what the test rows are
    metrics: list[str]
    primary_metric: str
    units: dict[str, str]
    base: dict[str, float]
    tuned: dict[str, float]
    delta: dict[str, float]
    intervals: Intervals | None
    details: dict[str, dict[str, Any]]  # per model: labels (per class, confusion), json_fields
    speed: dict[str, dict[str, float]]  # per model: generated tokens/s or rows/s
    decoding: dict[str, Any]  # how answers were produced (greedy generation, restricted to labels, a head)
    reference_points: dict[str, dict[str, float]] = Field(default_factory=dict)  # e.g. the majority class
    flips: Flips | None
    forgetting: Forgetting | None
    objective: Verdict | None
    notes: list[str] = Field(default_factory=list)  # what was left out and why (e.g. a metric a model cannot give)
    evaluated_at: str
    # Risk probes by name (risks/registry.py order): robustness, bias, privacy, factual_drift; an eval.json written
    # before them has none.
    risks: dict[str, RiskResult] = Field(default_factory=dict)

    def summary(self) -> EvaluationSummary:
        return EvaluationSummary(
            rows=self.rows, primary_metric=self.primary_metric, base=self.base, tuned=self.tuned, delta=self.delta,
            delta_intervals=self.intervals.delta if self.intervals else None,
            forgetting=self.forgetting.summary() if self.forgetting else None, objective=self.objective,
            evaluated_at=self.evaluated_at, risks={name: risk.value for name, risk in self.risks.items()})


# ---- reading and writing --------------------------------------------------------------------------------------------


def now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def environment() -> Environment:
    packages = {}
    for name in TRACKED_PACKAGES:
        try:
            packages[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            packages[name] = None
    return Environment(python=sys.version.split()[0], platform=platform.platform(), host=socket.gethostname(),
                       cpu_count=os.cpu_count(), packages=packages, git_sha=git_sha(Path.cwd()))


def git_sha(folder: Path) -> str | None:
    try:
        result = subprocess.run(["git", "rev-parse", "HEAD"], cwd=folder, capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return result.stdout.strip() or None if result.returncode == 0 else None


def write_record(run: RunDir, record: RunRecord) -> None:
    """The one writer of run.json."""
    write_json(run.record_path, record.model_dump(mode="json"))


def write_evaluation(run: RunDir, evaluation: Evaluation) -> None:
    """The one writer of eval.json."""
    write_json(run.eval_json, evaluation.model_dump(mode="json"))


def raw_record(run: RunDir) -> dict[str, Any]:
    try:
        raw = read_json(run.record_path)
    except ValueError as error:
        raise TunelabError(f"{run.record_path}: not valid JSON ({error})") from None
    if not isinstance(raw, dict):
        raise TunelabError(f"{run.record_path}: not a run record")
    return raw


def read_record(run: RunDir) -> RunRecord:
    """run.json as a RunRecord; another format or a damaged file is one clear error."""
    raw = raw_record(run)
    check_run_format(run.root, raw)
    try:
        return RunRecord.model_validate(raw)
    except ValidationError as error:
        first = error.errors()[0]
        where = ".".join(str(part) for part in first["loc"])
        raise TunelabError(f"{run.record_path}: not a valid run record ({where}: {first['msg']})") from None


def read_evaluation(run: RunDir) -> Evaluation | None:
    """eval.json, or None where there is none (or one in an earlier layout: shown as not evaluated)."""
    if not run.eval_json.is_file():
        return None
    raw = read_json(run.eval_json)
    if not isinstance(raw, dict) or raw.get("format") != EVAL_FORMAT:
        return None
    return Evaluation.model_validate(raw)


def open_run(root: str | Path) -> tuple[RunDir, RunRecord]:
    run = RunDir(Path(root))
    if not run.is_run():
        raise TunelabError(f"{root}: not a tunelab run folder (no run.json)")
    return run, read_record(run)


def check_run_format(root: str | Path, record: dict[str, Any]) -> None:
    written = record.get("schema_version")
    if written == RUN_SCHEMA_VERSION:
        return
    by = f"tunelab {record.get('tunelab_version', '?')}"
    if isinstance(written, int) and written > RUN_SCHEMA_VERSION:
        advice = "it comes from a newer tunelab; upgrade tunelab to read it"
    elif isinstance(written, int):
        advice = "it comes from an older tunelab; read it with that version or train the run again"
    else:
        advice = "run.json has no valid schema_version"
    raise TunelabError(f"{root}: run format {written} (written by {by}), this tunelab {__version__} reads format "
                       f"{RUN_SCHEMA_VERSION}; {advice}")
