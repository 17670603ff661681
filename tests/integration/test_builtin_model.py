"""The built-in model: converted once from the package's GGUF, verified, then reused."""

import json

import pytest
import torch

from tunelab.models.convert import MANIFEST, verify_files
from tunelab.models.load import load_causal_lm, resolve_model
from tunelab.models.tokenizer import load_tokenizer

pytestmark = pytest.mark.integration


def test_conversion_writes_a_verified_plain_checkpoint(real_model):
    manifest = json.loads((real_model / MANIFEST).read_text())
    assert manifest["source"]["gguf_sha256"].startswith("b179c952")
    assert verify_files(real_model) == []
    config = json.loads((real_model / "config.json").read_text())
    assert "quantization_config" not in config
    assert manifest["check"]["greedy_text"]


def test_second_use_reuses_the_cache(real_home, real_model):
    stamp = (real_model / MANIFEST).stat().st_mtime
    assert resolve_model("smollm2-135m-instruct", real_home).path == real_model
    assert (real_model / MANIFEST).stat().st_mtime == stamp


def test_reloaded_model_reproduces_the_verified_generation(real_model):
    manifest = json.loads((real_model / MANIFEST).read_text())
    tokenizer = load_tokenizer(real_model)
    model = load_causal_lm(real_model).eval()
    ids = tokenizer.apply_chat_template(manifest["check"]["prompt"], add_generation_prompt=True,
                                        return_tensors="pt", return_dict=True)
    with torch.no_grad():
        out = model.generate(**ids, max_new_tokens=12, do_sample=False, pad_token_id=tokenizer.pad_token_id)
    assert tokenizer.decode(out[0, ids["input_ids"].shape[1]:]) == manifest["check"]["greedy_text"]


def test_pad_token_is_not_the_eos(real_model):
    tokenizer = load_tokenizer(real_model)
    assert tokenizer.pad_token_id != tokenizer.eos_token_id
    assert tokenizer.eos_token == "<|im_end|>"


def test_damaged_file_is_detected(real_model, tmp_path):
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(real_model, copy)
    (copy / "config.json").write_text((copy / "config.json").read_text() + " ")
    assert verify_files(copy) == ["config.json"]
