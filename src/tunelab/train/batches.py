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

    def __call__(self, examples: list[dict[str, Any]]) -> dict[str, Any]:
        return {**self.inner(examples), "use_cache": False}


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
