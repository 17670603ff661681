"""Adapters of the methods peft implements load with plain `PeftModel.from_pretrained`, unchanged."""

import pytest
import torch

from tests.unit.test_methods_roundtrip import logits, perturb
from tunelab.methods.registry import METHODS, get_method
from tunelab.models.load import load_causal_lm

PEFT_METHODS = ["lora", "dora", "ia3", "prefix", "prompt"]


@pytest.mark.parametrize("name", PEFT_METHODS)
def test_adapter_loads_with_plain_peft_and_gives_the_same_logits(name, tiny_checkpoint, tmp_path):
    from peft import PeftModel

    method = get_method(name)
    model = method.wrap(load_causal_lm(tiny_checkpoint), method.config_class())
    perturb(model)
    model.eval()
    method.save(model, tmp_path / "adapter")
    ids = torch.randint(4, 90, (2, 9))
    plain = PeftModel.from_pretrained(load_causal_lm(tiny_checkpoint), str(tmp_path / "adapter")).eval()
    assert torch.equal(logits(plain, ids), logits(model, ids))


def test_qlora_adapter_is_a_plain_lora_adapter(tiny_checkpoint, tmp_path):
    """peft loads it onto the full-precision base (close to what was trained on the 4-bit base)."""
    from peft import PeftModel

    method = get_method("qlora")
    model = method.wrap(load_causal_lm(tiny_checkpoint), method.config_class(r=4, dropout=0.0))
    perturb(model)
    model.eval()
    method.save(model, tmp_path / "adapter")
    plain = PeftModel.from_pretrained(load_causal_lm(tiny_checkpoint), str(tmp_path / "adapter")).eval()
    ids = torch.randint(4, 90, (2, 9))
    assert plain.peft_config["default"].peft_type.value == "LORA"
    assert torch.allclose(logits(plain, ids), logits(model, ids), atol=0.5)  # NF4 rounding only


def test_every_method_is_covered_by_a_format_test():
    assert set(PEFT_METHODS) | {"qlora", "adapter", "full"} == set(METHODS)


def test_prompt_tuning_starts_from_the_init_text_embeddings(tiny_checkpoint):
    from tunelab.models.tiny import tiny_tokenizer

    method = get_method("prompt")
    config = method.config_class(num_virtual_tokens=6, init_text="abc")
    model = method.wrap(load_causal_lm(tiny_checkpoint), config)
    ids = tiny_tokenizer()("abc", add_special_tokens=False)["input_ids"]
    expected = model.get_base_model().get_input_embeddings().weight[ids * 2]  # repeated to 6 virtual tokens
    assert torch.equal(model.prompt_encoder["default"].embedding.weight, expected)
