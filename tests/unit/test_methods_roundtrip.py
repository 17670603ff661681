"""Save -> load gives identical logits; merge gives the same logits within tolerance."""

import torch

from tunelab.methods.registry import get_method
from tunelab.models.load import load_causal_lm


def perturb(model, seed=0):
    """Give the trainable weights random values, so an adapter is not the identity."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter in model.parameters():
            if parameter.requires_grad:
                parameter.add_(torch.randn(parameter.shape, generator=generator) * 0.05)


def logits(model, ids):
    with torch.no_grad():
        return model(input_ids=ids).logits


def trained(method_name, options, checkpoint):
    method = get_method(method_name)
    config = method.config_class(name=method_name, **options)
    model = method.wrap(load_causal_lm(checkpoint), config)
    perturb(model)
    return method, model.eval()


def test_lora_save_load_identical_and_merge_close(tiny_checkpoint, tmp_path):
    method, model = trained("lora", {"r": 4, "alpha": 8, "dropout": 0.0}, tiny_checkpoint)
    ids = torch.randint(4, 90, (2, 12))
    expected = logits(model, ids)
    assert not torch.allclose(expected, logits(load_causal_lm(tiny_checkpoint).eval(), ids))  # the adapter matters
    method.save(model, tmp_path / "adapter")
    reloaded = method.load(lambda: load_causal_lm(tiny_checkpoint), tmp_path / "adapter").eval()
    assert torch.equal(logits(reloaded, ids), expected)
    merged = method.merge(reloaded)
    assert type(merged).__name__ == "LlamaForCausalLM"
    assert torch.allclose(logits(merged, ids), expected, atol=1e-4)


def test_lora_adapter_loads_with_plain_peft(tiny_checkpoint, tmp_path):
    from peft import PeftModel

    method, model = trained("lora", {"r": 4, "alpha": 8, "dropout": 0.0}, tiny_checkpoint)
    method.save(model, tmp_path / "adapter")
    ids = torch.randint(4, 90, (1, 9))
    peft_model = PeftModel.from_pretrained(load_causal_lm(tiny_checkpoint), str(tmp_path / "adapter")).eval()
    assert torch.equal(logits(peft_model, ids), logits(model, ids))


def test_full_save_load_identical(tiny_checkpoint, tmp_path):
    method, model = trained("full", {}, tiny_checkpoint)
    ids = torch.randint(4, 90, (2, 10))
    method.save(model, tmp_path / "full")
    reloaded = method.load(lambda: None, tmp_path / "full").eval()
    assert torch.equal(logits(reloaded, ids), logits(model, ids))


def test_target_modules_that_match_nothing_list_the_linear_layers(tiny_checkpoint):
    import pytest

    from tunelab.errors import TunelabError

    method = get_method("lora")
    config = method.config_class(target_modules=["qkv_proj"])
    with pytest.raises(TunelabError, match=r"match no layer of the model; its linear layers are: .*q_proj"):
        method.wrap(load_causal_lm(tiny_checkpoint), config)
