"""Logprobs in OpenAI's two shapes, from what the engine recorded for each token (rows.TokenLogprob).

Values are the model's own distribution (log-softmax of its logits), before temperature, top_p or top_k, as
vLLM reports them by default; a token's text is what it decodes to alone.
"""

from __future__ import annotations

from typing import Any

from tunelab.serve import protocol as api
from tunelab.serve.rows import TokenLogprob


class Pieces:
    """Each token id's text, decoded once per response."""

    def __init__(self, tokenizer: Any):
        self.tokenizer = tokenizer
        self.texts: dict[int, str] = {}

    def __call__(self, token: int) -> str:
        if token not in self.texts:
            self.texts[token] = self.tokenizer.decode([token])
        return self.texts[token]


def completion_logprobs(tokenizer: Any, tokens: list[int], scores: list[TokenLogprob | None],
                        offset: int) -> api.CompletionLogprobs:
    """Legacy completions' logprobs for `tokens` (their `scores`, None where a token has no context), the first
    starting at character `offset` of the choice's text."""
    piece = Pieces(tokenizer)
    texts = [piece(token) for token in tokens]
    offsets = []
    for text in texts:
        offsets.append(offset)
        offset += len(text)
    return api.CompletionLogprobs(
        tokens=texts,
        token_logprobs=[None if score is None else score.logprob for score in scores],
        top_logprobs=[None if score is None else alternatives(piece, score) for score in scores],
        text_offset=offsets,
    )


def alternatives(piece: Pieces, score: TokenLogprob) -> dict[str, float]:
    """text -> logprob of the most likely tokens; two tokens with the same text keep the likelier one."""
    top: dict[str, float] = {}
    for token, logprob in score.top:
        top.setdefault(piece(token), logprob)
    return top


def chat_logprobs(tokenizer: Any, scores: list[TokenLogprob]) -> api.ChoiceLogprobs:
    piece = Pieces(tokenizer)

    def top(token: int, logprob: float) -> api.TopLogprob:
        text = piece(token)
        return api.TopLogprob(token=text, logprob=logprob, bytes=list(text.encode("utf-8")))

    content = [api.TokenLogprob(**top(score.token, score.logprob).model_dump(),
                                top_logprobs=[top(token, logprob) for token, logprob in score.top])
               for score in scores]
    return api.ChoiceLogprobs(content=content)
