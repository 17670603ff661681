"""Supervised fine-tuning of a causal LM: a recipe in, a run folder out.

The order matters: everything that can fail on the user's input (model, data, template, options) is checked
before the run folder is created or cleared, so a bad recipe never costs the user an earlier run.
"""

from __future__ import annotations

import gc
from dataclasses import asdict
from functools import partial
from pathlib import Path
from typing import Any, Callable

from rich.console import Console

from tunelab.config.load import recipe_to_yaml
from tunelab.config.schema import Recipe, TrainSection
from tunelab.data.cache import Prepared, doctor_summary, prepare_data, sft_tokenized
from tunelab.data.prepare import LoadedData, TokenizedSplit, tokenize_examples, write_data
from tunelab.data.templates import resolve_chat_template, stop_token_ids
from tunelab.errors import TunelabError
from tunelab.files import write_text_atomic
from tunelab.methods.base import check_merge_request, no_merge_note, wants_merge
from tunelab.methods.registry import get_method
from tunelab.models.load import ModelRef, load_causal_lm, model_stop_ids, resolve_model
from tunelab.models.tokenizer import load_tokenizer
from tunelab.runs import RunDir, check_output_dir, new_record, now, prepare_run_dir
from tunelab.train.callbacks import JsonlLog
from tunelab.train.precision import device_type, resolve_precision
from tunelab.train.trackers import check_trackers, integrations, tracker_callbacks

# Recipe sections a resumed run may change: they do not alter what is trained.
RESUMABLE_CHANGES = ("eval", "objective", "output")


def train(
    recipe: Recipe,
    home: Path,
    console: Console,
    resume: bool = False,
    overwrite: bool = False,
    callbacks: tuple = (),
    convert: Callable[[LoadedData], LoadedData] | None = None,
) -> RunDir:
    """`convert` turns the loaded rows into the conversations to train on (classification by a causal LM)."""
    from transformers import set_seed

    root = Path(recipe.output.dir)
    prior = check_run_dir(root, resume, overwrite, recipe)
    method = get_method(recipe.method.name)
    check_merge_request(method, "merge" in recipe.output.model_fields_set and recipe.output.merge)
    ref = resolve_model(recipe.model.name, home, console=console)
    tokenizer = load_tokenizer(ref.path, resolve_chat_template(recipe.model.chat_template))
    model = load_causal_lm(ref.path)
    stop_ids = stop_token_ids(tokenizer, model_stop_ids(model))
    # The data doctor (cleaning, dedup, contamination, template lint), cached: the data `data prepare` made.
    prepared = prepare_data(recipe.data, tokenizer, stop_ids, model_context(model), home)
    loaded = prepared.loaded()
    if prior is not None:
        check_same_data(prior, loaded)
    if convert is not None:  # rows turned into the conversations to train on (classification by a causal LM)
        loaded = convert(loaded)
    check_evaluation(recipe, loaded)
    check_trackers(recipe.train.report_to)
    tokenized = sft_tokenized(prepared) if convert is None else tokenize_splits(loaded, tokenizer, stop_ids, recipe)
    check_trainable(recipe, tokenized)
    device = device_type()
    precision = resolve_precision(recipe.train.precision, device)
    set_seed(recipe.train.seed)  # adapter initialisation is random: the same recipe must give the same run
    model = method.wrap(model, recipe.method)

    run = prepare_run_dir(root, resume, overwrite)
    record = prior or new_record("sft", recipe.model_dump(mode="json"))
    record.update(describe_run(ref, loaded, tokenized, model, recipe, device, precision))
    write_run_start(run, record, recipe, prepared, console)
    if convert is not None:  # the splits as trained on and evaluated: the converted rows
        write_data(loaded, run.data)

    build = partial(build_trainer, recipe, run, model, tokenizer, tokenized, device, precision, console, callbacks)
    train_and_save(build, method, tokenizer, run, record, recipe, console, resume)
    return run


def train_and_save(build: Callable[[], Any], method: Any, tokenizer: Any, run: RunDir, record: dict[str, Any],
                   recipe: Recipe, console: Console, resume: bool) -> None:
    """Train with the trainer `build` makes, save the model (and the merged one when asked), and keep run.json
    true to what happened: completed, failed or interrupted (a later --resume starts from the last checkpoint)."""
    try:
        trainer = build()
        result = trainer.train(resume_from_checkpoint=last_checkpoint(run) if resume else None)
        method.save(trainer.model, run.model)
        tokenizer.save_pretrained(str(run.model))
        record.update(training_summary(trainer, result))
        if wants_merge(method, recipe.output.merge):
            merged = method.merge(trainer.model)
            merged.save_pretrained(str(run.merged))
            tokenizer.save_pretrained(str(run.merged))
            record["artifacts"]["merged"] = "merged"
        elif note := no_merge_note(method, recipe.output.merge):
            console.print(f"[dim]{note}[/dim]")
            record["merge_note"] = note
    except BaseException as error:
        record.update(status="interrupted" if isinstance(error, KeyboardInterrupt) else "failed",
                      error=str(error) or type(error).__name__, ended_at=now())
        run.write_record(record)
        raise
    record.update(status="completed", ended_at=now())
    run.write_record(record)
    del trainer
    gc.collect()


def write_run_start(run: RunDir, record: dict[str, Any], recipe: Recipe, prepared: Prepared,
                    console: Console) -> None:
    """The run folder before the first step: the prepared data, the recipe as resolved, run.json; the plan shown."""
    record["data"]["doctor"] = doctor_summary(prepared)
    prepared.copy_to(run.data)
    write_text_atomic(run.recipe_path, recipe_to_yaml(recipe))
    run.write_record(record)
    print_plan(console, record, run)
    print_doctor(console, prepared, run)


def print_doctor(console: Console, prepared: Prepared, run: RunDir) -> None:
    counts = prepared.report["counts"]
    console.print(f"[bold]data doctor[/bold] {counts['rejected']:,} of {counts['read']:,} rows rejected (reasons in "
                  f"{run.data / 'rejected.jsonl'}, report in data_report.html); "
                  f"{'prepared data reused (cache hit)' if prepared.from_cache else 'data prepared now and cached'}")


def tokenize_splits(loaded: LoadedData, tokenizer: Any, stop_ids: set[int],
                    recipe: Recipe) -> dict[str, TokenizedSplit]:
    """Token ids and labels of rows a `convert` hook produced (the data doctor tokenized the rows it was given)."""

    return {name: tokenize_examples(examples, tokenizer, stop_ids, recipe.data.max_length, recipe.data.overlong)
            for name, examples in loaded.splits.items()}


def check_run_dir(root: Path, resume: bool, overwrite: bool, recipe: Recipe) -> dict[str, Any] | None:
    """Refuse early what prepare_run_dir would refuse later; on --resume, the run's record."""
    run = check_output_dir(root, resume, overwrite)
    if not resume:
        return None
    prior = run.read_record()
    check_same_recipe(prior["recipe"], recipe.model_dump(mode="json"))
    if last_checkpoint(run) is None:
        raise TunelabError(f"{root}: the run saved no checkpoint yet, so there is nothing to resume from")
    return prior


def model_context(model: Any) -> int | None:
    return getattr(model.config, "max_position_embeddings", None)


def check_same_recipe(before: dict[str, Any], after: dict[str, Any], path: str = "") -> None:
    for key in sorted(set(before) | set(after)):
        if not path and key in RESUMABLE_CHANGES:
            continue
        old, new = before.get(key), after.get(key)
        if isinstance(old, dict) and isinstance(new, dict):
            check_same_recipe(old, new, f"{path}{key}.")
        elif old != new:
            raise TunelabError(
                f"--resume: the recipe changed since the run started ({path}{key}: {old!r} -> {new!r}); "
                "resume with the same recipe or start a new run"
            )


def check_same_data(prior: dict[str, Any], loaded: LoadedData) -> None:
    before = {item["role"]: item["sha256"] for item in prior.get("data", {}).get("files", [])}
    for item in loaded.files:
        if before.get(item.role) not in (None, item.sha256):
            raise TunelabError(f"--resume: {item.path} changed since the run started (sha256 differs)")


def check_trainable(recipe: Recipe, tokenized: dict[str, TokenizedSplit]) -> None:
    train_split = tokenized["train"]
    if train_split.kept == 0:
        raise TunelabError(
            f"no training rows left: all {train_split.dropped_overlong} are longer than data.max_length="
            f"{recipe.data.max_length}; raise it or set data.overlong: truncate"
        )
    if recipe.train.early_stopping_patience and tokenized["validation"].kept == 0:
        raise TunelabError("train.early_stopping_patience needs validation rows (data.validation or data.split)")


def check_evaluation(recipe: Recipe, loaded: LoadedData) -> None:
    """What the evaluation after training would refuse (metrics that do not fit, a missing probe file) is refused
    now, before the training it would come after."""
    from tunelab.evaluate.forgetting import load_probe
    from tunelab.evaluate.plan import plan_evaluation

    if loaded.splits.test and (recipe.eval.after_train or recipe.objective is not None):
        plan_evaluation(loaded.splits.test, recipe.eval, recipe.objective)
    elif recipe.objective is not None:
        raise TunelabError("objective: needs test rows to be checked on (data.test or data.split.test > 0)")
    load_probe(recipe.eval.forgetting)


def describe_run(ref: ModelRef, loaded: LoadedData, tokenized: dict[str, TokenizedSplit], model: Any,
                 recipe: Recipe, device: str, precision: str) -> dict[str, Any]:
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    return {
        "base_model": {"name": ref.name, "kind": ref.kind, "path": str(ref.path)},
        "method": {"name": recipe.method.name, "trainable_parameters": trainable, "total_parameters": total},
        "data": {
            "files": [asdict(item) for item in loaded.files],
            "splits": {name: {"rows": len(getattr(loaded.splits, name)), **split.counts()}
                       for name, split in tokenized.items()},
        },
        "device": device,
        "precision": precision,
        "padding_free": recipe.train.padding_free and get_method(recipe.method.name).padding_free,
        "artifacts": {"model": "model", "merged": None, "checkpoints": "checkpoints", "data": "data"},
    }


def print_plan(console: Console, record: dict[str, Any], run: RunDir) -> None:
    splits = record["data"]["splits"]
    method = record["method"]
    rows = ", ".join(f"{name} {info['kept']}" for name, info in splits.items())
    skipped = sum(info["dropped_overlong"] for info in splits.values())
    truncated = sum(info["truncated"] for info in splits.values())
    console.print(f"[bold]run[/bold] {run.root}  base {record['base_model']['name']}  method {method['name']} "
                  f"({method['trainable_parameters']:,} of {method['total_parameters']:,} parameters trained)")
    console.print(f"[bold]data[/bold] rows: {rows}; over max_length: {skipped} dropped, {truncated} truncated; "
                  f"{splits['train']['tokens']:,} train tokens  [bold]device[/bold] {record['device']} "
                  f"{record['precision']}")


def training_arguments(train: TrainSection, run: RunDir, device: str, precision: str, has_validation: bool) -> Any:
    from transformers import TrainingArguments

    eval_strategy = ("steps" if train.eval_every else "epoch") if has_validation else "no"
    save_strategy, save_every = ("steps" if train.save_every else "epoch"), train.save_every
    early_stopping = bool(train.early_stopping_patience)
    if early_stopping:  # the best checkpoint must be saved at each validation to be restorable
        save_strategy, save_every = eval_strategy, train.eval_every
    return TrainingArguments(
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
        bf16=precision == "bf16",
        fp16=precision == "fp16",
        use_cpu=device == "cpu",
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
        remove_unused_columns=False,  # the collator needs input_ids and labels only, and gets exactly those
        dataloader_num_workers=0,
    )


def build_trainer(recipe: Recipe, run: RunDir, model: Any, tokenizer: Any, tokenized: dict[str, TokenizedSplit],
                  device: str, precision: str, console: Console, callbacks: tuple) -> Any:
    """transformers' Trainer on pre-tokenized rows.

    TRL's SFTTrainer was measured slower here (bench/train_throughput.py): its chunked fused LM head costs more
    than it saves on CPU, and its tokenization is not needed since rows arrive tokenized with their loss masks.
    Its padding-free collator is used as is.
    """
    from transformers import EarlyStoppingCallback, PrinterCallback, Trainer

    from tunelab.train.batches import as_dataset, training_collator
    from tunelab.train.progress import RichProgress

    has_validation = tokenized["validation"].kept > 0
    trackers = tracker_callbacks(recipe.train.report_to, run.tensorboard)
    extra = [RichProgress(console), JsonlLog(run.train_log), *trackers, *callbacks]
    if recipe.train.early_stopping_patience:
        extra.append(EarlyStoppingCallback(early_stopping_patience=recipe.train.early_stopping_patience))
    trainer = Trainer(
        model=model,
        args=training_arguments(recipe.train, run, device, precision, has_validation),
        # A method that prepends virtual tokens to each row says it cannot train on padding-free batches.
        data_collator=training_collator(tokenizer.pad_token_id,
                                        recipe.train.padding_free and get_method(recipe.method.name).padding_free),
        train_dataset=as_dataset(tokenized["train"].rows),
        eval_dataset=as_dataset(tokenized["validation"].rows) if has_validation else None,
        processing_class=tokenizer,
        callbacks=extra,
    )
    trainer.remove_callback(PrinterCallback)  # it prints raw log dicts; RichProgress shows them instead
    return trainer


def last_checkpoint(run: RunDir) -> str | None:
    from transformers.trainer_utils import get_last_checkpoint

    return get_last_checkpoint(str(run.checkpoints)) if run.checkpoints.is_dir() else None


def training_summary(trainer: Any, result: Any) -> dict[str, Any]:
    state = trainer.state
    eval_losses = [entry["eval_loss"] for entry in state.log_history if "eval_loss" in entry]
    runtime = result.metrics.get("train_runtime") or 0.0
    session_tokens = result.metrics.get("train_num_tokens") or state.num_input_tokens_seen
    return {
        "steps": state.global_step,
        "max_steps": state.max_steps,
        "stopped_early": state.global_step < state.max_steps,
        "tokens_seen": state.num_input_tokens_seen,
        "metrics": {
            "train_loss": result.training_loss,
            "final_eval_loss": eval_losses[-1] if eval_losses else None,
            "best_eval_loss": state.best_metric,
            "best_checkpoint": state.best_model_checkpoint,
            "train_runtime_seconds": runtime,
            "train_tokens_per_second": session_tokens / runtime if runtime else None,
        },
    }
