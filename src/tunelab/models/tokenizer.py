"""Tokenizer loading and the pad-token rule."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tunelab.errors import TunelabError

# Tokens that are safe to pad with when a tokenizer's own pad token is its EOS.
PAD_CANDIDATES = ("<|pad|>", "<pad>", "<|finetune_right_pad_id|>", "<|endoftext|>", "<unk>")


def load_tokenizer(folder: str | Path, chat_template: str | None = None) -> Any:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(folder))
    if chat_template is not None:
        tokenizer.chat_template = chat_template
    ensure_pad_token(tokenizer)
    return tokenizer


def ensure_pad_token(tokenizer: Any) -> None:
    """Give the tokenizer a pad token that is not its EOS.

    Many chat models ship pad == EOS. Anything that later masks "pad" positions by id (collators, generation) would
    then also hide the EOS the model must learn to emit, so the pad moves to another existing special token.
    """
    eos_id = tokenizer.eos_token_id
    if tokenizer.pad_token_id is not None and tokenizer.pad_token_id != eos_id:
        return
    vocabulary = tokenizer.get_vocab()
    for token in (*PAD_CANDIDATES, tokenizer.unk_token):
        if token and token in vocabulary and vocabulary[token] != eos_id:
            tokenizer.pad_token = token
            return
    for token, token_id in zip(tokenizer.all_special_tokens, tokenizer.all_special_ids):
        if token_id != eos_id:
            tokenizer.pad_token = token
            return
    raise TunelabError("the tokenizer has no token other than EOS to pad with; add a pad token to the checkpoint")
