"""`tunelab sweep`: search a recipe's hyperparameters with Optuna, each trial an ordinary run folder.

    <dir>/study.db               the Optuna study (SQLite): a second invocation resumes it; --trials counts the total
    <dir>/trials/trial-000N/     trial N's run folder (train/lifecycle.run_recipe with the trial's dotted overrides)
Trial 0 is the recipe's own values (enqueued), so the table shows where the search started. Optuna's TPE sampler
(seeded) draws the rest; its MedianPruner stops a trial whose validation loss at a validation step is worse than the
median of the finished trials at that step. The objective is the recipe's objective metric (objective.metric; no
objective: the validation loss) measured on the VALIDATION rows: the test rows are evaluated once, for the best
trial, after the search (`evaluate_best`), so the figure reported for the winner was not used to pick it.
"""

from __future__ import annotations

import gc
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

from tunelab.errors import TunelabError
from tunelab.sweep.space import Param, recipe_value, recipe_with, suggest

if TYPE_CHECKING:
    from tunelab.config.schema import Recipe

STUDY_NAME = "tunelab-sweep"
VALIDATION_LOSS = "validation loss"


@dataclass(frozen=True)
class SweepPlan:
    recipe: dict[str, Any]  # the validated recipe (command-line overrides applied), as data
    space: list[Param]
    trials: int  # the total, over every invocation
    folder: Path
    seed: int = 0
    device: str = "auto"
    prune_after: int = 2  # finished trials before the pruner compares (MedianPruner's n_startup_trials)

    @property
    def study_db(self) -> Path:
        return self.folder / "study.db"

    def trial_dir(self, number: int) -> Path:
        return self.folder / "trials" / f"trial-{number:04d}"


@dataclass(frozen=True)
class Objective:
    metric: str  # a metric name, or VALIDATION_LOSS (the trainer's, at the last step)
    maximize: bool


def objective_of(recipe: "Recipe") -> Objective:
    from tunelab.metrics.registry import METRICS

    if recipe.objective is None:
        return Objective(VALIDATION_LOSS, False)
    return Objective(recipe.objective.metric, METRICS[recipe.objective.metric].higher_is_better)


def check_validation_rows(recipe: "Recipe") -> None:
    if not recipe.data.validation and recipe.data.split.validation <= 0:
        raise TunelabError("sweep: the recipe has no validation rows (set data.validation or data.split.validation "
                           "> 0): trials are compared on validation rows, never on the test rows")


def open_study(plan: SweepPlan, objective: Objective) -> Any:
    """The study in <dir>/study.db, created or resumed; a resumed one must search the same space for the same
    objective. Trials left running by an interrupted invocation are marked failed (they will not report)."""
    import optuna
    from optuna.trial import TrialState

    plan.folder.mkdir(parents=True, exist_ok=True)
    # TPE samples at random for its first n_startup_trials (10 by default), which is a whole short sweep; a third
    # of the trials (2 at least) leaves the rest to the model of the search.
    sampler = optuna.samplers.TPESampler(seed=plan.seed, n_startup_trials=max(2, min(10, plan.trials // 3)))
    pruner = optuna.pruners.MedianPruner(n_startup_trials=plan.prune_after, n_warmup_steps=0)
    study = optuna.create_study(study_name=STUDY_NAME, storage=f"sqlite:///{plan.study_db}", sampler=sampler,
                                pruner=pruner, load_if_exists=True,
                                direction="maximize" if objective.maximize else "minimize")
    # What makes trials comparable: the same objective, space and recipe (output.* aside: where runs are written).
    described = {"metric": objective.metric,
                 "space": [vars(param) | {"choices": list(param.choices)} for param in plan.space],
                 "recipe": {key: value for key, value in plan.recipe.items() if key != "output"}}
    if not study.trials:
        for key, value in described.items():
            study.set_user_attr(key, value)
    for key, value in described.items():
        if study.user_attrs.get(key) != value:
            difference = first_difference(study.user_attrs.get(key), value, key)
            raise TunelabError(f"{plan.study_db}: this study was started with another {difference}; resume it "
                               "with the same recipe, overrides and space, or use another --dir for a new search")
    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        # Optuna's fail_stale_trials needs heartbeats; a sweep is one process at a time, so a trial still running
        # when the study opens was cut short (the report says "interrupted" for a failed trial with no error).
        study.tell(trial.number, state=TrialState.FAIL)
    return study


def first_difference(before: Any, after: Any, path: str) -> str:
    """`path: before -> after` at the first key where two JSON values differ."""
    if isinstance(before, dict) and isinstance(after, dict):
        for key in sorted(set(before) | set(after)):
            if before.get(key) != after.get(key):
                return first_difference(before.get(key), after.get(key), f"{path}.{key}")
    return f"{path} ({before!r} -> now {after!r})"


def enqueue_starting_point(study: Any, plan: SweepPlan, recipe: "Recipe", say: Callable[[str], None]) -> None:
    """Trial 0: the recipe's own values, even outside the space (the bad starting point the search should beat)."""
    if study.trials:
        return
    start = {}
    for param in plan.space:
        value = recipe_value(recipe, param.key)
        if value is None:
            say(f"trial 0: the recipe leaves {param.key} unset; trial 0 draws it")
            continue
        if param.kind == "categorical" and value not in param.choices:
            say(f"trial 0: the recipe's {param.key}={value!r} is not among the choices; trial 0 draws it")
            continue
        if param.kind != "categorical" and not param.low <= value <= param.high:
            say(f"trial 0: the recipe's {param.key}={value!r} lies outside [{param.low}, {param.high}]; kept, "
                "it is the starting point")
        start[param.key] = value
    study.enqueue_trial(start)


def finished(study: Any) -> list[Any]:
    """The trials that count towards --trials: completed or pruned. A failed one (an error, or cut short by an
    interrupted invocation) does not, so resuming after Ctrl-C still runs the number of trials asked for."""
    from optuna.trial import TrialState

    return [trial for trial in study.trials if trial.state in (TrialState.COMPLETE, TrialState.PRUNED)]


def run_sweep(plan: SweepPlan, home: Path, say: Callable[[str], None]) -> Any:
    """Run trials until the study holds plan.trials finished ones; returns the study."""
    import warnings

    from tunelab.config.load import validate_recipe

    recipe = validate_recipe(plan.recipe)
    check_validation_rows(recipe)
    objective = objective_of(recipe)
    study = open_study(plan, objective)
    enqueue_starting_point(study, plan, recipe, say)
    remaining = plan.trials - len(finished(study))
    if remaining <= 0:
        say(f"{plan.study_db}: already holds {len(finished(study))} finished trials (--trials {plan.trials})")
        return study
    say(f"{remaining} trial(s) to run ({len(finished(study))} already in {plan.study_db}); objective: "
        f"{objective.metric} on the validation rows, {'higher' if objective.maximize else 'lower'} is better")
    runner = TrialRunner(plan, home, objective, say)
    with warnings.catch_warnings():
        # Optuna warns when trial 0's value lies outside the space; enqueue_starting_point already said so.
        warnings.filterwarnings("ignore", message="Fixed parameter")
        study.optimize(runner, n_trials=remaining, catch=(Exception,), gc_after_trial=True)
    return study


class TrialRunner:
    """Optuna's objective: one trial = one run folder, trained, then scored on the validation rows."""

    def __init__(self, plan: SweepPlan, home: Path, objective: Objective, say: Callable[[str], None]):
        self.plan, self.home, self.objective, self.say = plan, home, objective, say
        self.base_outputs = earlier_base_outputs(plan)

    def __call__(self, trial: Any) -> float:
        import optuna

        try:
            return self.run(trial)
        except Exception as error:
            if not isinstance(error, optuna.TrialPruned):
                trial.set_user_attr("error", str(error) or type(error).__name__)
                self.say(f"trial {trial.number}: failed: {error}")
            raise

    def run(self, trial: Any) -> float:
        import optuna
        from rich.console import Console

        from tunelab.train.lifecycle import run_recipe

        values = {param.key: suggest(trial, param) for param in self.plan.space}
        recipe = trial_recipe(self.plan, values, self.plan.trial_dir(trial.number))
        reporter = validation_reporter(trial, self.objective.maximize)
        trial.set_user_attr("run", str(self.plan.trial_dir(trial.number)))
        shown = ", ".join(f"{key}={value:.3g}" if isinstance(value, float) else f"{key}={value}"
                          for key, value in values.items())
        self.say(f"trial {trial.number}: {shown}: training")
        started = time.perf_counter()
        outcome = run_recipe(recipe, self.home, Console(quiet=True), overwrite=True, device=self.plan.device,
                             evaluate=False, callbacks=(reporter,))
        trial.set_user_attr("train_seconds", time.perf_counter() - started)
        if reporter.pruned_at is not None:
            trial.set_user_attr("pruned_at_step", reporter.pruned_at)
            self.say(f"trial {trial.number}: pruned at step {reporter.pruned_at} (validation loss "
                     f"{reporter.losses[reporter.pruned_at]:.4f}, worse than the median there)")
            raise optuna.TrialPruned(f"validation loss at step {reporter.pruned_at} worse than the median")
        value = self.score(outcome, reporter)
        trial.set_user_attr("seconds", time.perf_counter() - started)
        if not math.isfinite(value):
            raise TunelabError(f"the objective is {value} (training diverged?)")
        self.say(f"trial {trial.number}: {self.objective.metric} {value:.4f} "
                 f"({time.perf_counter() - started:.0f} s)")
        gc.collect()
        return value

    def score(self, outcome: Any, reporter: Any) -> float:
        """The objective on the validation rows: the trainer's validation loss at the last step, or the
        evaluator's metric on the validation split (the base model's outputs reused from an earlier trial)."""
        if self.objective.metric == VALIDATION_LOSS:
            if not reporter.losses:
                raise TunelabError("no validation loss was computed (are there validation rows?)")
            return reporter.losses[max(reporter.losses)]
        evaluation = evaluate_validation(outcome.run.root, self.home, self.plan.device, self.base_outputs,
                                         self.objective.metric)
        if self.base_outputs is None:
            from tunelab.evaluate.outputs import load_outputs
            from tunelab.run.folder import RunDir

            self.base_outputs = load_outputs(RunDir(outcome.run.root).model_outputs("base"))
        return float(evaluation.tuned[self.objective.metric])


def trial_recipe(plan: SweepPlan, values: dict[str, Any], folder: Path) -> "Recipe":
    """The recipe with the trial's values set as command-line overrides would set them; its own run folder, no
    merge (a trial's model is for comparison; the best recipe is what a user trains and exports)."""
    return recipe_with(plan.recipe, {**values, "output.dir": str(folder), "output.merge": False},
                       source=f"trial recipe ({folder.name})")


def validation_reporter(trial: Any, maximize: bool) -> Any:
    """A TrainerCallback: each validation loss to Optuna (for the pruner), a validation at the last step too
    (the objective's loss is the final model's), and a stop when Optuna says prune."""
    from transformers import TrainerCallback

    class ValidationReporter(TrainerCallback):
        def __init__(self) -> None:
            self.losses: dict[int, float] = {}
            self.pruned_at: int | None = None

        def on_step_end(self, args, state, control, **kwargs):
            if state.max_steps and state.global_step >= state.max_steps:
                control.should_evaluate = True
            return control

        def on_evaluate(self, args, state, control, metrics=None, **kwargs):
            loss = (metrics or {}).get("eval_loss")
            if loss is None or state.global_step in self.losses:
                return control
            self.losses[state.global_step] = loss
            # The pruner compares intermediate values in the study's direction: a maximized metric's study gets
            # the loss negated, so that a lower loss still counts as the better one.
            trial.report(-loss if maximize else loss, state.global_step)
            if trial.should_prune():
                self.pruned_at = state.global_step
                control.should_training_stop = True
            return control

    return ValidationReporter()


def evaluate_validation(run_root: Path, home: Path, device: str, base_outputs: Any, metric: str) -> Any:
    """The one evaluator on the run's validation rows: the objective's metric only, without the forgetting and risk
    probes or the gate (their bounds are the best trial's test evaluation's to check)."""
    from tunelab.evaluate.evaluator import evaluate_run
    from tunelab.run.models import open_run_models
    from tunelab.train.lifecycle import evaluation_recipe

    models = open_run_models(run_root, home, device)
    recipe = evaluation_recipe(models.record.recipe, ["objective=null", f"eval.metrics=[{metric}]",
                                                      "eval.forgetting.enabled=false", "eval.risks.enabled=false"],
                               str(run_root))
    return evaluate_run(models, recipe, lambda line: None, base_outputs=base_outputs, split="validation")


def earlier_base_outputs(plan: SweepPlan) -> Any:
    """The base model's validation outputs from an earlier trial (a resumed sweep), reused where they match."""
    from tunelab.evaluate.outputs import load_outputs
    from tunelab.run.folder import RunDir

    for folder in sorted((plan.folder / "trials").glob("trial-*")):
        path = RunDir(folder).model_outputs("base")
        if path.exists():
            return load_outputs(path)
    return None


def evaluate_best(study: Any, home: Path, device: str, say: Callable[[str], None]) -> dict[str, Any] | None:
    """The test split, once, for the best trial (through `tunelab eval`'s path: eval.json, report.html, the
    verdict in run.json). None when no trial finished."""
    from rich.console import Console

    from tunelab.train.lifecycle import evaluate_and_record

    best = best_trial(study)
    if best is None:
        return None
    say(f"best: trial {best.number}; evaluating it on the test rows (once, now)")
    evaluation = evaluate_and_record(Path(best.user_attrs["run"]), home, Console(quiet=True), device)
    return {"trial": best.number, "run": best.user_attrs["run"], "primary_metric": evaluation.primary_metric,
            "base": evaluation.base, "tuned": evaluation.tuned, "rows": evaluation.rows,
            "intervals": evaluation.intervals.model_dump(mode="json") if evaluation.intervals else None,
            "objective": evaluation.objective.model_dump(mode="json") if evaluation.objective else None}


def best_trial(study: Any) -> Any:
    from optuna.trial import TrialState

    if not study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
        return None
    return study.best_trial


def test_of_best(study: Any, plan: SweepPlan, home: Path, say: Callable[[str], None]) -> dict[str, Any] | None:
    """The best trial's test evaluation: the one an earlier invocation made when the best is still the same
    trial (the test rows are evaluated once per best trial, not once per invocation), else made now."""
    import json

    best = best_trial(study)
    earlier = plan.folder / "sweep.json"
    if best is not None and earlier.exists():
        test = json.loads(earlier.read_text(encoding="utf-8")).get("test")
        if test and test.get("trial") == best.number:
            say(f"best: trial {best.number}, already evaluated on the test rows")
            return test
    return evaluate_best(study, home, plan.device, say)
