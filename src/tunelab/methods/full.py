"""Full fine-tuning: every weight of the model is trained."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Literal

from tunelab.methods.base import Method, MethodConfig


class FullConfig(MethodConfig):
    name: Literal["full"] = "full"


def wrap(model: Any, config: FullConfig) -> Any:
    for parameter in model.parameters():
        parameter.requires_grad_(True)
    return model


def save(model: Any, folder: Path) -> None:
    model.save_pretrained(str(folder))


def load(load_base: Callable[[], Any], folder: Path) -> Any:
    # The folder holds a whole model (causal LM or classifier), so the base is not needed.
    from tunelab.models.classifier import is_sequence_classifier_checkpoint, load_saved_classifier
    from tunelab.models.load import load_causal_lm

    return load_saved_classifier(folder) if is_sequence_classifier_checkpoint(folder) else load_causal_lm(folder)


METHOD = Method(
    name="full",
    config_class=FullConfig,
    summary="All weights trained; best quality per step, largest memory and storage.",
    wrap=wrap,
    save=save,
    load=load,
    merge=lambda model: model,
    is_adapter=False,
    typical_lr=1e-4,
)
