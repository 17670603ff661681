"""What every task's trainer shares: the arguments from the recipe's `train` section and the placement, the
callbacks (progress, train_log.jsonl, TensorBoard/W&B/MLflow, early stopping), and the plain transformers Trainer
that supervised and classification tasks use. Tasks that need another trainer (TRL's) build it from the same parts.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from tunelab.run.record import TrainingSummary
from tunelab.train.trackers import integrations, tracker_callbacks

if TYPE_CHECKING:
    from tunelab.config.schema import TrainSection
    from tunelab.device import Placement
    from tunelab.run.folder import RunDir
    from tunelab.tasks.base import TrainerParts
    from tunelab.train.engines import World


def training_arguments(train: "TrainSection", run: "RunDir", placement: "Placement",
                       has_validation: bool, world: "World | None" = None) -> dict[str, Any]:
    """Keyword arguments of transformers' TrainingArguments (and of TRL's configs, which extend it); under several
    processes, with the engine's (DDP, FSDP2, DeepSpeed: train/engines.py)."""
    from tunelab.train.distributed import launch_folder
    from tunelab.train.engines import World, engine_arguments

    eval_strategy = ("steps" if train.eval_every else "epoch") if has_validation else "no"
    save_strategy, save_every = ("steps" if train.save_every else "epoch"), train.save_every
    early_stopping = bool(train.early_stopping_patience)
    if early_stopping:  # the best checkpoint must be saved at each validation to be restorable
        save_strategy, save_every = eval_strategy, train.eval_every
    return dict(
        output_dir=str(run.checkpoints),
        num_train_epochs=train.epochs,
        max_steps=train.max_steps or -1,
        learning_rate=train.lr,
        lr_scheduler_type="constant_with_warmup" if train.scheduler == "constant" else train.scheduler,
        warmup_steps=train.warmup,
        per_device_train_batch_size=train.batch_size,
        per_device_eval_batch_size=train.batch_size,
        gradient_accumulation_steps=train.grad_accum,
        weight_decay=train.weight_decay,
        max_grad_norm=train.max_grad_norm,
        seed=train.seed,
        data_seed=train.seed,
        bf16=placement.precision == "bf16",
        fp16=placement.precision == "fp16",
        use_cpu=placement.device == "cpu",
        eval_strategy=eval_strategy,
        eval_steps=train.eval_every,
        save_strategy=save_strategy,
        save_steps=save_every,
        save_total_limit=None,  # rotation is checkpoints.CheckpointCommit's, after each commit
        restore_callback_states_from_checkpoint=True,  # the training clock and early stopping go on where they were
        load_best_model_at_end=early_stopping,
        metric_for_best_model="eval_loss" if early_stopping else None,
        greater_is_better=False if early_stopping else None,
        logging_steps=train.log_every,
        logging_first_step=True,
        include_num_input_tokens_seen="non_padding",
        report_to=integrations(train.report_to),
        run_name=run.root.name,
        disable_tqdm=True,
        activation_checkpointing=train.gradient_checkpointing,
        optim="adamw_torch_fused" if train.fused_optimizer else "adamw_torch",
        remove_unused_columns=False,  # the collators need exactly the columns the tasks give them
        dataloader_num_workers=0,
        **engine_arguments(train, world or World(), launch_folder(run)),
    )


def training_callbacks(train: "TrainSection", run: "RunDir", progress: Any, extra: tuple = ()) -> list[Any]:
    from transformers import EarlyStoppingCallback

    from tunelab.train.callbacks import JsonlLog
    from tunelab.train.checkpoints import CheckpointCommit, TrainingClock

    callbacks = [progress, TrainingClock(), JsonlLog(run.train_log),
                 *tracker_callbacks(train.report_to, run.tensorboard), *extra]
    if train.early_stopping_patience:
        callbacks.append(EarlyStoppingCallback(early_stopping_patience=train.early_stopping_patience))
    # Last, so that every other callback's on_save runs before the checkpoint is marked complete.
    callbacks.append(CheckpointCommit(run.checkpoints, train.save_total_limit))
    return callbacks


@dataclass(frozen=True)
class Speed:
    """The speed levers a trainer applies (TrainSection's fields of the same names, where they apply)."""

    label_loss: bool = False
    row_attention: bool = False
    bf16_frozen: bool = False
    compile_layers: bool = False
    length_multiple: int | None = None  # train.pad_to_multiple_of, for padding-free batches (train/batches.py)


def training_speed(train: "TrainSection", method_holds_bf16: bool, placement: "Placement", padding_free: bool) -> Speed:
    return Speed(label_loss=train.label_loss and padding_free, row_attention=train.row_attention and padding_free,
                 # FSDP2 wants one dtype per sharded group and DeepSpeed casts the whole model itself: DDP only
                 bf16_frozen=(train.bf16_frozen and method_holds_bf16 and placement.precision == "bf16"
                              and train.distributed == "ddp"),
                 compile_layers=train.compile_layers,
                 length_multiple=train.pad_to_multiple_of if padding_free else None)


def plain_trainer(parts: "TrainerParts") -> Any:
    """transformers' Trainer on rows the task has tokenized, with the speed levers `parts.speed` turns on.

    TRL's SFTTrainer was measured slower here (bench/train_throughput.py): its defaults turn on gradient
    checkpointing and compute the loss from the whole logits, and its tokenization is not needed since rows arrive
    tokenized with their loss masks.
    """
    from transformers import PrinterCallback, Trainer, TrainingArguments

    from tunelab.train.batches import with_length_multiple
    from tunelab.train.frozen_weights import hold_frozen_in_bf16
    from tunelab.train.label_loss import LabelPositionsTrainer, accepts_logits_to_keep
    from tunelab.train.row_attention import use_row_attention

    speed = parts.speed or Speed()
    if speed.bf16_frozen:
        hold_frozen_in_bf16(parts.model)
        stop_input_casts(parts.model)
    if speed.row_attention:
        use_row_attention(parts.model)
    if speed.compile_layers:
        compile_decoder_layers(parts.model)
    label_positions = speed.label_loss and accepts_logits_to_keep(parts.model)
    trainer_class = LabelPositionsTrainer if label_positions else Trainer
    extra = {"positions_multiple": speed.length_multiple} if label_positions else {}
    trainer = trainer_class(
        model=parts.model,
        args=TrainingArguments(**parts.arguments),
        data_collator=with_length_multiple(parts.data.collator, speed.length_multiple),
        train_dataset=parts.data.train,
        eval_dataset=parts.data.validation,
        processing_class=parts.tokenizer,
        callbacks=parts.callbacks,
        **extra,
    )
    trainer.remove_callback(PrinterCallback)  # it prints raw log dicts; the progress callback shows them instead
    return trainer


def compile_decoder_layers(model: Any) -> int:
    """torch.compile each decoder layer (the classes transformers names in `_no_split_modules`), with dynamic
    shapes since padding-free batches change length every step; returns how many. The layers, not the whole model:
    the loss and the row attention's data-dependent sizes stay outside the graphs."""
    from tunelab.models.load import transformers_model

    inner = transformers_model(model)
    names = set(getattr(inner, "_no_split_modules", None) or [])
    compiled = 0
    for module in inner.modules():
        if type(module).__name__ in names:
            module.compile(dynamic=True)
            compiled += 1
    return compiled


def stop_input_casts(model: Any) -> None:
    """peft casts each adapted layer's input to its adapter weights' dtype (fp32) before the adapter's matmul, which
    autocast then casts back to bf16: two copies of every adapted input per step, for nothing under autocast.
    `cast_input_dtype_enabled` is peft's own switch for this (peft.helpers.disable_input_dtype_casting sets it)."""
    from peft.tuners.tuners_utils import BaseTunerLayer

    for module in model.modules():
        if isinstance(module, BaseTunerLayer):
            module.cast_input_dtype_enabled = False


def training_clock(trainer: Any) -> float:
    """Seconds in training steps over the whole run (the clock is a new object when restored from a checkpoint)."""
    from tunelab.train.checkpoints import TrainingClock

    clocks = [cb for cb in trainer.callback_handler.callbacks if isinstance(cb, TrainingClock)]
    return clocks[0].seconds if clocks else 0.0


def whole_run_loss(log_history: list[dict[str, Any]], until_step: int) -> tuple[float, int] | None:
    """The mean training loss over steps 1..until_step from the logged losses (each the mean since the log
    before it), and the steps it covers; None where nothing was logged."""
    total, covered, previous = 0.0, 0, 0
    for entry in log_history:
        if "loss" in entry and entry.get("step", 0) <= until_step:
            steps = entry["step"] - previous
            total, covered, previous = total + entry["loss"] * steps, covered + steps, entry["step"]
    return (total / covered, covered) if covered else None


def training_summary(trainer: Any, result: Any | None, resumed_at: int, seconds: float) -> TrainingSummary:
    """Totals over the whole run, whatever number of --resume it took: steps, tokens, loss, `seconds` in steps.

    `result` is the last train() call's output (None when the run needed no more steps); its loss covers only that
    call's steps, so the steps before `resumed_at` are added from the log history the checkpoint kept."""
    state = trainer.state
    eval_losses = [entry["eval_loss"] for entry in state.log_history if "eval_loss" in entry]
    earlier = whole_run_loss(state.log_history, resumed_at) if resumed_at else None
    segment_steps = state.global_step - resumed_at
    if result is not None and earlier:
        loss, covered = earlier
        train_loss = (loss * covered + result.training_loss * segment_steps) / (covered + segment_steps)
    elif result is not None:
        train_loss = result.training_loss
    else:
        train_loss = earlier[0] if earlier else None
    return TrainingSummary(
        steps=state.global_step, max_steps=state.max_steps, stopped_early=state.global_step < state.max_steps,
        tokens_seen=state.num_input_tokens_seen, train_loss=train_loss,
        final_eval_loss=eval_losses[-1] if eval_losses else None, best_eval_loss=state.best_metric,
        best_checkpoint=state.best_model_checkpoint, train_runtime_seconds=seconds,
        train_tokens_per_second=state.num_input_tokens_seen / seconds if seconds else None)
