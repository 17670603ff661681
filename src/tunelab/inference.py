"""Load a run's tuned model (or its base) for inference: used by eval, generate, chat, export and serve."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tunelab.config.load import validate_recipe
from tunelab.config.schema import Recipe
from tunelab.errors import TunelabError
from tunelab.methods.registry import get_method
from tunelab.models.load import load_causal_lm, resolve_model
from tunelab.models.tokenizer import load_tokenizer
from tunelab.runs import RunDir, open_run


@dataclass
class RunModels:
    run: RunDir
    recipe: Recipe
    record: dict[str, Any]
    home: Path

    def tokenizer(self) -> Any:
        """The tokenizer saved with the run: the base tokenizer with the run's chat template and pad token."""
        return load_tokenizer(self.run.model)

    def base_path(self) -> Path:
        return resolve_model(self.recipe.model.name, self.home).path

    def base(self) -> Any:
        return load_causal_lm(self.base_path()).eval()

    def tuned(self) -> Any:
        method = get_method(self.recipe.method.name)
        return method.load(self.base, self.run.model).eval()


def open_run_models(root: str | Path, home: Path) -> RunModels:
    run = open_run(root)
    record = run.read_record()
    if not (run.model.is_dir() and any(run.model.iterdir())):
        raise TunelabError(f"{root}: the run has no saved model (status: {record.get('status')})")
    recipe = validate_recipe(record["recipe"], source=str(run.record_path))
    return RunModels(run, recipe, record, home)
