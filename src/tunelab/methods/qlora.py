"""QLoRA: LoRA on a base model whose linear weights are held in 4-bit NF4 (see models/quantize.py for the backend).

The adapter folder is an ordinary peft LoRA adapter: `PeftModel.from_pretrained` loads it onto the base model as
is (full-precision weights: close to, not exactly, what was trained), and tunelab loads it onto the same NF4 base
it was trained on (exactly what was trained). The merged model folds the adapter into the dequantized NF4 weights,
so it computes what the trained 4-bit model computed, in full precision.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Literal

from pydantic import Field

from tunelab.methods.base import Method
from tunelab.methods.lora import LoraConfig, peft_lora_config
from tunelab.methods.peft_common import merge_peft, peft_task_type, save_peft, wrap_with_peft

QUANTIZATION_FILE = "tunelab_quantization.json"


class QloraConfig(LoraConfig):
    name: Literal["qlora"] = "qlora"
    block_size: int = Field(64, ge=16, description="Weights per NF4 block (one absmax scale each); QLoRA uses 64.")
    scaler_block_size: int = Field(
        256, ge=1, description="Block scales per int8 group in the double quantization (at most; each layer takes "
        "the largest group size that divides its block count)."
    )


def wrap(model: Any, config: QloraConfig) -> Any:
    from tunelab.models.quantize import quantize_nf4

    quantize_nf4(model, config.block_size, config.scaler_block_size)
    return wrap_with_peft(model, peft_lora_config(config, peft_task_type(model)))


def save(model: Any, folder: Path) -> None:
    import json

    from tunelab.models.quantize import nf4_blocks

    save_peft(model, folder)
    block_size, scaler_block_size = nf4_blocks(model)
    # How the base was quantized, so tunelab rebuilds the exact 4-bit base (peft's own files stay as peft wrote them).
    (folder / QUANTIZATION_FILE).write_text(json.dumps(
        {"format": "nf4", "backend": "torchao", "block_size": block_size, "scaler_block_size": scaler_block_size},
        indent=2) + "\n", encoding="utf-8")


def load(load_base: Callable[[], Any], folder: Path) -> Any:
    import json

    from peft import PeftModel

    from tunelab.models.quantize import quantize_nf4

    quantization = json.loads((folder / QUANTIZATION_FILE).read_text(encoding="utf-8"))
    base = load_base()
    quantize_nf4(base, quantization["block_size"], quantization["scaler_block_size"])
    return PeftModel.from_pretrained(base, str(folder))


def merge(model: Any) -> Any:
    from tunelab.models.quantize import dequantize_nf4

    dequantize_nf4(model.get_base_model())
    return merge_peft(model)


METHOD = Method(
    name="qlora",
    config_class=QloraConfig,
    summary="LoRA on a 4-bit NF4 base (torchao): the base takes ~1/7 of its fp32 memory; mergeable.",
    wrap=wrap,
    save=save,
    load=load,
    merge=merge,
    generate_merged=False,  # merging dequantizes the base: the memory QLoRA saves, spent again
    typical_lr=1e-3,
)
