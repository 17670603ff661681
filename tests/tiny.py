"""Test fixtures: tiny random models and a character-level tokenizer, so tests take seconds, not minutes.

The tokenizer has ChatML special tokens and template, like the built-in SmolLM2, and EOS is <|im_end|>.
"""

from __future__ import annotations

import string
from pathlib import Path
from typing import Any

from tunelab.data.templates import CHATML_TEMPLATE

SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<unk>"]
CHARACTERS = sorted(set(string.printable) - set("\x0b\x0c\r"))


def tiny_tokenizer() -> Any:
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocabulary = {token: index for index, token in enumerate(SPECIAL_TOKENS + CHARACTERS)}
    backend = Tokenizer(models.WordLevel(vocab=vocabulary, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Split(Regex("."), behavior="isolated")
    backend.decoder = decoders.Fuse()
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        bos_token="<|im_start|>",
        eos_token="<|im_end|>",
        unk_token="<unk>",
        pad_token="<|endoftext|>",
    )
    tokenizer.add_special_tokens({"additional_special_tokens": SPECIAL_TOKENS[:3]})
    tokenizer.chat_template = CHATML_TEMPLATE
    return tokenizer


def tiny_llama(tokenizer: Any, hidden_size: int = 32, layers: int = 2, seed: int = 0) -> Any:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden_size,
        intermediate_size=hidden_size * 2,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=1024,
        tie_word_embeddings=True,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    torch.manual_seed(seed)
    return LlamaForCausalLM(config).eval()


def save_tiny_checkpoint(folder: str | Path, hidden_size: int = 32, layers: int = 2, seed: int = 0) -> Path:
    """Write a tiny random Llama checkpoint with its tokenizer to `folder` (a recipe can name it)."""
    folder = Path(folder)
    tokenizer = tiny_tokenizer()
    model = tiny_llama(tokenizer, hidden_size=hidden_size, layers=layers, seed=seed)
    model.save_pretrained(str(folder))
    tokenizer.save_pretrained(str(folder))
    return folder


def save_tiny_encoder_checkpoint(folder: str | Path, hidden_size: int = 32, layers: int = 2, seed: int = 0) -> Path:
    """A tiny random BERT encoder (no head, like minilm-l6-v2) with the character tokenizer, for classification."""
    import torch
    from transformers import BertConfig, BertModel

    folder = Path(folder)
    tokenizer = tiny_tokenizer()
    config = BertConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden_size,
        num_hidden_layers=layers,
        num_attention_heads=4,
        intermediate_size=hidden_size * 2,
        max_position_embeddings=256,
        pad_token_id=tokenizer.pad_token_id,
    )
    torch.manual_seed(seed)
    BertModel(config).save_pretrained(str(folder))
    tokenizer.save_pretrained(str(folder))
    return folder
