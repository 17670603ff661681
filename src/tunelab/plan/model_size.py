"""Parameters of the model a recipe trains, counted on the meta device: the architecture is built from the
checkpoint's config.json without memory for its weights (torch's meta tensors have shapes, no data), and the
recipe's method wraps it as it would wrap the real model, so the trainable count is the method's own, not a formula.

Besides the counts, what the memory model needs: the bytes each parameter group takes as tunelab holds it (frozen,
trained, NF4-quantized, kept out of bf16) and the architecture's sizes (layers, hidden, MLP width, heads, vocabulary).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from tunelab.errors import TunelabError


@dataclass(frozen=True)
class Architecture:
    layers: int
    hidden: int
    intermediate: int
    heads: int
    kv_heads: int
    head_dim: int
    vocabulary: int
    tied: bool  # the output head is the input embedding


@dataclass(frozen=True)
class ModelSize:
    total: int  # parameters of the wrapped model (the adapter included)
    trainable: int
    base: int  # parameters of the model before the method wrapped it
    quantizable: int  # base parameters in the linear layers QLoRA holds in NF4 (all but the heads)
    autocast_weights: int  # trained parameters a bf16 autocast matmul reads (cast to bf16 once per step)
    trained_linears: int  # linear layers per decoder layer that train or carry an adapter
    architecture: Architecture
    exact: bool  # counted on the wrapped meta model (False: the method could not wrap it; a formula counted)


def architecture(config: Any) -> Architecture:
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    hidden = text.hidden_size
    heads = getattr(text, "num_attention_heads", 1)
    head_dim = getattr(text, "head_dim", None) or hidden // heads
    return Architecture(layers=text.num_hidden_layers, hidden=hidden,
                        intermediate=getattr(text, "intermediate_size", 4 * hidden), heads=heads,
                        kv_heads=getattr(text, "num_key_value_heads", None) or heads, head_dim=head_dim,
                        vocabulary=text.vocab_size, tied=bool(getattr(config, "tie_word_embeddings", False)))


def meta_model(checkpoint: Path, head_labels: int | None) -> Any:
    """The checkpoint's architecture with meta tensors: a causal LM, or a sequence classifier over `head_labels`
    classes (what tasks/classification.py head style trains)."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForSequenceClassification

    config = AutoConfig.from_pretrained(str(checkpoint))
    with torch.device("meta"):
        if head_labels:
            config.num_labels = head_labels
            return AutoModelForSequenceClassification.from_config(config)
        return AutoModelForCausalLM.from_config(config)


def wrap_on_meta(method: Any, model: Any, options: Any) -> tuple[Any, bool]:
    """The method's own wrap on the meta model. A method that needs the weights' values to wrap (QLoRA quantizes
    them) is counted with the LoRA it adds, which is the same adapter on the same layers."""
    from tunelab.methods.lora import LoraConfig
    from tunelab.methods.lora import wrap as lora_wrap

    try:
        return method.wrap(model, options), True
    except (NotImplementedError, RuntimeError, ValueError, TypeError):
        if isinstance(options, LoraConfig):
            lora_options = LoraConfig(**options.model_dump(include=set(LoraConfig.model_fields) - {"name"}))
            return lora_wrap(model, lora_options), True
        raise


def model_size(checkpoint: Path, method: Any, options: Any, head_labels: int | None = None) -> ModelSize:
    from torch import nn

    from tunelab.models.quantize import quantizable_layers

    model = meta_model(checkpoint, head_labels)
    arch = architecture(model.config)
    if head_labels:  # a sequence classifier's head scores each position over its labels, not the vocabulary
        arch = replace(arch, vocabulary=head_labels)
    base = sum(parameter.numel() for parameter in model.parameters())
    quantizable = sum(module.weight.numel() for _, module in quantizable_layers(model))
    try:
        wrapped, exact = wrap_on_meta(method, model, options)
    except TunelabError:
        raise  # the method's own one-line error (e.g. target_modules that match no layer)
    except Exception as error:  # noqa: BLE001 (a library's wrap that cannot run on meta tensors: one clear line)
        raise TunelabError(f"tunelab plan: method '{method.name}' cannot be built on the meta device ({error})") \
            from None
    parameters = list(wrapped.parameters())  # each tensor once: tied embeddings count once
    trained = {id(parameter) for parameter in parameters if parameter.requires_grad}
    autocast_weights = sum(module.weight.numel() for module in wrapped.modules()
                           if isinstance(module, nn.Linear) and id(module.weight) in trained)
    output = wrapped.get_output_embeddings() if hasattr(wrapped, "get_output_embeddings") else None
    adapted = sum(1 for name, module in wrapped.named_modules()
                  if hasattr(module, "lora_A") or (isinstance(module, nn.Linear) and module is not output
                                                   and module.weight.requires_grad and "lora_" not in name))
    return ModelSize(total=sum(parameter.numel() for parameter in parameters),
                     trainable=sum(parameter.numel() for parameter in parameters if parameter.requires_grad),
                     base=base, quantizable=quantizable, autocast_weights=autocast_weights,
                     trained_linears=round(adapted / arch.layers), architecture=arch,
                     exact=exact)

