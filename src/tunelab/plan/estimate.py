"""A run's plan from what `set_up` checked (train/lifecycle.py): the model's size on the meta device, the data as
the trainer will draw it, how the trainer will hold the model (train/trainer.py Speed), the memory terms, and
(when asked) the time. No weights are loaded, except by a calibration."""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from rich.console import Console

    from tunelab.config.schema import Recipe
    from tunelab.plan.calibrate import TimeEstimate
    from tunelab.plan.data_size import DataSize, Sequences
    from tunelab.plan.memory import Holding, Memory
    from tunelab.plan.model_size import ModelSize
    from tunelab.train.lifecycle import Setup


@dataclass
class Plan:
    model: str
    task: str
    method: str
    device: str
    precision: str
    size: "ModelSize"
    data: "DataSize"
    holding: "Holding"
    memory: "Memory"
    batch_size: int
    grad_accum: int
    padding_free: bool
    time: "TimeEstimate | None" = None
    sequences: "Sequences | None" = None  # what each training row puts through the model (for remedies)


def plan_setup(recipe: "Recipe", home: Path, console: "Console", device: str) -> "Setup":
    """What `set_up` checks before a run, without the run folder's checks."""
    from tunelab.run.chain import chained_recipe
    from tunelab.train.lifecycle import checked_inputs

    return checked_inputs(chained_recipe(recipe, home), home, console, device)


def holding_for(setup: "Setup", size: "ModelSize") -> "Holding":
    from tunelab.methods.base import wants_merge
    from tunelab.methods.qlora import QloraConfig
    from tunelab.plan.memory import Holding
    from tunelab.train.trainer import training_speed

    recipe, method, placement = setup.recipe, setup.method, setup.placement
    speed = training_speed(recipe.train, method.bf16_frozen, placement, setup.data.padding_free)
    options = recipe.method
    return Holding(
        compute_bytes=4 if placement.precision == "fp32" else 2,
        frozen_bytes=2 if speed.bf16_frozen else 4,
        nf4_block=options.block_size if isinstance(options, QloraConfig) else None,
        stream_bytes=2 if speed.bf16_frozen else 4,
        norms_train=not method.is_adapter,
        trained_linears=size.trained_linears,
        lora_rank=getattr(options, "r", 0) if method.is_adapter else 0,
        label_loss=speed.label_loss,
        row_attention=speed.row_attention,
        checkpointing=recipe.train.gradient_checkpointing,
        merges=wants_merge(method, recipe.output.merge),
        device=placement.device,
        length_multiple=speed.length_multiple,
    )


def make_plan(setup: "Setup") -> Plan:
    from tunelab.plan.data_size import data_size, training_sequences
    from tunelab.plan.memory import estimate_memory
    from tunelab.plan.model_size import model_size

    recipe, train = setup.recipe, setup.recipe.train
    state = setup.data.state or {}
    size = model_size(setup.ref.path, setup.method, recipe.method, setup.task.head_labels(state))
    holding = holding_for(setup, size)
    sequences = training_sequences(setup.data.train, setup.tokenizer, state)
    data = data_size(sequences, train.batch_size, train.grad_accum, train.epochs, train.max_steps,
                     setup.data.padding_free, train.seed, holding.length_multiple)
    return Plan(model=setup.ref.name, task=setup.task.name, method=setup.method.name,
                device=setup.placement.device, precision=setup.placement.precision, size=size, data=data,
                holding=holding, memory=estimate_memory(size, holding, data.peak_batch),
                batch_size=train.batch_size, grad_accum=train.grad_accum,
                padding_free=setup.data.padding_free, sequences=sequences)


def replanned(plan: Plan, batch_size: int | None = None, checkpointing: bool | None = None,
              size: "ModelSize | None" = None, holding: "Holding | None" = None) -> Plan:
    """The same plan with a smaller micro-batch (grad_accum keeping the global batch), gradient checkpointing or
    another method's size and holding: what a remedy would change."""
    from tunelab.plan.data_size import peak_batch
    from tunelab.plan.memory import estimate_memory

    batch = batch_size or plan.batch_size
    accum = plan.grad_accum * plan.batch_size // batch
    holding = holding or plan.holding
    if checkpointing is not None:
        holding = replace(holding, checkpointing=checkpointing)
    size = size or plan.size
    sequences = plan.sequences
    peak = (peak_batch(sequences.lengths, sequences.labels, batch, plan.data.steps * accum, plan.padding_free, 0,
                       holding.length_multiple, sequences.per_row)
            if batch != plan.batch_size and sequences else plan.data.peak_batch)
    return replace(plan, batch_size=batch, grad_accum=accum, size=size, holding=holding,
                   memory=estimate_memory(size, holding, peak))


def qlora_variant(plan: Plan, setup: "Setup") -> Plan | None:
    """The plan with QLoRA instead of the recipe's method (its LoRA defaults where the method had none), or None
    where the method is QLoRA already."""
    from tunelab.methods.lora import LoraConfig
    from tunelab.methods.qlora import QloraConfig
    from tunelab.methods.registry import get_method
    from tunelab.plan.model_size import model_size

    options = setup.recipe.method
    if isinstance(options, QloraConfig):
        return None
    lora = options.model_dump(include=set(LoraConfig.model_fields) - {"name"}) if isinstance(options, LoraConfig) \
        else {}
    qlora = QloraConfig(**lora)
    size = model_size(setup.ref.path, get_method("qlora"), qlora)
    holding = replace(plan.holding, frozen_bytes=4, stream_bytes=4,
                      nf4_block=qlora.block_size, norms_train=False, trained_linears=size.trained_linears,
                      lora_rank=qlora.r, merges=setup.recipe.output.merge)
    return replanned(plan, size=size, holding=holding)


def with_time(plan: Plan, setup: "Setup", calibrate: bool, peak_gflops: float | None) -> Plan:
    from tunelab.plan.calibrate import calibrated_time, peak_time

    if calibrate:
        plan.time = calibrated_time(setup, plan.data)
    elif peak_gflops:
        plan.time = peak_time(plan.size, plan.holding, plan.data, peak_gflops)
    return plan

