"""The training data as the trainer will see it: rows, tokens and label tokens after the data doctor, the number of
optimizer steps, and the micro-batches those steps draw (the largest sets the activation memory)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

SIMULATED_ORDERS = 4  # random row orders drawn to find the largest micro-batch a run is likely to meet


@dataclass(frozen=True)
class Batch:
    rows: int
    tokens: int  # real tokens (padding-free) or rows x longest row (padded batches)
    label_tokens: int
    padded_tokens: int  # rows x longest row: the grid row attention and padded batches compute on


@dataclass(frozen=True)
class DataSize:
    rows: int
    tokens: int
    label_tokens: int
    longest_row: int
    steps: int
    micro_batches: int  # micro-batches the run draws: steps x grad_accum
    tokens_per_step: float  # mean real tokens per optimizer step
    trained_tokens: int  # real tokens the run trains on, over all its steps
    peak_batch: Batch  # the micro-batch with the most tokens the run is expected to meet


def row_lengths(train: Any) -> tuple[list[int], list[int]]:
    """Tokens and label tokens of each training row (a class id counts as one label)."""
    ids = train["input_ids"]
    labels = train["labels"] if "labels" in train.column_names else [None] * len(ids)
    lengths = [len(row) for row in ids]
    label_counts = [sum(1 for token in row[1:] if token != -100) if isinstance(row, list) else 1 for row in labels]
    return lengths, label_counts


def optimizer_steps(rows: int, batch_size: int, grad_accum: int, epochs: float, max_steps: int | None) -> int:
    """As transformers' Trainer counts them: max_steps, else epochs x update steps per epoch."""
    if max_steps:
        return max_steps
    per_epoch = max(math.ceil(math.ceil(rows / batch_size) / grad_accum), 1)
    return math.ceil(epochs * per_epoch)


def make_batch(lengths: list[int], labels: list[int], padding_free: bool, multiple: int | None = None) -> Batch:
    """A micro-batch of rows of these lengths; padding-free batches rounded up to `multiple` tokens by a filler row
    (train/batches.py filler_row), which row attention lays out as one more row."""
    filler = -sum(lengths) % multiple if padding_free and multiple else 0
    rows = len(lengths) + (1 if filler else 0)
    grid = rows * max(lengths + [filler])
    return Batch(rows=rows, tokens=sum(lengths) + filler if padding_free else grid, label_tokens=sum(labels),
                 padded_tokens=grid)


def peak_batch(lengths: list[int], labels: list[int], batch_size: int, micro_batches: int, padding_free: bool,
               seed: int, multiple: int | None = None) -> Batch:
    """The largest micro-batch (by tokens) among the first `micro_batches` of a few random row orders, as the
    Trainer's shuffled sampler draws them; their median, so one unlucky order does not set the estimate."""
    import random

    generator, largest = random.Random(seed), []
    for _ in range(SIMULATED_ORDERS):
        batches: list[Batch] = []
        while len(batches) < micro_batches:
            order = list(range(len(lengths)))
            generator.shuffle(order)
            for start in range(0, len(order), batch_size):
                chosen = order[start:start + batch_size]
                batches.append(make_batch([lengths[i] for i in chosen], [labels[i] for i in chosen], padding_free,
                                          multiple))
        largest.append(max(batches[:micro_batches], key=lambda batch: (batch.padded_tokens, batch.tokens)))
    return sorted(largest, key=lambda batch: batch.tokens)[len(largest) // 2]


def data_size(train: Any, batch_size: int, grad_accum: int, epochs: float, max_steps: int | None,
              padding_free: bool, seed: int, multiple: int | None = None) -> DataSize:
    lengths, labels = row_lengths(train)
    rows = len(lengths)
    steps = optimizer_steps(rows, batch_size, grad_accum, epochs, max_steps)
    micro_batches = steps * grad_accum
    mean_row = sum(lengths) / rows
    rows_drawn = min(micro_batches * batch_size, math.ceil(epochs * rows)) if not max_steps else \
        micro_batches * batch_size
    return DataSize(rows=rows, tokens=sum(lengths), label_tokens=sum(labels), longest_row=max(lengths),
                    steps=steps, micro_batches=micro_batches,
                    tokens_per_step=mean_row * batch_size * grad_accum, trained_tokens=int(mean_row * rows_drawn),
                    peak_batch=peak_batch(lengths, labels, batch_size, micro_batches, padding_free, seed, multiple))
