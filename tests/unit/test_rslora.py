"""`method: {name: lora, use_rslora: true}` scales the update by alpha / sqrt(r) (alpha / r without it), from the
recipe to peft's layers, and a trained rsLoRA adapter saved and loaded back gives identical logits."""

import math

import pytest
import torch

from tunelab.methods.registry import MethodSection, get_method
from tunelab.models.load import load_causal_lm

IDS = torch.tensor([[5, 17, 33, 42, 8, 9, 60, 61], [7, 7, 12, 50, 3, 81, 20, 4]])


def wrapped(checkpoint, **options):
    method = get_method("lora")
    return method.wrap(load_causal_lm(checkpoint), method.config_class(**options))


def lora_layers(model) -> list:
    return [module for name, module in model.named_modules() if hasattr(module, "lora_A") and name.endswith("_proj")]


@pytest.mark.parametrize("r, alpha", [(4, 8), (9, 6)])
@pytest.mark.parametrize("rslora", [True, False])
def test_scaling_is_alpha_over_sqrt_r_with_rslora_and_alpha_over_r_without(tiny_checkpoint, r, alpha, rslora):
    layers = lora_layers(wrapped(tiny_checkpoint, r=r, alpha=alpha, dropout=0.0, use_rslora=rslora))
    assert len(layers) == 2 * 7  # q k v o gate up down in each of the 2 layers
    expected = alpha / math.sqrt(r) if rslora else alpha / r
    assert [layer.scaling["default"] for layer in layers] == pytest.approx([expected] * len(layers), rel=1e-12)


def test_the_recipe_section_reaches_peft(tiny_checkpoint):
    from pydantic import TypeAdapter

    section = TypeAdapter(MethodSection).validate_python({"name": "lora", "r": 4, "alpha": 8, "use_rslora": True})
    assert section.use_rslora is True
    model = get_method(section.name).wrap(load_causal_lm(tiny_checkpoint), section)
    assert lora_layers(model)[0].scaling["default"] == 4.0  # 8 / sqrt(4), not 8 / 4


def train_a_few_steps(model, steps: int = 5) -> None:
    """Real optimizer steps on a next-token loss, so lora_B leaves zero and the scaling matters."""
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    model.train()
    for _ in range(steps):
        loss = model(input_ids=IDS, labels=IDS).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    model.eval()


def logits(model):
    with torch.no_grad():
        return model(input_ids=IDS).logits


def test_a_trained_rslora_adapter_round_trips_with_identical_logits(tiny_checkpoint, tmp_path):
    import json

    method = get_method("lora")
    model = wrapped(tiny_checkpoint, r=4, alpha=8, dropout=0.0, use_rslora=True)
    train_a_few_steps(model)
    expected = logits(model)
    method.save(model, tmp_path / "adapter")
    assert json.loads((tmp_path / "adapter" / "adapter_config.json").read_text())["use_rslora"] is True
    reloaded = method.load(lambda: load_causal_lm(tiny_checkpoint), tmp_path / "adapter").eval()
    assert torch.equal(logits(reloaded), expected)
    assert lora_layers(reloaded)[0].scaling["default"] == 4.0
    # The scaling is not a no-op here: the same trained weights with alpha / r give other logits.
    for layer in lora_layers(reloaded):
        layer.scaling["default"] = 8 / 4
    assert not torch.allclose(logits(reloaded), expected, atol=1e-4)
