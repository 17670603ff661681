"""Tokenized rows into training batches: padded, or padding-free (rows concatenated, positions restart per row).

Padding-free batches waste no compute on pad tokens and are exact: with no attention mask and per-row position
ids, transformers builds a block-diagonal causal mask, so no row attends to another. That detection only runs
without a KV cache, hence `use_cache=False` in every training batch (tests/unit/test_batches.py checks the losses
match padded batches).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from tunelab.data.dataset import TokenizedSplit
from tunelab.data.templates import Encoded


def as_dataset(rows: list[Encoded]) -> Any:
    from datasets import Dataset

    return Dataset.from_dict({"input_ids": [row.input_ids for row in rows], "labels": [row.labels for row in rows]})


@dataclass
class TrainingCollator:
    inner: Any  # TRL's DataCollatorForLanguageModeling
    # Round a padding-free batch's length up to a multiple of this (train.pad_to_multiple_of): see filler_row
    length_multiple: int | None = None

    def __call__(self, examples: list[dict[str, Any]]) -> dict[str, Any]:
        if self.length_multiple and self.inner.padding_free:
            examples = [*examples, *filler_row(examples, self.length_multiple, self.inner.pad_token_id)]
        return {**self.inner(examples), "use_cache": False}


def filler_row(examples: list[dict[str, Any]], multiple: int, pad_token_id: int) -> list[dict[str, Any]]:
    """A row of pad tokens (no labels) that brings a padding-free batch's length to a multiple of `multiple`; none
    where it is one already.

    Why: on CPU, PyTorch's oneDNN kernels create and cache a primitive for every new matmul shape, so batches of
    ever different lengths make the process grow for hundreds of steps (CoNaLa LoRA: RSS +1.7 GB over 60 steps, most
    of it kept by that cache) and pay the creation each time. A few lengths keep both bounded. The filler is a row of
    its own (its positions restart at 0, as every row's do), so no real row attends to it, and it has no labels, so
    the loss is unchanged. (TRL's collator pads a padding-free batch with position 0 at every pad token: each pad
    would be a row of its own, which row attention would lay out as that many rows.)"""
    missing = -sum(len(example["input_ids"]) for example in examples) % multiple
    return [{"input_ids": [pad_token_id] * missing, "labels": [-100] * missing}] if missing else []


def with_length_multiple(collator: Any, multiple: int | None) -> Any:
    """The task's collator, rounding padding-free batches to `multiple` tokens where it is tunelab's."""
    from dataclasses import replace

    return replace(collator, length_multiple=multiple) if isinstance(collator, TrainingCollator) else collator


def training_collator(pad_token_id: int, padding_free: bool) -> TrainingCollator:
    from trl.trainer.sft_trainer import DataCollatorForLanguageModeling

    return TrainingCollator(DataCollatorForLanguageModeling(pad_token_id=pad_token_id, padding_free=padding_free))


def split_counts(splits: Any, tokenized: dict[str, TokenizedSplit]) -> dict[str, Any]:
    """What the run records of each split: its rows and what tokenizing them kept, cut and dropped."""
    from tunelab.run.record import SplitCounts

    return {name: SplitCounts(rows=len(examples), **tokenized[name].counts()) for name, examples in splits.items()}


def language_model_data(splits: Any, tokenized: dict[str, TokenizedSplit], pad_token_id: int, padding_free: bool,
                        state: dict[str, Any] | None = None) -> Any:
    """Training data for a causal LM from tokenized rows (conversations with loss on the answers, or text)."""
    from tunelab.tasks.base import TaskData

    validation = tokenized["validation"]
    return TaskData(splits=splits, train=as_dataset(tokenized["train"].rows),
                    validation=as_dataset(validation.rows) if validation.kept else None,
                    counts=split_counts(splits, tokenized), collator=training_collator(pad_token_id, padding_free),
                    padding_free=padding_free, state=state or {})
