"""Frozen base weights held in bf16 while training in bf16.

Under bf16 autocast a frozen fp32 weight is cast to bf16 by every matmul that reads it: each step converts the whole
base model again, forward and backward, for values that never change. Casting the frozen linear layers' weights
once gives every matmul the very same bf16 operands (the loss curve is the one autocast gives) without the casts,
and halves the memory the base takes. The output embedding is left as it is: it is tied to the input embedding,
whose fp32 output is the residual stream autocast keeps in fp32.

The cast is lossy for weights that are not bf16 values, so the trained model is never merged from these weights:
the lifecycle merges the saved adapter onto a freshly loaded base (train/lifecycle.py `fit`).
"""

from __future__ import annotations

from typing import Any


def hold_frozen_in_bf16(model: Any) -> int:
    """Cast the frozen fp32 weights (and biases) of `model`'s linear layers to bf16; returns how many tensors."""
    import torch

    output = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    cast = 0
    for module in model.modules():
        if not isinstance(module, torch.nn.Linear) or module is output:
            continue
        for parameter in (module.weight, module.bias):
            if parameter is not None and not parameter.requires_grad and parameter.dtype == torch.float32:
                parameter.data = parameter.data.to(torch.bfloat16)
                cast += 1
    return cast
