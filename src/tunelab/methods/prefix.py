"""Prefix tuning: trainable key/value vectors prepended at every attention layer (peft)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field

from tunelab.methods.base import Method, MethodConfig
from tunelab.methods.peft_common import load_peft, peft_task_type, save_peft, wrap_with_peft
from tunelab.methods.prompt_learning import NO_MERGE_REASON


class PrefixConfig(MethodConfig):
    name: Literal["prefix"] = "prefix"
    num_virtual_tokens: int = Field(20, ge=1, description="Key/value positions prepended at every layer.")
    prefix_projection: bool = Field(
        False, description="Learn the prefix through a two-layer MLP (more stable, more parameters during training)."
    )
    encoder_hidden_size: int | None = Field(
        None, ge=1, description="Hidden size of that MLP; None: the model's hidden size."
    )


def wrap(model: Any, config: PrefixConfig) -> Any:
    from peft import PrefixTuningConfig

    options = {"encoder_hidden_size": config.encoder_hidden_size} if config.encoder_hidden_size else {}
    peft_config = PrefixTuningConfig(num_virtual_tokens=config.num_virtual_tokens, task_type=peft_task_type(model),
                                     prefix_projection=config.prefix_projection, **options)
    return wrap_with_peft(model, peft_config)


METHOD = Method(
    name="prefix",
    config_class=PrefixConfig,
    summary="Trainable key/value prefixes at every layer; tiny to store, cannot merge, trains on padded batches.",
    wrap=wrap,
    save=save_peft,
    load=load_peft,
    padding_free=False,
    no_merge_reason=NO_MERGE_REASON,
    bf16_frozen=True,
    typical_lr=1e-2,
)
