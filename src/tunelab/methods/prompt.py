"""Prompt tuning: trainable embeddings of virtual tokens put in front of every input (peft)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, model_validator

from tunelab.methods.base import Method, MethodConfig
from tunelab.methods.peft_common import load_peft, peft_task_type, save_peft, wrap_with_peft
from tunelab.methods.prompt_learning import NO_MERGE_REASON


class PromptConfig(MethodConfig):
    name: Literal["prompt"] = "prompt"
    num_virtual_tokens: int = Field(20, ge=1, description="Trainable embeddings put in front of every input.")
    init_text: str | None = Field(
        None, description="Initialise the virtual tokens from this text's token embeddings (e.g. a short task "
        "description) instead of randomly; the text is repeated or cut to num_virtual_tokens."
    )

    @model_validator(mode="after")
    def text_fits(self) -> "PromptConfig":
        if self.init_text is not None and not self.init_text.strip():
            raise ValueError("method.init_text is empty; give a task description or leave it out")
        return self


def wrap(model: Any, config: PromptConfig) -> Any:
    from peft import PromptTuningConfig

    options = {}
    if config.init_text:
        # peft reads the tokenizer from the base checkpoint folder (the model's own, never downloaded).
        options = {"prompt_tuning_init": "TEXT", "prompt_tuning_init_text": config.init_text,
                   "tokenizer_name_or_path": model.name_or_path}
    peft_config = PromptTuningConfig(num_virtual_tokens=config.num_virtual_tokens, task_type=peft_task_type(model),
                                     **options)
    return wrap_with_peft(model, peft_config)


METHOD = Method(
    name="prompt",
    config_class=PromptConfig,
    summary="Trainable input embeddings (soft prompt); the smallest adapter, cannot merge, trains on padded batches.",
    wrap=wrap,
    save=save_peft,
    load=load_peft,
    padding_free=False,
    no_merge_reason=NO_MERGE_REASON,
    bf16_frozen=True,
    typical_lr=3e-2,
)
