"""Tokenizer loading and the pad-token rule."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tunelab.errors import TunelabError

# Tokens that are safe to pad with when a tokenizer's own pad token is its EOS.
PAD_CANDIDATES = ("<|pad|>", "<pad>", "<|finetune_right_pad_id|>", "<|endoftext|>", "<unk>")


# Files one of which a checkpoint folder's tokenizer is built from (fast, SentencePiece, BPE, WordPiece).
TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "spiece.model", "vocab.json", "vocab.txt", "tekken.json")


def load_tokenizer(folder: str | Path, chat_template: str | None = None) -> Any:
    """The folder's tokenizer, with `chat_template` (the recipe's, already checked) in place of its own."""
    from transformers import AutoTokenizer

    from tunelab.data.templates import check_template_syntax

    folder = Path(folder)
    if folder.is_dir() and not any((folder / name).is_file() for name in TOKENIZER_FILES):
        raise TunelabError(f"{folder}: no tokenizer in the model folder (none of {', '.join(TOKENIZER_FILES)}); "
                           "copy the tokenizer files of the model it was saved from")
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(folder))
    except (OSError, ValueError) as error:  # transformers' words for a tokenizer it cannot build
        first_line = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise TunelabError(f"{folder}: the tokenizer cannot be loaded: {first_line}") from None
    if chat_template is not None:
        tokenizer.chat_template = chat_template
    elif isinstance(tokenizer.chat_template, str):
        shipped = folder / "chat_template.jinja"
        check_template_syntax(tokenizer.chat_template,
                              str(shipped) if shipped.is_file() else f"{folder}: the model's chat template")
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
