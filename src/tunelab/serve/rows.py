"""Per-row decoding inside one batched `generate` call: each row keeps its own request's parameters.

transformers' `generate` takes one set of sampling options per call, but a dynamic batch mixes requests with
different temperature, top_p, seed, stop strings and max_tokens. Two of generate's own extension points carry the
difference, with no change to the library:
  RowSampler (a LogitsProcessor) draws each sampled row's token with that request's temperature, top_p and seeded
    generator, and leaves only that token possible, so generate's greedy pick takes it; greedy rows are untouched.
  RowTracker (a StoppingCriteria) reads each new token, detokenizes incrementally, holds back text that may be the
    start of a stop string, streams the rest, and ends the row at EOS, a stop string, max_tokens, a cancel or a
    deadline; generate stops when every row has ended.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Callable

import torch
from transformers import LogitsProcessor, StoppingCriteria


@dataclass
class Row:
    """One choice being generated."""

    index: int  # the choice index in the response
    prompt_ids: list[int]
    max_tokens: int
    temperature: float
    top_p: float
    stop: list[str]
    stop_ids: set[int]
    tokenizer: Any
    generator: torch.Generator | None
    emit: Callable[[int, str], None] | None  # streaming: (choice index, new text)
    is_cancelled: Callable[[], bool]
    deadline: float
    ids: list[int] = field(default_factory=list)
    text: str = ""
    sent: int = 0  # characters of `text` already streamed
    finish_reason: str | None = None


class RowSampler(LogitsProcessor):
    def __init__(self, rows: list[Row]):
        self.rows = rows

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        for position, row in enumerate(self.rows):
            if row.temperature <= 0 or row.finish_reason is not None:
                continue
            token = sample(scores[position], row.temperature, row.top_p, row.generator)
            scores[position] = float("-inf")
            scores[position, token] = 0.0
        return scores


def sample(logits: torch.Tensor, temperature: float, top_p: float, generator: torch.Generator | None) -> int:
    # On the CPU, where the request's seeded generator lives (the model's logits may be on a GPU).
    probs = torch.softmax(logits.float().cpu() / temperature, dim=-1)
    if top_p < 1.0:
        sorted_probs, order = torch.sort(probs, descending=True)
        # keep the smallest set whose mass reaches top_p (the most likely token always stays)
        outside = sorted_probs.cumsum(-1) - sorted_probs >= top_p
        sorted_probs[outside] = 0.0
        probs = torch.zeros_like(probs).scatter_(0, order, sorted_probs)
    return int(torch.multinomial(probs, 1, generator=generator))


class RowTracker(StoppingCriteria):
    def __init__(self, rows: list[Row], clock: Callable[[], float] = time.monotonic):
        self.rows = rows
        self.clock = clock

    def __call__(self, input_ids: torch.LongTensor, scores: Any, **kwargs: Any) -> torch.BoolTensor:
        now = self.clock()
        newest = input_ids[:, -1].tolist()
        for row, token in zip(self.rows, newest):
            if row.finish_reason is None:
                step(row, token, now)
        return torch.tensor([row.finish_reason is not None for row in self.rows], device=input_ids.device)

    def finish(self) -> None:
        """Rows generate ended without a reason (its max_new_tokens) ran out of length."""
        for row in self.rows:
            if row.finish_reason is None:
                end(row, "length", len(row.text))


def step(row: Row, token: int, now: float) -> None:
    if row.is_cancelled():
        row.finish_reason = "cancelled"
        return
    if token in row.stop_ids:
        end(row, "stop", len(row.text))
        return
    row.ids.append(token)
    row.text = row.tokenizer.decode(row.ids, skip_special_tokens=True)
    cut = first_stop(row.text, row.stop)
    if cut is not None:
        end(row, "stop", cut)
    elif len(row.ids) >= row.max_tokens:
        end(row, "length", len(row.text))
    elif now > row.deadline:
        row.finish_reason = "timeout"
    else:
        flush(row, safe_length(row.text, row.stop))


def end(row: Row, reason: str, length: int) -> None:
    row.text = row.text[:length]
    row.finish_reason = reason
    flush(row, length)


def flush(row: Row, length: int) -> None:
    if row.emit is not None and length > row.sent:
        row.emit(row.index, row.text[row.sent:length])
        row.sent = length


def first_stop(text: str, stops: list[str]) -> int | None:
    found = [index for index in (text.find(stop) for stop in stops) if index >= 0]
    return min(found) if found else None


def safe_length(text: str, stops: list[str]) -> int:
    """How much of `text` can be sent: not a half-decoded character, not what may become a stop string."""
    length = len(text)
    while length and text[length - 1] == "\ufffd":
        length -= 1
    held = 0
    for stop in stops:
        for size in range(min(len(stop) - 1, length), held, -1):
            if text[length - size:length] == stop[:size]:
                held = size
                break
    return length - held
