"""QLoRA on torchao NF4: gradients through a 4-bit layer equal those of a dequantized reference, also after the
eval forward and generate that break bitsandbytes' CPU path; bad block sizes are refused; merge keeps the output."""

import pytest
import torch

from tunelab.errors import TunelabError
from tunelab.methods.registry import get_method
from tunelab.models.load import load_causal_lm
from tunelab.models.quantize import dequantize_nf4, is_nf4, weight_bytes


@pytest.fixture(scope="module")
def nf4_checkpoint(tmp_path_factory):
    from tests.tiny import save_tiny_checkpoint

    # 64 wide: every projection holds a whole number of 64-value NF4 blocks.
    return save_tiny_checkpoint(tmp_path_factory.mktemp("nf4") / "tiny", hidden_size=64)


def qlora_model(checkpoint, **options):
    method = get_method("qlora")
    model = method.wrap(load_causal_lm(checkpoint), method.config_class(r=4, alpha=8, dropout=0.0, **options))
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():  # LoRA B starts at zero; give it values so its gradient path is exercised both ways
        for name, parameter in model.named_parameters():
            if "lora_B" in name:
                parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.1)
    return model


def dequantized_twin(model, checkpoint):
    """The same model with every NF4 weight replaced by its dequantized values (a plain nn.Linear reference).

    Built by copying into a second model because torchao 0.18 re-quantizes NF4 weights with default block sizes on
    deepcopy.
    """
    twin = qlora_model(checkpoint)
    dequantize_nf4(twin)
    twin_parameters = dict(twin.named_parameters())
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            value = parameter.get_original_weight() if is_nf4(parameter) else parameter
            twin_parameters[name].copy_(value)
    assert not any(is_nf4(p) for p in twin.parameters())
    return twin


def grads(model, embeds):
    embeds = embeds.clone().requires_grad_(True)
    model.train()
    logits = model(inputs_embeds=embeds).logits
    (logits.float() ** 2).mean().backward()
    weight_grads = {name: p.grad.clone() for name, p in model.named_parameters() if p.requires_grad}
    model.zero_grad()
    return embeds.grad, weight_grads


def test_base_weights_are_nf4_and_smaller(nf4_checkpoint):
    model = qlora_model(nf4_checkpoint)
    base = model.get_base_model()
    layer = base.model.layers[0]
    assert is_nf4(layer.self_attn.q_proj.base_layer.weight) and is_nf4(layer.mlp.down_proj.base_layer.weight)
    assert not is_nf4(base.lm_head.weight)  # the output head stays in full precision
    full = weight_bytes(load_causal_lm(nf4_checkpoint))
    assert weight_bytes(model) < full


def test_lora_gradients_equal_a_dequantized_reference_after_eval_and_generate(nf4_checkpoint):
    model = qlora_model(nf4_checkpoint)
    ids = torch.randint(4, 90, (2, 10))
    # What breaks bitsandbytes on AVX512-bf16 CPUs: inference forwards of the 4-bit layers before backward.
    model.eval()
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        model(input_ids=ids)
        model.generate(input_ids=ids[:1], max_new_tokens=3, do_sample=False)
    reference = dequantized_twin(model, nf4_checkpoint)
    embeds = model.get_input_embeddings()(ids).detach()

    input_grad, weight_grads = grads(model, embeds)
    reference_input_grad, reference_weight_grads = grads(reference, embeds)
    assert input_grad.abs().sum() > 0
    torch.testing.assert_close(input_grad, reference_input_grad, rtol=1e-4, atol=1e-6)
    assert weight_grads.keys() == reference_weight_grads.keys() and len(weight_grads) > 0
    for name in weight_grads:
        assert weight_grads[name].abs().sum() > 0, name
        torch.testing.assert_close(weight_grads[name], reference_weight_grads[name], rtol=1e-4, atol=1e-6)


def test_training_steps_lower_the_loss_with_evaluation_in_between(nf4_checkpoint):
    model = qlora_model(nf4_checkpoint)
    ids = torch.randint(4, 90, (4, 16))
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    losses = []
    for _ in range(8):
        model.eval()
        with torch.no_grad():
            model(input_ids=ids)  # an evaluation between steps must not cut the gradient path
        model.train()
        loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        losses.append(loss.item())
    assert losses[-1] < losses[0] - 0.3


def test_merged_model_computes_what_the_4bit_model_computes(nf4_checkpoint, tmp_path):
    method = get_method("qlora")
    model = qlora_model(nf4_checkpoint).eval()
    ids = torch.randint(4, 90, (2, 9))
    with torch.no_grad():
        expected = model(input_ids=ids).logits
    method.save(model, tmp_path / "adapter")
    reloaded = method.load(lambda: load_causal_lm(nf4_checkpoint), tmp_path / "adapter").eval()
    with torch.no_grad():
        assert torch.equal(reloaded(input_ids=ids).logits, expected)
    merged = method.merge(reloaded)
    assert type(merged).__name__ == "LlamaForCausalLM" and not any(is_nf4(p) for p in merged.parameters())
    with torch.no_grad():
        torch.testing.assert_close(merged(input_ids=ids).logits, expected, rtol=1e-4, atol=1e-4)


def test_a_layer_that_cannot_be_cut_into_blocks_is_refused(nf4_checkpoint):
    with pytest.raises(TunelabError, match=r"no 4-bit backend can quantize layer .*not a multiple of "
                                           r"method.block_size=96"):
        qlora_model(nf4_checkpoint, block_size=96)


def mapped_ranges(path) -> list[tuple[int, int]]:
    """Address ranges where this process maps the file at `path` (/proc/self/maps)."""
    ranges = []
    for line in open("/proc/self/maps"):
        fields = line.split()
        if len(fields) >= 6 and fields[5] == str(path):
            start, end = (int(value, 16) for value in fields[0].split("-"))
            ranges.append((start, end))
    return ranges


@pytest.mark.skipif(not __import__("sys").platform.startswith("linux"), reason="reads /proc/self/maps")
def test_quantized_model_keeps_no_view_into_the_checkpoint_file(nf4_checkpoint):
    """One full-precision tensor viewing the checkpoint's memory map kept every page quantization had read resident
    (0.4 GB for SmolLM2-135M: QLoRA's training held more than LoRA's)."""
    import gc

    from tunelab.models.quantize import quantize_nf4

    weights = (nf4_checkpoint / "model.safetensors").resolve()
    model = load_causal_lm(nf4_checkpoint)

    def in_map(parameter) -> bool:
        return any(start <= parameter.data_ptr() < end for start, end in mapped_ranges(weights))

    assert any(in_map(parameter) for parameter in model.parameters())  # transformers maps the file: the premise
    tied = model.get_output_embeddings().weight is model.get_input_embeddings().weight
    quantize_nf4(model)
    gc.collect()
    assert not [name for name, parameter in model.named_parameters() if not is_nf4(parameter) and in_map(parameter)]
    assert (model.get_output_embeddings().weight is model.get_input_embeddings().weight) == tied
