"""The run folder: one per training run, shared by train, eval, generate, export and serve. Paths only: what
run.json and eval.json hold, and their one writer, is record.py.

Layout (paths relative to the run folder):
    run.json          what ran, on what, with what result (record.RunRecord)
    recipe.yaml       the resolved recipe
    data/             the splits exactly as used (train/validation/test .jsonl)
    checkpoints/      trainer checkpoints (resume from the last)
    model/            what training produced: an adapter in PEFT's format, or a whole model; plus the tokenizer
    merged/           the adapter folded into the base weights, where the method can merge
    eval.json         base-vs-tuned evaluation (record.Evaluation); eval_worst.jsonl its worst examples
    eval/             examples.jsonl (every test row: both outputs, flip), forgetting_answers.jsonl,
                      outputs-base.json / outputs-tuned.json (each model's raw outputs, for scoring again),
                      risks-base.json / risks-tuned.json (each model's raw results on the risk probes' rows)
    eval/versus-<label>/  this run against the version in service on <label> rows (evaluate/versus.py)
    report.html       the self-contained evaluation report
    train_log.jsonl   the trainer's log history
    tensorboard/      TensorBoard event files
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

from tunelab.errors import TunelabError


@dataclass(frozen=True)
class RunDir:
    root: Path

    @property
    def record_path(self) -> Path:
        return self.root / "run.json"

    @property
    def recipe_path(self) -> Path:
        return self.root / "recipe.yaml"

    @property
    def data(self) -> Path:
        return self.root / "data"

    @property
    def checkpoints(self) -> Path:
        return self.root / "checkpoints"

    @property
    def model(self) -> Path:
        return self.root / "model"

    @property
    def merged(self) -> Path:
        return self.root / "merged"

    @property
    def eval_json(self) -> Path:
        return self.root / "eval.json"

    @property
    def eval_worst(self) -> Path:
        return self.root / "eval_worst.jsonl"

    @property
    def train_log(self) -> Path:
        return self.root / "train_log.jsonl"

    @property
    def eval_dir(self) -> Path:
        return self.root / "eval"

    @property
    def eval_examples(self) -> Path:
        return self.eval_dir / "examples.jsonl"

    @property
    def forgetting_answers(self) -> Path:
        return self.eval_dir / "forgetting_answers.jsonl"

    def model_outputs(self, label: str) -> Path:
        """What model `label` (base, tuned) produced in the last evaluation (evaluate/outputs.py)."""
        return self.eval_dir / f"outputs-{label}.json"

    def risk_outputs(self, label: str) -> Path:
        """What model `label` (base, tuned) produced on the risk probes' rows in the last evaluation (risks/)."""
        return self.eval_dir / f"risks-{label}.json"

    def versus_dir(self, label: str) -> Path:
        """This run compared with the version in service on the `label` rows (evaluate/versus.py)."""
        return self.eval_dir / f"versus-{label}"

    @property
    def report_html(self) -> Path:
        return self.root / "report.html"

    @property
    def tensorboard(self) -> Path:
        return self.root / "tensorboard"

    def is_run(self) -> bool:
        return self.record_path.is_file()

    def is_prepared_only(self) -> bool:
        """Holds nothing but what `tunelab data prepare` wrote (data/ with its marker): train may use it."""
        return (self.data / "prepared.json").is_file() and [p.name for p in self.root.iterdir()] == ["data"]


def check_output_dir(root: Path, resume: bool, overwrite: bool) -> RunDir:
    """Refuse, before anything is written, to clobber a run unless told to, and ever to use a non-run folder."""
    run = RunDir(root)
    if resume and overwrite:
        raise TunelabError("--resume and --overwrite contradict each other; pick one")
    if resume:
        if not run.is_run():
            raise TunelabError(f"{root}: no run to resume here")
        return run
    if is_occupied(run):
        if not run.is_run():
            raise TunelabError(f"{root}: exists and is not a tunelab run; choose another output.dir")
        if not overwrite:
            raise TunelabError(f"{root}: already holds a run; use --resume to continue it or --overwrite to replace it")
    return run


def prepare_run_dir(root: Path, resume: bool, overwrite: bool) -> RunDir:
    """The run folder to write into, checked again (time passed since the first check) and emptied on --overwrite."""
    run = check_output_dir(root, resume, overwrite)
    if not resume and is_occupied(run):
        shutil.rmtree(root)
    root.mkdir(parents=True, exist_ok=True)
    return run


def is_occupied(run: RunDir) -> bool:
    """Anything in the folder but what `data prepare` put there for this run."""
    root = run.root
    occupied = root.exists() and any(root.iterdir()) if root.is_dir() else root.exists()
    return occupied and not run.is_prepared_only()
