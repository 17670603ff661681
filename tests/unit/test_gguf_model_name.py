"""A `.gguf` file as `model.name`: converted once into the cache (kind "gguf"), the converted checkpoint gives the
original model's logits and tokens, and a second use reuses the cached folder without converting again."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
import torch

from tests.tiny import tiny_llama
from tunelab.data.templates import CHATML_TEMPLATE
from tunelab.export.gguf import GgufPlan, write_gguf
from tunelab.models.load import load_causal_lm, resolve_model

SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
CHAT_TEXT = "<|im_start|>user\nreverse: abcd<|im_end|>\n<|im_start|>assistant\ndcba<|im_end|>\n"


def byte_level_bpe_tokenizer():
    """A byte-level BPE tokenizer trained in milliseconds, with ChatML special tokens and template."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=300, special_tokens=SPECIALS, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    backend.train_from_iterator([f"user\nreverse: {w} assistant\n{w[::-1]}" for w in ("abcd", "hello", "tune")] * 20,
                                trainer)
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, bos_token="<|im_start|>", eos_token="<|im_end|>",
                                        pad_token="<|endoftext|>")
    tokenizer.chat_template = CHATML_TEMPLATE
    return tokenizer


@pytest.fixture(scope="module")
def original(tmp_path_factory) -> tuple[Path, Path]:
    """(HF checkpoint folder, .gguf file written from it)."""
    tmp = tmp_path_factory.mktemp("gguf")
    tokenizer = byte_level_bpe_tokenizer()
    model = tiny_llama(tokenizer, hidden_size=32, layers=2, seed=3)
    folder = tmp / "tiny-bpe"
    model.save_pretrained(str(folder))
    tokenizer.save_pretrained(str(folder))
    gguf_path = tmp / "tiny-bpe-f32.gguf"
    counts = write_gguf(model, tokenizer, folder, gguf_path, GgufPlan(dtype="f32"), name="tiny-bpe")
    assert set(counts) == {"F32"}
    return folder, gguf_path


def logits(model, ids: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(input_ids=ids).logits


def test_a_gguf_file_is_converted_once_into_the_cache_and_gives_the_same_logits(original, tmp_path):
    from transformers import AutoTokenizer

    folder, gguf_path = original
    home = tmp_path / "home"
    ref = resolve_model(str(gguf_path), home)
    assert ref.kind == "gguf" and ref.name == str(gguf_path)
    assert ref.path.parent == home / "models"
    manifest = json.loads((ref.path / "tunelab-model.json").read_text())
    assert manifest["source"]["gguf_sha256"] == hashlib.sha256(gguf_path.read_bytes()).hexdigest()

    tokenizer = AutoTokenizer.from_pretrained(str(folder))
    converted_tokenizer = AutoTokenizer.from_pretrained(str(ref.path))
    ids = tokenizer(CHAT_TEXT, add_special_tokens=False)["input_ids"]
    assert converted_tokenizer(CHAT_TEXT, add_special_tokens=False)["input_ids"] == ids
    assert converted_tokenizer.chat_template == CHATML_TEMPLATE

    batch = torch.tensor([ids, list(range(len(ids)))])  # the chat text, and a run of arbitrary ids
    expected = logits(load_causal_lm(folder).eval(), batch)
    got = logits(load_causal_lm(ref.path).eval(), batch)
    assert torch.allclose(got, expected, atol=1e-5, rtol=0), (got - expected).abs().max()


def test_a_second_use_reuses_the_converted_folder(original, tmp_path):
    _, gguf_path = original
    home = tmp_path / "home"
    first = resolve_model(str(gguf_path), home)
    manifest = first.path / "tunelab-model.json"
    written = manifest.stat().st_mtime_ns
    again = resolve_model(str(gguf_path), home)
    assert again.path == first.path and again.kind == "gguf"
    assert manifest.stat().st_mtime_ns == written
    assert sorted(p.name for p in (home / "models").iterdir()) == [first.path.name]  # no second copy, no leftovers
