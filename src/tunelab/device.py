"""Where models run and in what precision: decided once, here, and passed down as a `Placement`.

Every command that runs a model (train, eval, generate, chat, classify, export, serve, compare-methods) takes
`--device auto|cpu|cuda` and asks `resolve_placement`; nothing else looks at torch.cuda or the CPU's features.
Weights stay float32; bf16 (or fp16 on a GPU without bf16) is autocast, as transformers' Trainer does it.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Any

from tunelab.errors import TunelabError

DEVICES = ("auto", "cpu", "cuda")
PRECISIONS = ("auto", "bf16", "fp16", "fp32")


@dataclass(frozen=True)
class Placement:
    device: str  # cpu | cuda
    precision: str  # bf16 | fp16 | fp32: the compute precision (weights are float32, the rest autocast)

    def autocast(self) -> Any:
        """The context every forward pass of an evaluation, generation or server batch runs in."""
        import torch

        if self.precision == "fp32":
            return contextlib.nullcontext()
        dtype = torch.bfloat16 if self.precision == "bf16" else torch.float16
        return torch.autocast(self.device, dtype=dtype)

    def place(self, model: Any) -> Any:
        """The model on this device (a 4-bit or float32 model alike: `.to` moves every tensor)."""
        return model.to(self.device)

    def describe(self) -> str:
        return f"{self.device} {self.precision}"


def cuda_available() -> bool:
    import torch

    return torch.cuda.is_available()


def cpu_has_fast_bf16() -> bool:
    """True where the CPU computes bf16 natively (AVX512-BF16 / AMX); elsewhere bf16 is emulated and slower."""
    import torch

    try:
        return bool(torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def resolve_device(requested: str = "auto") -> str:
    if requested not in DEVICES:
        raise TunelabError(f"--device: '{requested}' is not one of {', '.join(DEVICES)}")
    if requested == "cuda" and not cuda_available():
        raise TunelabError("--device cuda: no CUDA GPU is visible to torch here; use --device cpu or auto")
    if requested == "auto":
        return "cuda" if cuda_available() else "cpu"
    return requested


def resolve_precision(requested: str, device: str, cpu_auto: str = "bf16") -> str:
    """bf16, fp16 or fp32 for a requested precision on `device`.

    fp16 is refused on a CPU (hundreds of times slower than bf16 there). `auto` means bf16 where the device computes
    it natively, else fp16 on a GPU and fp32 on a CPU; `cpu_auto="fp32"` makes a CPU's auto fp32 (the server's
    default: bf16 autocast measured slower for small-batch CPU generation, see README).
    """
    import torch

    if requested not in PRECISIONS:
        raise TunelabError(f"precision: '{requested}' is not one of {', '.join(PRECISIONS)}")
    if device == "cpu":
        if requested == "fp16":
            raise TunelabError("precision fp16 on a CPU is hundreds of times slower than bf16; use bf16 or fp32")
        if requested == "bf16" and not cpu_has_fast_bf16():
            raise TunelabError("precision bf16: this CPU has no native bf16; use fp32 or auto")
        if requested == "auto":
            return "bf16" if cpu_auto == "bf16" and cpu_has_fast_bf16() else "fp32"
        return requested
    if requested == "auto":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    if requested == "bf16" and not torch.cuda.is_bf16_supported():
        raise TunelabError("precision bf16: this GPU has no bf16; use fp16, fp32 or auto")
    return requested


def resolve_placement(device: str = "auto", precision: str = "auto", cpu_auto: str = "bf16") -> Placement:
    chosen = resolve_device(device)
    return Placement(chosen, resolve_precision(precision, chosen, cpu_auto))
