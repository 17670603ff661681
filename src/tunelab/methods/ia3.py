"""IA3: learned vectors that rescale attention keys/values and feed-forward activations (peft); mergeable."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field

from tunelab.errors import TunelabError
from tunelab.methods.base import Method, MethodConfig
from tunelab.methods.peft_common import load_peft, merge_peft, peft_task_type, save_peft, wrap_with_peft


class Ia3Config(MethodConfig):
    name: Literal["ia3"] = "ia3"
    target_modules: list[str] | None = Field(
        None, description="Layers whose output (or, for feed-forward layers, input) is rescaled; None: peft's "
        "choice for the architecture (keys, values and the feed-forward output projection)."
    )
    feedforward_modules: list[str] | None = Field(
        None, description="Which of target_modules are feed-forward layers (scaled on their input); None: peft's "
        "choice for the architecture."
    )


def peft_ia3_config(model: Any, config: Ia3Config) -> Any:
    from peft import IA3Config

    if (config.target_modules is None) != (config.feedforward_modules is None):
        raise TunelabError("method.feedforward_modules: give both target_modules and feedforward_modules, or neither")
    try:
        return IA3Config(target_modules=config.target_modules, feedforward_modules=config.feedforward_modules,
                         task_type=peft_task_type(model))
    except ValueError as error:  # feedforward_modules not a subset of target_modules
        raise TunelabError(f"method.feedforward_modules: {error}") from None


def wrap(model: Any, config: Ia3Config) -> Any:
    peft_config = peft_ia3_config(model, config)
    try:
        return wrap_with_peft(model, peft_config)
    except ValueError as error:
        if "target_modules" in str(error):  # peft knows no default layers for this architecture
            raise TunelabError(f"method.target_modules: {error}; name the layers to scale") from None
        raise


METHOD = Method(
    name="ia3",
    config_class=Ia3Config,
    summary="Learned rescaling vectors on keys, values and feed-forward layers; the fewest trainable parameters "
    "of the weight-based methods, mergeable.",
    wrap=wrap,
    save=save_peft,
    load=load_peft,
    merge=merge_peft,
    bf16_frozen=True,
    typical_lr=3e-2,
)
