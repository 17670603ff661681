"""Tokenized rows into training batches: padded, or padding-free (rows concatenated, positions restart per row).

Padding-free batches waste no compute on pad tokens and are exact: with no attention mask and per-row position
ids, transformers builds a block-diagonal causal mask, so no row attends to another. That detection only runs
without a KV cache, hence `use_cache=False` in every training batch (tests/unit/test_batches.py checks the losses
match padded batches).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

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
