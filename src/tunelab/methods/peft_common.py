"""Save, load and merge shared by the methods that peft implements (adapter folders in PEFT's own format)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

from tunelab.errors import TunelabError


def wrap_with_peft(model: Any, peft_config: Any) -> Any:
    """`get_peft_model`, with peft's "target modules not found" turned into a line that lists what exists."""
    from peft import get_peft_model

    try:
        return get_peft_model(model, peft_config)
    except ValueError as error:
        if "not found in the base model" in str(error) or "did not match" in str(error).lower():
            names = sorted(linear_layer_names(model))
            raise TunelabError(
                f"method.target_modules: {sorted(peft_config.target_modules)} match no layer of the model; "
                f"its linear layers are: {', '.join(names)}"
            ) from error
        raise


def peft_task_type(model: Any) -> str:
    """peft's task type for the model being wrapped: a sequence classifier keeps its new head trainable (peft adds
    `classifier`/`score` to modules_to_save for SEQ_CLS); everything else is a causal LM."""
    return "SEQ_CLS" if is_sequence_classifier(model) else "CAUSAL_LM"


def is_sequence_classifier(model: Any) -> bool:
    return type(model).__name__.endswith("ForSequenceClassification")


def linear_layer_names(model: Any) -> set[str]:
    """Short names of the model's linear layers (what `target_modules` can name)."""
    from torch import nn

    return {name.rsplit(".", 1)[-1] for name, module in model.named_modules() if isinstance(module, nn.Linear)}


def save_peft(model: Any, folder: Path) -> None:
    model.save_pretrained(str(folder))


def load_peft(load_base: Callable[[], Any], folder: Path) -> Any:
    from peft import PeftModel

    return PeftModel.from_pretrained(load_base(), str(folder))


def merge_peft(model: Any) -> Any:
    """Fold the adapter into the base weights (in place) and return the plain transformers model; a model merged
    already (a run's tuned model as it writes text: run/models.py `tuned(merged=True)`) is returned as it is."""
    return model.merge_and_unload() if hasattr(model, "merge_and_unload") else model
