"""A run's models for use after training: eval, generate, chat, classify, export and serve load them from here.

The task decides what the models are (a causal LM, or a classifier with a head: tasks/*.py `inference`); this module
holds what every task's loaders need: the run, its record and recipe, the base checkpoint and the placement.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

from tunelab.errors import TunelabError
from tunelab.run.folder import RunDir
from tunelab.run.record import RunRecord, open_run

if TYPE_CHECKING:
    from tunelab.config.schema import Recipe
    from tunelab.device import Placement
    from tunelab.tasks.base import Inference


@dataclass
class RunModels:
    run: RunDir
    record: RunRecord
    recipe: "Recipe"
    home: Path
    placement: "Placement"
    _base: Path | None = field(default=None, init=False, repr=False)  # base_path, found (and checked) once

    def tokenizer(self) -> Any:
        """The tokenizer saved with the run: the base tokenizer with the run's chat template and pad token."""
        from tunelab.models.tokenizer import load_tokenizer

        return load_tokenizer(self.run.model)

    def base_path(self) -> Path:
        """The run's base checkpoint: its recipe's model.name, or a chained run's starting checkpoint (checked once
        against the sha256 run.json recorded; run/chain.py run_base_path)."""
        from tunelab.run.chain import run_base_path

        if self._base is None:
            self._base = run_base_path(self.recipe, self.record, self.home, str(self.run.root))
        return self._base

    def base_name(self) -> str:
        """How to name the base model to load it again (serve --base): the recipe's model.name, or a chained run's
        starting checkpoint folder."""
        return str(self.base_path()) if self.record.started_from else self.recipe.model.name

    def causal_lm(self) -> Any:
        """The base causal LM, placed, in eval mode."""
        from tunelab.models.load import load_causal_lm

        return self.placement.place(load_causal_lm(self.base_path())).eval()

    def tuned(self, load_base: Callable[[], Any], merged: bool = False) -> Any:
        """The trained model: the run's method loads what training saved onto (or instead of) the base. `merged`
        (for writing text): the adapter folded into the weights where the method can (`generate_merged`), which
        generates as fast as the base (bench/eval_generate.py)."""
        from tunelab.methods.registry import get_method

        method = get_method(self.recipe.method.name)
        model = self.placement.place(method.load(load_base, self.run.model)).eval()
        if merged and method.is_adapter and method.merge is not None and method.generate_merged:
            model = method.merge(model).eval()
        return model

    def inference(self) -> "Inference":
        from tunelab.tasks.registry import get_task

        return get_task(self.recipe.task.name).inference(self)


def open_run_models(root: str | Path, home: Path, device: str = "auto") -> RunModels:
    """The run at `root`, refused in one line when it has no saved model; models are placed on `device` in the
    precision the run trained in where that device has it (else the device's own choice)."""
    from tunelab.config.load import validate_recipe
    from tunelab.device import resolve_device, resolve_placement

    run, record = open_run(root)
    if not (run.model.is_dir() and any(run.model.iterdir())):
        raise TunelabError(f"{root}: the run has no saved model (status: {record.status})")
    recipe = validate_recipe(record.recipe, source=str(run.record_path))
    chosen = resolve_device(device)
    try:  # the precision the run trained in, where this device has it
        placement = resolve_placement(chosen, recipe.train.precision if chosen == record.device else "auto")
    except TunelabError:  # e.g. a run trained in bf16 on a CPU that has bf16, opened on one that has not
        placement = resolve_placement(chosen, "auto")
    return RunModels(run, record, recipe, home, placement)
