"""Whether a run fits the memory it may use, and what would make it fit: a smaller micro-batch (grad_accum keeping
the global batch), gradient checkpointing, QLoRA, or these together."""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

from tunelab.errors import TunelabError

if TYPE_CHECKING:
    from rich.console import Console

    from tunelab.plan.estimate import Plan
    from tunelab.train.lifecycle import Setup

UNITS = {"": 1, "b": 1, "k": 2**10, "kb": 10**3, "kib": 2**10, "m": 2**20, "mb": 10**6, "mib": 2**20,
         "g": 2**30, "gb": 10**9, "gib": 2**30, "t": 2**40, "tb": 10**12, "tib": 2**40}


def parse_size(text: str) -> int:
    """Bytes in '2GiB', '1500MB', '800M', '3g' or a plain number of bytes."""
    found = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([a-zA-Z]*)\s*", text)
    unit = found.group(2).lower() if found else ""
    if not found or unit not in UNITS:
        raise TunelabError(f"--memory-budget: '{text}' is not a size (e.g. 2GiB, 1500MB, 800M)")
    return int(float(found.group(1)) * UNITS[unit])


def gib(count: int) -> str:
    return f"{count / 2**30:.2f} GiB"


def available_memory(device: str) -> int:
    """What this run may use on the device: the kernel's MemAvailable plus what this process holds already (its
    imports and data are part of the plan's peak), or the GPU's free memory plus what torch holds on it."""
    if device == "cuda":
        import torch

        free, _ = torch.cuda.mem_get_info()
        return free + torch.cuda.memory_allocated()
    return meminfo_available() + own_rss()


def meminfo_available() -> int:
    with open("/proc/meminfo") as meminfo:
        for line in meminfo:
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    import psutil  # not Linux: psutil knows the platform's counter

    return psutil.virtual_memory().available


def own_rss() -> int:
    try:
        with open("/proc/self/statm") as statm:
            import resource

            return int(statm.read().split()[1]) * resource.getpagesize()
    except OSError:
        return 0


def remedies(plan: "Plan", setup: "Setup", limit: int) -> list[tuple[str, int]]:
    """Changes to the recipe that bring the peak under `limit`, each with its peak; the single changes first, and
    all of them together where no single one is enough."""
    from tunelab.plan.estimate import qlora_variant, replanned

    found: list[tuple[str, int]] = []
    batch = plan.batch_size // 2
    while batch >= 1:
        if plan.batch_size % batch == 0:
            smaller = replanned(plan, batch_size=batch)
            if smaller.memory.peak <= limit:
                found.append((f"train.batch_size={batch} train.grad_accum={smaller.grad_accum}", smaller.memory.peak))
                break
        batch //= 2
    if not plan.holding.checkpointing:
        checkpointed = replanned(plan, checkpointing=True)
        if checkpointed.memory.peak <= limit:
            found.append(("train.gradient_checkpointing=true", checkpointed.memory.peak))
    quantized = qlora_variant(plan, setup)
    if quantized is not None and quantized.memory.peak <= limit:
        found.append(("method.name=qlora", quantized.memory.peak))
    if not found:
        smallest = replanned(quantized or plan, batch_size=1, checkpointing=True)
        if smallest.memory.peak <= limit:
            change = " ".join(filter(None, [f"train.batch_size=1 train.grad_accum={smallest.grad_accum}",
                                            "train.gradient_checkpointing=true",
                                            "method.name=qlora" if quantized is not None else ""]))
            found.append((change, smallest.memory.peak))
    return found


def refusal(plan: "Plan", setup: "Setup", limit: int, budget_given: bool) -> str:
    """The one line that refuses a run that cannot fit, naming what would."""
    memory = plan.memory
    where = "the --memory-budget" if budget_given else f"available on {plan.device}"
    line = (f"this run needs about {gib(memory.peak)} at its peak on {plan.device} (weights {gib(memory.weights)}, "
            f"activations {gib(memory.activations)}, gradients and optimizer "
            f"{gib(memory.gradients + memory.optimizer)}), more than the {gib(limit)} {where}")
    found = remedies(plan, setup, limit)
    if not found:
        return line + "; nothing tunelab can change fits: choose a smaller model (model.name) or a larger budget"
    return line + "; it would fit with " + ", or ".join(f"{change} ({gib(peak)})" for change, peak in found)


def check_fits(plan: "Plan", setup: "Setup", budget: int | None) -> None:
    limit = budget if budget is not None else available_memory(plan.device)
    if plan.memory.peak > limit:
        raise TunelabError(refusal(plan, setup, limit, budget is not None))


def plan_and_check(setup: "Setup", console: "Console", budget: int | None) -> None:
    """What `tunelab train` does before it builds the model: print the plan (without calibration: fast) and refuse
    a run that cannot fit, before anything is written."""
    from tunelab.plan.estimate import make_plan
    from tunelab.plan.report import print_plan_summary

    try:
        plan = make_plan(setup)
    except Exception as error:  # noqa: BLE001 (a model the plan cannot describe still trains, as it did before)
        console.print(f"[dim]plan: not estimated ({type(error).__name__}: {error}); memory is not checked[/dim]")
        return
    print_plan_summary(console, plan, budget)
    check_fits(plan, setup, budget)
