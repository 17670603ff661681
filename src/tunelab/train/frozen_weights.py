"""Frozen base weights held in bf16 while training in bf16.

Under bf16 autocast a frozen fp32 weight is cast to bf16 by every matmul that reads it: each step converts the whole
base model again, forward and backward, for values that never change, and keeps the casts alive for the backward.
Holding the frozen weights in bf16 once gives the matmuls the very same bf16 operands without the casts. The
embedding and the norms go to bf16 too, so the residual stream between the layers is bf16, as in any model loaded in
bf16 (the norms still compute in fp32 inside): the activations kept for the backward halve, and so does the memory
the base takes (bench/train_throughput.py measures both). Only the trained parameters (the adapter) stay fp32, for
the optimizer. The loss curve follows the autocast one within bf16 rounding; in fp32 nothing is cast.

The cast is lossy for weights that are not bf16 values, so the trained model is never merged from these weights:
the lifecycle merges the saved adapter onto a freshly loaded base (train/lifecycle.py `fit`).
"""

from __future__ import annotations

from typing import Any


def hold_frozen_in_bf16(model: Any) -> int:
    """Cast `model`'s frozen fp32 parameters to bf16; returns how many tensors were cast."""
    import torch

    cast = 0
    for parameter in model.parameters():
        if not parameter.requires_grad and parameter.dtype == torch.float32:
            parameter.data = parameter.data.to(torch.bfloat16)
            cast += 1
    return cast
