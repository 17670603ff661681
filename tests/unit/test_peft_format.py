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
    """The file holds exactly the trained LoRA tensors, and plain peft on the dequantized NF4 base (the weights the
    4-bit model computes with) gives the trained 4-bit model's logits; on the fp32 base it does not (NF4 rounding)."""
    from peft import PeftModel
    from peft.utils import get_peft_model_state_dict
    from safetensors.torch import load_file

    from tunelab.models.quantize import dequantize_nf4, quantize_nf4

    method = get_method("qlora")
    config = method.config_class(r=4, dropout=0.0)
    model = method.wrap(load_causal_lm(tiny_checkpoint), config)
    perturb(model)
    model.eval()
    method.save(model, tmp_path / "adapter")
    saved = load_file(tmp_path / "adapter" / "adapter_model.safetensors")
    trained = get_peft_model_state_dict(model)
    assert saved.keys() == trained.keys() and len(saved) == 2 * 7 * 2  # A and B of 7 projections in 2 layers
    assert all(torch.equal(saved[name], trained[name]) for name in saved)

    dequantized = load_causal_lm(tiny_checkpoint)
    quantize_nf4(dequantized, config.block_size, config.scaler_block_size)
    plain = PeftModel.from_pretrained(dequantize_nf4(dequantized), str(tmp_path / "adapter")).eval()
    assert plain.peft_config["default"].peft_type.value == "LORA"
    ids = torch.randint(4, 90, (2, 9))
    expected = logits(model, ids)
    assert torch.allclose(logits(plain, ids), expected, atol=1e-6, rtol=0)  # bitwise equal on CPU today
    on_fp32 = PeftModel.from_pretrained(load_causal_lm(tiny_checkpoint), str(tmp_path / "adapter")).eval()
    assert not torch.allclose(logits(on_fp32, ids), expected, atol=1e-3)  # the base's rounding is what differs


def test_every_method_is_covered_by_a_format_test():
    assert set(PEFT_METHODS) | {"qlora", "adapter", "full"} == set(METHODS)


def test_prompt_tuning_starts_from_the_init_text_embeddings(tiny_checkpoint):
    from tests.tiny import tiny_tokenizer

    method = get_method("prompt")
    config = method.config_class(num_virtual_tokens=6, init_text="abc")
    model = method.wrap(load_causal_lm(tiny_checkpoint), config)
    ids = tiny_tokenizer()("abc", add_special_tokens=False)["input_ids"]
    expected = model.get_base_model().get_input_embeddings().weight[ids * 2]  # repeated to 6 virtual tokens
    assert torch.equal(model.prompt_encoder["default"].embedding.weight, expected)
