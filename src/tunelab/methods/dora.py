"""DoRA: LoRA whose update is split into a magnitude and a direction (peft's `use_dora`); mergeable like LoRA."""

from __future__ import annotations

from typing import Any, Literal

from tunelab.methods.base import Method
from tunelab.methods.lora import LoraConfig, peft_lora_config
from tunelab.methods.peft_common import load_peft, merge_peft, peft_task_type, save_peft, wrap_with_peft


class DoraConfig(LoraConfig):
    name: Literal["dora"] = "dora"


def wrap(model: Any, config: DoraConfig) -> Any:
    return wrap_with_peft(model, peft_lora_config(config, peft_task_type(model), use_dora=True))


METHOD = Method(
    name="dora",
    config_class=DoraConfig,
    summary="LoRA with a learned magnitude per output; often closer to full fine-tuning, a little slower than LoRA.",
    wrap=wrap,
    save=save_peft,
    load=load_peft,
    merge=merge_peft,
    typical_lr=1e-3,
)
