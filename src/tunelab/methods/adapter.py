"""Bottleneck adapters (Houlsby et al. 2019; Pfeiffer et al. 2020): a small trainable block after a sublayer.

peft has no bottleneck adapter, so it is written here. Each adapter is down-projection -> non-linearity ->
up-projection plus a residual connection, applied to the output of the layers it targets. By default these are
the projections that close the attention block and the MLP block (o_proj/down_proj in Llama-like models,
the `output.dense` layers in BERT), i.e. the sublayer output before the model's own residual add: Houlsby's
placement. Targeting only the MLP projection gives Pfeiffer's. The up-projection starts at zero, so an untrained
adapter is the identity and training starts from the base model's behaviour.

Adapters are attached as child modules of the layer they follow and applied with a forward hook (PyTorch's API for
changing a module's output): the base model's modules and parameter names stay exactly as they were. The folder
holds `tunelab_adapter.json` (the options and base model) and `adapter_model.safetensors` (adapter weights and,
for a classifier, its trained head).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable, Literal

from pydantic import Field

from tunelab.errors import TunelabError
from tunelab.methods.base import Method, MethodConfig
from tunelab.methods.peft_common import is_sequence_classifier, linear_layer_names

ADAPTER_CONFIG = "tunelab_adapter.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"
CHILD_NAME = "bottleneck_adapter"
# Layers closing the attention and MLP blocks, per architecture (model_type): the default targets.
SUBLAYER_OUTPUTS = {
    "llama": ["o_proj", "down_proj"],
    "mistral": ["o_proj", "down_proj"],
    "qwen2": ["o_proj", "down_proj"],
    "qwen3": ["o_proj", "down_proj"],
    "gemma": ["o_proj", "down_proj"],
    "phi3": ["o_proj", "down_proj"],
    "bert": ["output.dense"],  # matches attention.output.dense and the MLP's output.dense
}
# Heads a sequence classifier adds on top of the base model; trained along with the adapters.
CLASSIFIER_HEADS = ("classifier", "score")


class AdapterConfig(MethodConfig):
    name: Literal["adapter"] = "adapter"
    size: int = Field(64, ge=1, description="Bottleneck width (the down-projection's output size).")
    target_modules: list[str] | Literal["auto"] = Field(
        "auto", description="Layers whose output gets an adapter (a name matches a module path or its ending); "
        "auto: the attention and MLP output projections (Houlsby). [down_proj] alone is Pfeiffer's placement."
    )
    activation: Literal["relu", "gelu", "silu", "tanh"] = Field("relu", description="The bottleneck's non-linearity.")
    dropout: float = Field(0.0, ge=0, lt=1, description="Dropout on the adapter's input.")
    scale: float = Field(1.0, gt=0, description="Multiplier on the adapter's output before the residual add.")


def bottleneck_class() -> type:
    from torch import nn

    activations = {"relu": nn.ReLU, "gelu": nn.GELU, "silu": nn.SiLU, "tanh": nn.Tanh}

    class Bottleneck(nn.Module):
        """h + scale * up(act(down(dropout(h)))); `up` starts at zero, so a new adapter is the identity."""

        def __init__(self, width: int, size: int, activation: str, dropout: float, scale: float):
            super().__init__()
            self.dropout = nn.Dropout(dropout)
            self.down = nn.Linear(width, size)
            self.act = activations[activation]()
            self.up = nn.Linear(size, width)
            self.scale = scale
            self.options = {"size": size, "activation": activation, "dropout": dropout, "scale": scale}
            nn.init.zeros_(self.up.weight)
            nn.init.zeros_(self.up.bias)

        def forward(self, hidden):
            update = self.up(self.act(self.down(self.dropout(hidden.to(self.down.weight.dtype)))))
            return hidden + self.scale * update.to(hidden.dtype)

    return Bottleneck


def apply_adapter(module: Any, inputs: Any, output: Any) -> Any:
    """Forward hook: the layer's output through its adapter."""
    return getattr(module, CHILD_NAME)(output)


def matches(path: str, target: str) -> bool:
    return path == target or path.endswith("." + target)


def target_names(model: Any, config: AdapterConfig) -> list[str]:
    if config.target_modules != "auto":
        return config.target_modules
    model_type = getattr(model.config, "model_type", None)
    if model_type not in SUBLAYER_OUTPUTS:
        names = ", ".join(sorted(linear_layer_names(model)))
        raise TunelabError(
            f"method.target_modules: no default adapter placement for model type '{model_type}'; name the layers "
            f"that close the attention and MLP blocks (its linear layers: {names})"
        )
    return SUBLAYER_OUTPUTS[model_type]


def insert_adapters(model: Any, config: AdapterConfig) -> list[str]:
    """Attach an adapter after every targeted linear layer; returns their paths."""
    from torch import nn

    targets = target_names(model, config)
    heads = {name for name in CLASSIFIER_HEADS if hasattr(model, name)}
    chosen = [(path, module) for path, module in model.named_modules()
              if isinstance(module, nn.Linear) and any(matches(path, t) for t in targets)
              and path.split(".")[0] not in heads]
    if not chosen:
        raise TunelabError(
            f"method.target_modules: {sorted(targets)} match no layer of the model; "
            f"its linear layers are: {', '.join(sorted(linear_layer_names(model)))}"
        )
    bottleneck = bottleneck_class()
    for path, module in chosen:
        adapter = bottleneck(module.out_features, config.size, config.activation, config.dropout, config.scale)
        module.add_module(CHILD_NAME, adapter.to(module.weight.device))
        module.register_forward_hook(apply_adapter)
    return [path for path, _ in chosen]


def wrap(model: Any, config: AdapterConfig) -> Any:
    for parameter in model.parameters():
        parameter.requires_grad_(False)
    insert_adapters(model, config)
    for name, parameter in model.named_parameters():
        if f".{CHILD_NAME}." in name or (is_sequence_classifier(model) and name.split(".")[0] in CLASSIFIER_HEADS):
            parameter.requires_grad_(True)
    return model


def save(model: Any, folder: Path) -> None:
    from safetensors.torch import save_file

    folder.mkdir(parents=True, exist_ok=True)
    weights = {name: parameter.detach().contiguous().cpu()
               for name, parameter in model.named_parameters() if parameter.requires_grad}
    save_file(weights, str(folder / ADAPTER_WEIGHTS))
    adapters = {path.removesuffix("." + CHILD_NAME): module for path, module in model.named_modules()
                if path.endswith("." + CHILD_NAME)}
    options = next(iter(adapters.values())).options
    saved = {"method": "adapter", "base_model_name_or_path": model.name_or_path,
             "options": {**options, "target_modules": sorted(adapters)}}
    (folder / ADAPTER_CONFIG).write_text(json.dumps(saved, indent=2) + "\n", encoding="utf-8")


def load(load_base: Callable[[], Any], folder: Path) -> Any:
    """The base model with the saved adapters (at the exact layer paths they were trained at) and weights."""
    from safetensors.torch import load_file

    saved = json.loads((folder / ADAPTER_CONFIG).read_text(encoding="utf-8"))
    model = wrap(load_base(), AdapterConfig(**saved["options"]))
    weights = load_file(str(folder / ADAPTER_WEIGHTS))
    _, unexpected = model.load_state_dict(weights, strict=False)
    if unexpected:
        raise TunelabError(f"{folder}: adapter weights that fit no layer of the base model: {unexpected[:3]}")
    return model


METHOD = Method(
    name="adapter",
    config_class=AdapterConfig,
    summary="Bottleneck adapters after the attention and MLP blocks (Houlsby); small, cannot merge.",
    wrap=wrap,
    save=save,
    load=load,
    no_merge_reason="its bottleneck has a non-linearity, so it is no change of weights that could be folded in",
    bf16_frozen=True,
    typical_lr=1e-3,
)
