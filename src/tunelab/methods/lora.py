"""LoRA: low-rank updates on chosen linear layers (peft)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field

from tunelab.methods.base import Method, MethodConfig
from tunelab.methods.peft_common import load_peft, merge_peft, peft_task_type, save_peft, wrap_with_peft


class LoraConfig(MethodConfig):
    name: Literal["lora"] = "lora"
    r: int = Field(16, ge=1, description="Rank of the update matrices.")
    alpha: float = Field(32, gt=0, description="Scaling numerator: the update is scaled by alpha / r.")
    # 0 by default: on a CPU, dropout's random masks cost ~20% of a step and a third of the activations kept for
    # the backward (bench/train_throughput.py --dropout), for a regularizer short fine-tunes rarely need
    dropout: float = Field(0.0, ge=0, lt=1, description="Dropout on the adapter's input.")
    target_modules: list[str] | Literal["all-linear"] = Field(
        "all-linear", description="Linear layer names to adapt, or all-linear (every linear layer but the output head)."
    )
    use_rslora: bool = Field(False, description="Rank-stabilised scaling alpha / sqrt(r).")


def peft_lora_config(config: LoraConfig, task_type: str = "CAUSAL_LM", **extra: Any) -> Any:
    from peft import LoraConfig as PeftLoraConfig

    return PeftLoraConfig(
        r=config.r,
        lora_alpha=config.alpha,
        lora_dropout=config.dropout,
        target_modules=config.target_modules,
        use_rslora=config.use_rslora,
        task_type=task_type,
        **extra,
    )


def wrap(model: Any, config: LoraConfig) -> Any:
    return wrap_with_peft(model, peft_lora_config(config, peft_task_type(model)))


METHOD = Method(
    name="lora",
    config_class=LoraConfig,
    summary="Low-rank adapters on linear layers; small to store, mergeable.",
    wrap=wrap,
    save=save_peft,
    load=load_peft,
    merge=merge_peft,
    bf16_frozen=True,
    typical_lr=1e-3,
)
