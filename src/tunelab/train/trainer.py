"""What every task's trainer shares: the arguments from the recipe's `train` section and the placement, the
callbacks (progress, train_log.jsonl, TensorBoard/W&B/MLflow, early stopping), and the plain transformers Trainer
that supervised and classification tasks use. Tasks that need another trainer (TRL's) build it from the same parts.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from tunelab.run.record import TrainingSummary
from tunelab.train.trackers import integrations, tracker_callbacks

if TYPE_CHECKING:
    from tunelab.config.schema import TrainSection
    from tunelab.device import Placement
    from tunelab.run.folder import RunDir
    from tunelab.tasks.base import TrainerParts


def training_arguments(train: "TrainSection", run: "RunDir", placement: "Placement",
                       has_validation: bool) -> dict[str, Any]:
    """Keyword arguments of transformers' TrainingArguments (and of TRL's configs, which extend it)."""
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
        save_total_limit=train.save_total_limit,
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
        remove_unused_columns=False,  # the collators need exactly the columns the tasks give them
        dataloader_num_workers=0,
    )


def training_callbacks(train: "TrainSection", run: "RunDir", progress: Any, extra: tuple = ()) -> list[Any]:
    from transformers import EarlyStoppingCallback

    from tunelab.train.callbacks import JsonlLog

    callbacks = [progress, JsonlLog(run.train_log), *tracker_callbacks(train.report_to, run.tensorboard), *extra]
    if train.early_stopping_patience:
        callbacks.append(EarlyStoppingCallback(early_stopping_patience=train.early_stopping_patience))
    return callbacks


def plain_trainer(parts: "TrainerParts") -> Any:
    """transformers' Trainer on rows the task has tokenized.

    TRL's SFTTrainer was measured slower here (bench/train_throughput.py): its chunked fused LM head costs more
    than it saves on CPU, and its tokenization is not needed since rows arrive tokenized with their loss masks.
    """
    from transformers import PrinterCallback, Trainer, TrainingArguments

    trainer = Trainer(
        model=parts.model,
        args=TrainingArguments(**parts.arguments),
        data_collator=parts.data.collator,
        train_dataset=parts.data.train,
        eval_dataset=parts.data.validation,
        processing_class=parts.tokenizer,
        callbacks=parts.callbacks,
    )
    trainer.remove_callback(PrinterCallback)  # it prints raw log dicts; the progress callback shows them instead
    return trainer


def last_checkpoint(run: "RunDir") -> str | None:
    from transformers.trainer_utils import get_last_checkpoint

    return get_last_checkpoint(str(run.checkpoints)) if run.checkpoints.is_dir() else None


def training_summary(trainer: Any, result: Any) -> TrainingSummary:
    state = trainer.state
    eval_losses = [entry["eval_loss"] for entry in state.log_history if "eval_loss" in entry]
    runtime = result.metrics.get("train_runtime") or 0.0
    session_tokens = result.metrics.get("train_num_tokens") or state.num_input_tokens_seen
    return TrainingSummary(
        steps=state.global_step, max_steps=state.max_steps, stopped_early=state.global_step < state.max_steps,
        tokens_seen=state.num_input_tokens_seen, train_loss=result.training_loss,
        final_eval_loss=eval_losses[-1] if eval_losses else None, best_eval_loss=state.best_metric,
        best_checkpoint=state.best_model_checkpoint, train_runtime_seconds=runtime,
        train_tokens_per_second=session_tokens / runtime if runtime else None)
