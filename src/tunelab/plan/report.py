"""The plan as the user reads it (a table on the console, two lines before training) and as JSON (--json)."""

from __future__ import annotations

from dataclasses import asdict
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from rich.console import Console

    from tunelab.plan.estimate import Plan

MIB = 2**20


def plan_json(plan: "Plan", budget: int | None = None) -> dict[str, Any]:
    from tunelab.plan.fit import available_memory

    size, data, memory = plan.size, plan.data, plan.memory
    return {
        "model": plan.model, "task": plan.task, "method": plan.method, "device": plan.device,
        "precision": plan.precision, "batch_size": plan.batch_size, "grad_accum": plan.grad_accum,
        "parameters": {"total": size.total, "trainable": size.trainable, "base": size.base,
                       "counted_on": "the wrapped model on the meta device" if size.exact else "a formula",
                       "architecture": asdict(size.architecture)},
        "data": {"rows": data.rows, "tokens": data.tokens, "label_tokens": data.label_tokens,
                 "longest_row": data.longest_row, "steps": data.steps, "micro_batches": data.micro_batches,
                 "tokens_per_step": round(data.tokens_per_step, 1), "trained_tokens": data.trained_tokens,
                 "peak_micro_batch": asdict(data.peak_batch), "batch_shapes": data.shapes},
        "holding": asdict(plan.holding),
        "memory": {**{f"{name}_mib": value for name, value in memory.as_mib().items()},
                   "peak_mib": round(memory.peak / MIB, 1),
                   "budget_mib": round(budget / MIB, 1) if budget is not None else None,
                   "available_mib": round(available_memory(plan.device) / MIB, 1)},
        "time": asdict(plan.time) if plan.time else None,
    }


def mib(count: int) -> str:
    return f"{count / MIB:,.0f} MiB"


def duration(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f} s"
    return f"{seconds / 60:.1f} min" if seconds < 7200 else f"{seconds / 3600:.1f} h"


def print_plan(console: "Console", plan: "Plan", budget: int | None = None) -> None:
    from rich.table import Table

    size, data, memory, holding = plan.size, plan.data, plan.memory, plan.holding
    console.print(f"[bold]plan[/bold] {plan.model}  task {plan.task}  method {plan.method}  "
                  f"{plan.device} {plan.precision}")
    console.print(f"[bold]parameters[/bold] {size.total:,} total, {size.trainable:,} trainable "
                  f"({100 * size.trainable / size.total:.2f}%; "
                  f"{'counted on the wrapped meta model' if size.exact else 'formula'})")
    console.print(f"[bold]data[/bold] {data.rows:,} training rows, {data.tokens:,} tokens ({data.label_tokens:,} "
                  f"label tokens), longest row {data.longest_row}; {data.steps} steps of {plan.batch_size} x "
                  f"{plan.grad_accum} rows, ~{data.tokens_per_step:,.0f} tokens each, {data.trained_tokens:,} in all")
    table = Table(title="memory per device", show_header=True, header_style="bold")
    table.add_column("term")
    table.add_column("size", justify="right")
    table.add_column("how")
    weights_how = (f"NF4 4-bit (block {holding.nf4_block}) linear layers, the rest fp32" if holding.nf4_block else
                   f"frozen base in {'bf16' if holding.frozen_bytes == 2 else 'fp32'}")
    peak = data.peak_batch
    rows = [
        ("process overhead", memory.overhead, "python + torch + transformers + peft + trl imports, data, trainer"),
        ("weights", memory.weights, weights_how),
        ("trained parameters", memory.adapter, "fp32"),
        ("gradients", memory.gradients, "fp32, one per trained parameter"),
        ("optimizer state", memory.optimizer, "AdamW: 2 fp32 states per trained parameter"),
        ("autocast weight copies", memory.autocast_copies, "bf16 casts of trained weights, kept for the backward"),
        ("activations", memory.activations,
         f"largest micro-batch: {peak.rows} rows, {peak.tokens} tokens, {peak.label_tokens} labels"
         f"{', checkpointed' if holding.checkpointing else ''}"),
    ]
    for term, value, how in rows:
        table.add_row(term, mib(value), how)
    other = ("without" if holding.checkpointing else "with")
    other_value = memory.activations_plain if holding.checkpointing else memory.activations_checkpointed
    table.add_row(f"  (activations {other} checkpointing)", mib(other_value), "")
    table.add_row("peak in training", mib(memory.train_peak), "")
    if memory.load_peak:
        table.add_row("peak while loading", mib(memory.load_peak), "the base loads in fp32")
    if memory.merge_peak:
        table.add_row("peak while merging", mib(memory.merge_peak), "a fresh fp32 base for the merged model")
    table.add_row("[bold]estimated peak[/bold]", f"[bold]{mib(memory.peak)}[/bold]",
                  "RSS of the process" if plan.device == "cpu" else "GPU memory")
    console.print(table)
    print_fit(console, plan, budget)
    if plan.time:
        console.print(f"[bold]time[/bold] ~{duration(plan.time.train_seconds)} of training at "
                      f"{plan.time.tokens_per_second:,.0f} tokens/s ({plan.time.source}); {plan.time.excluded}")
    else:
        console.print("[dim]time: --calibrate times 3 steps here, or --peak-gflops X computes it from a peak[/dim]")


def print_fit(console: "Console", plan: "Plan", budget: int | None) -> None:
    from tunelab.plan.fit import available_memory

    limit = budget if budget is not None else available_memory(plan.device)
    what = "budget" if budget is not None else "available"
    verdict = "[green]fits[/green]" if plan.memory.peak <= limit else "[red]does not fit[/red]"
    console.print(f"{verdict}: {mib(plan.memory.peak)} of {mib(limit)} {what} on {plan.device}")


def print_plan_summary(console: "Console", plan: "Plan", budget: int | None) -> None:
    """Two lines before training: the sizes and the memory verdict."""
    size, data, memory = plan.size, plan.data, plan.memory
    console.print(f"[bold]plan[/bold] {size.trainable:,} of {size.total:,} parameters trained; {data.steps} steps, "
                  f"~{data.trained_tokens:,} tokens; peak ~{mib(memory.peak)} (weights {mib(memory.weights)}, "
                  f"activations {mib(memory.activations)}, gradients + optimizer "
                  f"{mib(memory.gradients + memory.optimizer)})")
    print_fit(console, plan, budget)
