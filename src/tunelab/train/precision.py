"""Choose the device and numeric precision of a run."""

from __future__ import annotations

from tunelab.errors import TunelabError


def device_type() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def cpu_has_fast_bf16() -> bool:
    """True where the CPU computes bf16 natively (AVX512-BF16 / AMX); elsewhere bf16 is emulated and slower."""
    import torch

    try:
        return bool(torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def resolve_precision(requested: str, device: str) -> str:
    """bf16, fp16 or fp32 for `train.precision` on `device`; fp16 is refused on CPU (hundreds of times slower)."""
    import torch

    if device == "cpu":
        if requested == "fp16":
            raise TunelabError("train.precision: fp16 on CPU is hundreds of times slower than bf16; use bf16 or fp32")
        if requested == "bf16" and not cpu_has_fast_bf16():
            raise TunelabError("train.precision: this CPU has no native bf16; use fp32 or auto")
        if requested == "auto":
            return "bf16" if cpu_has_fast_bf16() else "fp32"
        return requested
    if requested == "auto":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    return requested
