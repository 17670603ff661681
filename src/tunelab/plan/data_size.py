"""The training data as the trainer will see it: rows, tokens and label tokens after the data doctor, the number of
optimizer steps, and the micro-batches those steps draw (the largest sets the activation memory).

Supervised and classification rows arrive tokenized. The preference and RL tasks hand TRL's trainers (and PPO's)
text rows that they tokenize themselves: those are tokenized here as the trainer will (the prompt in the chat
template, each answer after it), and a row counts as the sequences its trainer runs through the model at once
(`Sequences.per_row`): a preference pair's chosen and rejected answers, a feedback row's answer and the mismatched one
KTO's KL term reads; a prompt as long as its longest completion."""

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
    # distinct micro-batch shapes the run is expected to meet: on CPU each new one costs oneDNN's set-up once
    # (plan/calibrate.py); few where train.pad_to_multiple_of rounds batches
    shapes: int = 1


@dataclass(frozen=True)
class Sequences:
    lengths: list[int]  # tokens of each row's longest sequence
    labels: list[int]  # label tokens of each row (all its sequences)
    per_row: int = 1  # sequences a row puts through the model together (padded to the longest)


def row_lengths(train: Any) -> tuple[list[int], list[int]]:
    """Tokens and label tokens of each tokenized training row (a class id counts as one label)."""
    ids = train["input_ids"]
    labels = train["labels"] if "labels" in train.column_names else [None] * len(ids)
    lengths = [len(row) for row in ids]
    label_counts = [sum(1 for token in row[1:] if token != -100) if isinstance(row, list) else 1 for row in labels]
    return lengths, label_counts


def training_sequences(train: Any, tokenizer: Any, state: dict[str, Any]) -> Sequences:
    """What each training row puts through the model, by the columns the task's trainer reads."""
    columns = set(train.column_names)
    if "input_ids" in columns:
        return Sequences(*row_lengths(train))
    if {"chosen_ids", "rejected_ids"} <= columns:  # the reward model: both answers through the scalar head
        pairs = list(zip(train["chosen_ids"], train["rejected_ids"]))
        return Sequences([max(len(a), len(b)) for a, b in pairs], [2] * len(pairs), 2)
    cap = state.get("max_length") or None
    prompts = [prompt_tokens(prompt, tokenizer) for prompt in train["prompt"]]
    if {"chosen", "rejected"} <= columns:  # DPO, ORPO, SimPO: chosen and rejected, each after the prompt
        answers = [(answer_tokens(a, tokenizer), answer_tokens(b, tokenizer))
                   for a, b in zip(train["chosen"], train["rejected"])]
        return Sequences([capped(p + max(a, b), cap) for p, (a, b) in zip(prompts, answers)],
                         [a + b for a, b in answers], 2)
    if "completion" in columns:  # KTO: the answer, and a mismatched one for its KL term
        answers = [answer_tokens(answer, tokenizer) for answer in train["completion"]]
        return Sequences([capped(p + a, cap) for p, a in zip(prompts, answers)], answers, 2)
    # prompts answered while training (GRPO, RLOO, PPO): each as long as its longest completion
    generated = state.get("max_completion_length") or state.get("max_new_tokens") or 0
    return Sequences([p + generated for p in prompts], [generated] * len(prompts))


def prompt_tokens(prompt: Any, tokenizer: Any) -> int:
    """Messages in the chat template with the assistant's turn opened; text as it is."""
    from tunelab.data.templates import encode_prompt, tokens

    return len(encode_prompt(tokenizer, prompt) if isinstance(prompt, list) else tokens(tokenizer, prompt))


def answer_tokens(answer: Any, tokenizer: Any) -> int:
    """An answer's tokens after its prompt: the text, and the end of its turn (two tokens in a chat template)."""
    from tunelab.data.templates import tokens

    text = answer[-1]["content"] if isinstance(answer, list) else answer
    return len(tokens(tokenizer, text)) + (2 if isinstance(answer, list) else 1)


def capped(length: int, cap: int | None) -> int:
    return min(length, cap) if cap else length


def optimizer_steps(rows: int, batch_size: int, grad_accum: int, epochs: float, max_steps: int | None) -> int:
    """As transformers' Trainer counts them: max_steps, else epochs x update steps per epoch."""
    if max_steps:
        return max_steps
    per_epoch = max(math.ceil(math.ceil(rows / batch_size) / grad_accum), 1)
    return math.ceil(epochs * per_epoch)


def make_batch(lengths: list[int], labels: list[int], padding_free: bool, multiple: int | None = None,
               per_row: int = 1) -> Batch:
    """A micro-batch of rows of these lengths (each `per_row` sequences, padded); padding-free batches rounded up
    to `multiple` tokens by a filler row (train/batches.py filler_row), which row attention lays out as one more
    row."""
    filler = -sum(lengths) % multiple if padding_free and multiple else 0
    rows = len(lengths) * per_row + (1 if filler else 0)
    grid = rows * max(lengths + [filler])
    return Batch(rows=rows, tokens=sum(lengths) + filler if padding_free else grid, label_tokens=sum(labels),
                 padded_tokens=grid)


def drawn_batches(lengths: list[int], labels: list[int], batch_size: int, micro_batches: int, padding_free: bool,
                  seed: int, multiple: int | None = None, per_row: int = 1) -> list[list[Batch]]:
    """The first `micro_batches` micro-batches of a few random row orders, as the Trainer's shuffled sampler draws
    them."""
    import random

    generator, orders = random.Random(seed), []
    for _ in range(SIMULATED_ORDERS):
        batches: list[Batch] = []
        while len(batches) < micro_batches:
            order = list(range(len(lengths)))
            generator.shuffle(order)
            for start in range(0, len(order), batch_size):
                chosen = order[start:start + batch_size]
                batches.append(make_batch([lengths[i] for i in chosen], [labels[i] for i in chosen], padding_free,
                                          multiple, per_row))
        orders.append(batches[:micro_batches])
    return orders


def peak_batch(lengths: list[int], labels: list[int], batch_size: int, micro_batches: int, padding_free: bool,
               seed: int, multiple: int | None = None, per_row: int = 1) -> Batch:
    """The largest micro-batch (by tokens) among the first `micro_batches` of a few random row orders; their
    median, so one unlucky order does not set the estimate."""
    return peak_of(drawn_batches(lengths, labels, batch_size, micro_batches, padding_free, seed, multiple, per_row))


def peak_of(orders: list[list[Batch]]) -> Batch:
    largest = [max(batches, key=lambda batch: (batch.padded_tokens, batch.tokens)) for batches in orders]
    return sorted(largest, key=lambda batch: batch.tokens)[len(largest) // 2]


def distinct_shapes(orders: list[list[Batch]]) -> int:
    """Distinct packed or padded lengths among the drawn micro-batches (median over the orders): the shapes every
    decoder layer's matmuls meet. (The head's label positions add a few of their own, for one matmul; row attention's
    [rows x longest row] grid none: its kernel sets nothing up per shape.)"""
    counts = sorted(len({batch.tokens for batch in batches}) for batches in orders)
    return counts[len(counts) // 2]


def data_size(sequences: Sequences, batch_size: int, grad_accum: int, epochs: float, max_steps: int | None,
              padding_free: bool, seed: int, multiple: int | None = None) -> DataSize:
    lengths, labels = sequences.lengths, sequences.labels
    rows = len(lengths)
    steps = optimizer_steps(rows, batch_size, grad_accum, epochs, max_steps)
    micro_batches = steps * grad_accum
    mean_row = sequences.per_row * sum(lengths) / rows
    rows_drawn = min(micro_batches * batch_size, math.ceil(epochs * rows)) if not max_steps else \
        micro_batches * batch_size
    orders = drawn_batches(lengths, labels, batch_size, micro_batches, padding_free, seed, multiple,
                           sequences.per_row)
    return DataSize(rows=rows, tokens=sequences.per_row * sum(lengths), label_tokens=sum(labels),
                    longest_row=max(lengths),
                    steps=steps, micro_batches=micro_batches,
                    tokens_per_step=mean_row * batch_size * grad_accum, trained_tokens=int(mean_row * rows_drawn),
                    peak_batch=peak_of(orders), shapes=distinct_shapes(orders))
