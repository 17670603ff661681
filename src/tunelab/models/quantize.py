"""4-bit NF4 base weights for QLoRA, with torchao's NF4Tensor.

Why torchao and not bitsandbytes: bitsandbytes 0.50.2 trains NF4 on CPU, but on a CPU with AVX512-bf16 any
eval or generate forward of a 4-bit layer repacks its weight, after which backward silently drops the input
gradients (loss stalls; the only sign is the warning "bitsandbytes::gemv_4bit: an autograd kernel was not
registered"). Evaluation during training is exactly what tunelab does, so that path is not safe. torchao's NF4Tensor
is a tensor subclass whose `F.linear` is an autograd function: forward dequantizes the block-wise 4-bit weight to
the input's dtype, backward returns grad_output @ W, the same on CPU and GPU, in eval and in training
(tests/unit/test_qlora.py checks the gradients against a dequantized reference after an eval forward and generate).

Each linear layer keeps its class (nn.Linear) with an NF4 weight, so peft's LoRA wraps it like any other layer.
NF4 is QLoRA's format: 64-value blocks with an absmax scale each, the scales themselves quantized to int8 in blocks
("double quantization").
"""

from __future__ import annotations

import contextlib
import logging
from typing import Any, Iterator

from tunelab.errors import TunelabError

# Heads that must stay in full precision: the output embedding (often tied to the input one) and classifier heads.
KEEP_FULL_PRECISION = ("lm_head", "classifier", "score")


@contextlib.contextmanager
def quiet_loggers(*names: str) -> Iterator[None]:
    """Hide import-time warnings that are not the user's business (torchao's optional CUDA kernels failing to
    load on a CPU machine, a torch deprecation notice about one of its enums)."""
    loggers = [logging.getLogger(name) for name in names]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        for logger, level in zip(loggers, levels):
            logger.setLevel(level)


def nf4_functions() -> tuple[Any, type]:
    """torchao's `to_nf4` and `NF4Tensor`, or a clear error where torchao cannot be imported."""
    try:
        with quiet_loggers("torchao", "torch.utils._pytree"):
            from torchao.quantization import to_nf4
            from torchao.quantization.quantize_.workflows.nf4.nf4_tensor import NF4Tensor
    except ImportError as error:
        raise TunelabError(
            f"method qlora: no 4-bit backend: torchao cannot be imported ({error}); install torchao==0.18.0"
        ) from None
    return to_nf4, NF4Tensor


def scaler_block_for(blocks: int, limit: int) -> int:
    """The largest divisor of `blocks` not above `limit`.

    torchao quantizes the per-block scales in groups that must divide the number of blocks; SmolLM2's 576-wide
    projections have 5,184 blocks, which 256 does not divide, so each layer takes the largest group that fits.
    """
    return max(size for size in range(1, min(blocks, limit) + 1) if blocks % size == 0)


def quantizable_layers(model: Any) -> list[tuple[str, Any]]:
    from torch import nn

    output = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    return [(path, module) for path, module in model.named_modules()
            if isinstance(module, nn.Linear) and module is not output
            and path.split(".")[-1] not in KEEP_FULL_PRECISION and path.split(".")[0] not in KEEP_FULL_PRECISION]


def quantize_nf4(model: Any, block_size: int = 64, scaler_block_size: int = 256) -> int:
    """Replace every linear weight but the heads by its NF4 form, in place; returns how many were replaced."""
    from torch import nn

    to_nf4, _ = nf4_functions()
    layers = quantizable_layers(model)
    for path, module in layers:
        rows, cols = module.weight.shape
        if module.weight.numel() % block_size:
            raise TunelabError(
                f"method qlora: no 4-bit backend can quantize layer '{path}' ({rows}x{cols} weights are not a "
                f"multiple of method.block_size={block_size}); choose a block size that divides {rows * cols}"
            )
        blocks = module.weight.numel() // block_size
        quantized = to_nf4(module.weight.detach().contiguous(), block_size, scaler_block_for(blocks, scaler_block_size))
        module.weight = nn.Parameter(quantized, requires_grad=False)
    copy_out_of_checkpoint(model)
    return len(layers)


def copy_out_of_checkpoint(model: Any) -> None:
    """The weights quantization leaves in full precision (the embedding, norms, heads) copied into memory of their
    own. transformers maps a safetensors checkpoint into memory, and one tensor still viewing the map keeps all of
    it: every page quantization read (SmolLM2-135M's fp32 linear weights: 0.4 GB) stayed resident for the whole run,
    QLoRA's training then holding more than LoRA's."""
    for parameter in model.parameters():  # each Parameter once: a tied weight is copied once, and stays tied
        if not is_nf4(parameter):
            parameter.data = parameter.data.clone()


def is_nf4(tensor: Any) -> bool:
    _, nf4_tensor = nf4_functions()
    return isinstance(tensor, nf4_tensor)


def nf4_blocks(model: Any) -> tuple[int, int]:
    """(block_size, scaler_block_size) that rebuild the model's NF4 weights with `quantize_nf4`.

    Each layer took the largest divisor of its block count up to the configured limit; the largest size any layer
    took is a limit that makes every layer take the same size again.
    """
    weights = [module.weight for module in model.modules() if is_nf4(getattr(module, "weight", None))]
    if not weights:
        raise TunelabError("the model holds no NF4 weights")
    return weights[0].block_size, max(weight.scaler_block_size for weight in weights)


def dequantize_nf4(model: Any) -> Any:
    """Replace NF4 weights by their dequantized values (the weights the 4-bit model computes with), in place."""
    from torch import nn

    for _, module in model.named_modules():
        if isinstance(module, nn.Linear) and is_nf4(module.weight):
            module.weight = nn.Parameter(module.weight.get_original_weight(), requires_grad=False)
    return model


def weight_bytes(model: Any) -> int:
    """Bytes the model's parameters and buffers occupy, NF4 weights counted at their packed size."""
    total = 0
    for tensor in [*model.parameters(), *model.buffers()]:
        if is_nf4(tensor):
            total += sum(getattr(tensor, name).numel() * getattr(tensor, name).element_size()
                         for name in tensor.__tensor_flatten__()[0])
        else:
            total += tensor.numel() * tensor.element_size()
    return total
