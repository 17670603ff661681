"""Per-row decoding in one batch: each row keeps its own request's parameters.

A batch mixes requests with different temperature, top_p, top_k, seed, stop strings, max_tokens and logprobs. The
engine's decoding loop (engine.py) calls these after every forward pass:
  RowSampler (shaped as transformers' LogitsProcessor) draws each sampled row's token with that request's
    temperature, top_p, top_k and seeded generator, and leaves only that token possible, so the greedy pick takes
    it; greedy rows are untouched. It keeps the step's log-softmax for rows that asked for logprobs.
  advance reads each row's new token, detokenizes incrementally, holds back text that may be the start of a stop
    string, streams the rest, and ends the row at EOS, a stop string, max_tokens, a cancel or a deadline.

A row's failure is that row's alone: logits that are not finite, a sampler or detokenizer that raises, a streaming
callback that raises each end only that row (finish_reason "error", the reason in `failure`); the other rows of the
batch go on with exactly the tokens they would have had alone.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

import torch
from transformers import LogitsProcessor


@dataclass
class TokenLogprob:
    """A token's log-probability under the model, and the most likely tokens at its position."""

    token: int
    logprob: float
    top: list[tuple[int, float]]


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
    emit: Callable[[int, str, list[TokenLogprob]], None] | None  # streaming: (choice index, new text, its tokens'
    #   logprobs: those recorded since the last call, when the row has logprobs)
    is_cancelled: Callable[[], bool]
    deadline: float
    top_k: int = 0  # 0: no top-k cut
    logprobs: int | None = None  # None: no logprobs; k: each new token's logprob and its k most likely alternatives
    prompt_logprobs: bool = False  # also score the prompt's tokens (completions' echo)
    ids: list[int] = field(default_factory=list)
    text: str = ""
    sent: int = 0  # characters of `text` already streamed
    scores_sent: int = 0  # entries of `token_logprobs` already streamed
    finish_reason: str | None = None
    failure: str | None = None  # why this row failed (finish_reason "error")
    token_logprobs: list[TokenLogprob] = field(default_factory=list)  # one per token in `ids`
    stop_score: TokenLogprob | None = None  # the stop token (EOS) that ended the row, which `ids` leaves out
    prompt_scores: list[TokenLogprob | None] = field(default_factory=list)  # one per prompt token; the first None
    step_logprobs: Any = None  # this step's log-softmax over the vocabulary (rows with logprobs)

    @property
    def live(self) -> bool:
        return self.finish_reason is None


def fail(row: Row, reason: str) -> None:
    row.failure = reason
    row.finish_reason = "error"


class RowSampler(LogitsProcessor):
    def __init__(self, rows: list[Row]):
        self.rows = rows

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        broken = (torch.isnan(scores).any(-1) | torch.isposinf(scores).any(-1) | torch.isneginf(scores).all(-1))
        broken = broken.tolist()
        wants_logprobs = any(row.live and row.logprobs is not None for row in self.rows)
        logprobs = torch.log_softmax(scores.float(), dim=-1) if wants_logprobs else None
        for position, row in enumerate(self.rows):
            if not row.live:
                continue
            if broken[position]:
                fail(row, "the model's logits for this request are not finite (NaN or inf)")
            else:
                try:
                    self.decide(row, position, scores, logprobs)
                except Exception as error:  # this row's failure, never its batch's
                    fail(row, f"sampling failed: {type(error).__name__}: {error}")
            if not row.live:  # a failed row still needs a valid next token for generate; it is never read
                only(scores, position, 0)
        return scores

    @staticmethod
    def decide(row: Row, position: int, scores: torch.Tensor, logprobs: torch.Tensor | None) -> None:
        if row.logprobs is not None:
            row.step_logprobs = logprobs[position]
        if row.temperature > 0:
            token = sample(scores[position], row.temperature, row.top_p, row.generator, row.top_k)
            only(scores, position, token)


def only(scores: torch.Tensor, position: int, token: int) -> None:
    """Leave `token` the only possible next token of row `position` (generate's greedy pick then takes it)."""
    scores[position] = float("-inf")
    scores[position, token] = 0.0


def sample(logits: torch.Tensor, temperature: float, top_p: float, generator: torch.Generator | None,
           top_k: int = 0) -> int:
    # On the CPU, where the request's seeded generator lives (the model's logits may be on a GPU).
    logits = logits.float().cpu()
    if 0 < top_k < logits.numel():
        logits = logits.masked_fill(logits < torch.topk(logits, top_k).values[-1], float("-inf"))
    probs = torch.softmax(logits / temperature, dim=-1)
    if top_p < 1.0:
        sorted_probs, order = torch.sort(probs, descending=True)
        # keep the smallest set whose mass reaches top_p (the most likely token always stays)
        outside = sorted_probs.cumsum(-1) - sorted_probs >= top_p
        sorted_probs[outside] = 0.0
        probs = torch.zeros_like(probs).scatter_(0, order, sorted_probs)
    return int(torch.multinomial(probs, 1, generator=generator))


def advance(rows: list[Row], tokens: list[int], now: float) -> None:
    """Each live row takes its new token."""
    for row, token in zip(rows, tokens):
        if row.live:
            try:
                step(row, token, now)
            except Exception as error:  # a failing detokenizer or streaming callback ends this row only
                fail(row, f"{type(error).__name__}: {error}")


def step(row: Row, token: int, now: float) -> None:
    if row.is_cancelled():
        row.finish_reason = "cancelled"
        return
    if token in row.stop_ids:
        if row.logprobs is not None:  # completions list it, as vLLM does (lm-eval reads one new token's logprob)
            row.stop_score = token_logprob(row.step_logprobs, token, row.logprobs)
        end(row, "stop", len(row.text))
        return
    row.ids.append(token)
    if row.logprobs is not None:
        row.token_logprobs.append(token_logprob(row.step_logprobs, token, row.logprobs))
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


def token_logprob(logprobs: torch.Tensor, token: int, top: int) -> TokenLogprob:
    """`token`'s logprob in a log-softmax row, and the `top` most likely tokens there."""
    best = torch.topk(logprobs, top) if top else None
    alternatives = [] if best is None else list(zip(best.indices.tolist(), best.values.tolist()))
    return TokenLogprob(token, float(logprobs[token]), alternatives)


def score_prompt(logprobs: torch.Tensor, ids: list[int], top: int) -> list[TokenLogprob | None]:
    """Each prompt token's logprob given the tokens before it (`logprobs`: the log-softmax at each of the prompt's
    positions); the first token has no context, so None."""
    before = logprobs[: len(ids) - 1]
    chosen = before.gather(1, torch.tensor(ids[1:], device=before.device)[:, None])[:, 0].tolist()
    if top:
        best = torch.topk(before, top, dim=-1)
        alternatives = [list(zip(indices, values)) for indices, values in
                        zip(best.indices.tolist(), best.values.tolist())]
    else:
        alternatives = [[] for _ in chosen]
    return [None] + [TokenLogprob(token, logprob, top_tokens)
                     for token, logprob, top_tokens in zip(ids[1:], chosen, alternatives)]


def end(row: Row, reason: str, length: int) -> None:
    row.text = row.text[:length]
    row.finish_reason = reason
    flush(row, length, last=True)


def flush(row: Row, length: int, last: bool = False) -> None:
    """Stream `text` up to `length` with the logprobs of the tokens recorded since the last flush (the last flush
    sends those even without new text: tokens whose text a stop string cut)."""
    if row.emit is None:
        return
    scores = row.token_logprobs[row.scores_sent:]
    if length > row.sent or (last and scores):
        row.emit(row.index, row.text[row.sent:length], scores)
        row.sent = max(row.sent, length)
        row.scores_sent = len(row.token_logprobs)


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
