"""Training throughput of tunelab's trainer path against baselines measured in the same run.

Variants, all LoRA on the same model, rows, batch size, steps and precision (bf16 autocast):
  tunelab            what `tunelab train` runs: transformers Trainer, padding-free batches
  tunelab-padded     the same with padded batches (train.padding_free: false)
  trl-sft            TRL's SFTTrainer (padded, gradient checkpointing off)
  plain-loop         a hand-written PyTorch loop with padded batches (the baseline)
Prints tokens/s (real tokens, padding excluded) and each variant's ratio to the baseline.

    python bench/train_throughput.py [--model smollm2-135m-instruct] [--steps 12] [--targets all-linear]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def rows_for(model_name: str, home: Path, count: int):
    """The quick-start rows as `tunelab train` gets them: through the data doctor (cached), tokenized."""
    from tunelab.config.schema import DataSection
    from tunelab.data.cache import prepare_data
    from tunelab.models.load import model_limits, resolve_model
    from tunelab.models.tokenizer import load_tokenizer

    ref = resolve_model(model_name, home)
    tokenizer = load_tokenizer(ref.path)
    data = DataSection(generate={"task": "notes-to-json", "rows": count},
                       system_prompt="You convert order notes to JSON.", max_length=1024)
    limits = model_limits(ref.path, tokenizer)
    rows = prepare_data(data, tokenizer, limits.stop_ids, limits.context, home).tokenized()["train"].rows
    return ref, tokenizer, rows


def lora_model(path: Path, lora):
    from tunelab.methods.lora import wrap
    from tunelab.models.load import load_causal_lm

    return wrap(load_causal_lm(path), lora)


def clock_callback():
    from transformers import TrainerCallback

    class Clock(TrainerCallback):  # time steps 3..N so start-up is not counted
        def on_step_begin(self, args, state, control, **kwargs):
            if state.global_step == 2:
                self.start, self.tokens = time.perf_counter(), state.num_input_tokens_seen

        def on_train_end(self, args, state, control, **kwargs):
            self.rate = (state.num_input_tokens_seen - self.tokens) / (time.perf_counter() - self.start)

    return Clock()


def run_tunelab(path, tokenizer, rows, steps, batch_size, lora, padding_free) -> float:
    from rich.console import Console

    from tunelab.config.schema import Recipe
    from tunelab.data.dataset import TokenizedSplit
    from tunelab.data.split import Splits
    from tunelab.device import Placement
    from tunelab.present.progress import RichProgress
    from tunelab.run.folder import RunDir
    from tunelab.tasks.base import TrainerParts
    from tunelab.tasks.registry import get_task
    from tunelab.train.batches import language_model_data
    from tunelab.train.trainer import training_arguments, training_callbacks

    clock = clock_callback()
    recipe = Recipe.model_validate({
        "data": {"generate": {}}, "method": lora.model_dump(),
        "train": {"max_steps": steps, "batch_size": batch_size, "padding_free": padding_free, "log_every": 1000,
                  "report_to": []},
    })
    tokenized = {"train": TokenizedSplit(rows=rows, kept=len(rows)), "validation": TokenizedSplit(),
                 "test": TokenizedSplit()}
    data = language_model_data(Splits([]), tokenized, tokenizer.pad_token_id, padding_free)
    with tempfile.TemporaryDirectory() as out:
        run = RunDir(Path(out))
        arguments = {**training_arguments(recipe.train, run, Placement("cpu", "bf16"), False), "save_strategy": "no"}
        callbacks = training_callbacks(recipe.train, run, RichProgress(Console(quiet=True)), (clock,))
        get_task("sft").build_trainer(TrainerParts(lora_model(path, lora), tokenizer, data, arguments,
                                                   callbacks)).train()
    return clock.rate


def run_trl(path, tokenizer, rows, steps, batch_size, lora, padding_free) -> float:
    from datasets import Dataset
    from trl import SFTConfig, SFTTrainer

    clock = clock_callback()
    dataset = Dataset.from_dict({"input_ids": [r.input_ids for r in rows], "labels": [r.labels for r in rows]})
    with tempfile.TemporaryDirectory() as out:
        args = SFTConfig(output_dir=out, max_steps=steps, per_device_train_batch_size=batch_size, learning_rate=1e-4,
                         bf16=True, use_cpu=True, report_to=[], disable_tqdm=True, save_strategy="no",
                         padding_free=padding_free, max_length=None, include_num_input_tokens_seen="non_padding",
                         logging_steps=1000, activation_checkpointing=False)
        SFTTrainer(model=lora_model(path, lora), args=args, train_dataset=dataset, processing_class=tokenizer,
                   callbacks=[clock]).train()
    return clock.rate


def run_plain_loop(path, tokenizer, rows, steps, batch_size, lora) -> float:
    import torch

    model = lora_model(path, lora).train()
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    generator = torch.Generator().manual_seed(0)
    order = torch.randperm(len(rows), generator=generator).tolist()
    tokens, start = 0, 0.0
    for step in range(steps):
        if step == 2:
            tokens, start = 0, time.perf_counter()
        chunk = [rows[i] for i in order[step * batch_size : (step + 1) * batch_size]]
        width = max(len(r.input_ids) for r in chunk)
        input_ids = torch.full((len(chunk), width), tokenizer.pad_token_id)
        labels = torch.full((len(chunk), width), -100)
        mask = torch.zeros((len(chunk), width), dtype=torch.long)
        for i, r in enumerate(chunk):
            input_ids[i, : len(r.input_ids)] = torch.tensor(r.input_ids)
            labels[i, : len(r.labels)] = torch.tensor(r.labels)
            mask[i, : len(r.input_ids)] = 1
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss = model(input_ids=input_ids, attention_mask=mask, labels=labels).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad()
        tokens += int(mask.sum())
    return tokens / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--home", default=None, help="tunelab home (default $TUNELAB_HOME or ~/.cache/tunelab)")
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--targets", default="all-linear")
    parser.add_argument("--dropout", type=float, default=0.05, help="LoRA dropout")
    parser.add_argument("--only", default=None, help="comma-separated variants to run")
    options = parser.parse_args()

    import transformers

    from tunelab.paths import tunelab_home

    transformers.logging.set_verbosity_error()
    home = Path(options.home) if options.home else tunelab_home()
    ref, tokenizer, rows = rows_for(options.model, home, options.steps * options.batch_size + 50)
    from tunelab.methods.lora import LoraConfig

    targets = options.targets if options.targets == "all-linear" else options.targets.split(",")
    lora = LoraConfig(target_modules=targets, dropout=options.dropout)
    common = (ref.path, tokenizer, rows, options.steps, options.batch_size, lora)
    variants = {
        "plain-loop": lambda: run_plain_loop(*common),
        "tunelab": lambda: run_tunelab(*common, padding_free=True),
        "tunelab-padded": lambda: run_tunelab(*common, padding_free=False),
        "trl-sft": lambda: run_trl(*common, padding_free=False),
    }
    chosen = options.only.split(",") if options.only else list(variants)
    rates = {name: variants[name]() for name in chosen}
    baseline = rates.get("plain-loop")
    print(f"model {options.model}, LoRA r={lora.r} dropout={lora.dropout} on {options.targets}, "
          f"batch {options.batch_size}, {options.steps} steps (first 2 not timed), bf16")
    for name, rate in rates.items():
        ratio = f"{rate / baseline:.2f}x plain-loop" if baseline else ""
        print(f"{name:18s} {rate:8.1f} tokens/s  {ratio}")


if __name__ == "__main__":
    main()
