"""Resolve a recipe's `model.name` into a local checkpoint folder and load it.

Everything is loaded from an ordinary safetensors folder: a built-in model or a .gguf file is converted once
into the cache (see convert.py) and reused from there.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tunelab.errors import TunelabError
from tunelab.models.catalog import BUILTIN_MODELS


@dataclass(frozen=True)
class ModelRef:
    name: str  # what the recipe said
    kind: str  # builtin / gguf / folder / run (a chained run's start: run/chain.py)
    path: Path  # the checkpoint folder that is loaded


def resolve_model(name: str, home: Path, console: Any = None) -> ModelRef:
    """The checkpoint folder for a built-in name, a .gguf file or a local folder; converts on first use."""
    from tunelab.models import builtin, convert

    if name in BUILTIN_MODELS:
        return ModelRef(name, "builtin", builtin.provide(BUILTIN_MODELS[name], home, console=console))
    path = Path(name).expanduser()
    if path.is_file() and path.suffix == ".gguf":
        return ModelRef(name, "gguf", convert.cached_gguf_checkpoint(path, home, console=console))
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise TunelabError(f"model.name: folder '{path}' holds no config.json, so it is not a checkpoint")
        return ModelRef(name, "folder", path)
    raise TunelabError(
        f"model.name: '{name}' is not a built-in model ({', '.join(BUILTIN_MODELS)}), "
        "a checkpoint folder or a .gguf file"
    )


def load_causal_lm(folder: str | Path, dtype: Any = None) -> Any:
    """A causal LM from a checkpoint folder, in float32 unless told otherwise (bf16 compute is autocast)."""
    import torch
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(str(folder), dtype=dtype or torch.float32)


def transformers_model(model: Any) -> Any:
    """The transformers model inside the wrappers training puts around it: DDP's and accelerate's (`module`),
    peft's (`get_base_model`)."""
    while hasattr(model, "module"):
        model = model.module
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def model_stop_ids(model: Any) -> list[int]:
    config = getattr(model, "generation_config", None)  # a classifier with a head generates nothing
    eos = config.eos_token_id if config is not None else None
    if eos is None:
        return []
    return [eos] if isinstance(eos, int) else list(eos)


@dataclass(frozen=True)
class ModelLimits:
    stop_ids: set[int]  # the ids that end an assistant turn (empty for a model that has no EOS, e.g. an encoder)
    context: int | None  # the model's context window


def model_limits(folder: Path, tokenizer: Any) -> ModelLimits:
    """Stop ids and context size of a checkpoint, read from its configs without loading its weights."""
    from transformers import AutoConfig, GenerationConfig

    config = AutoConfig.from_pretrained(str(folder))
    try:
        generation = GenerationConfig.from_pretrained(str(folder))
    except OSError:
        generation = GenerationConfig.from_model_config(config)
    eos = generation.eos_token_id if generation.eos_token_id is not None else getattr(config, "eos_token_id", None)
    ids = {tokenizer.eos_token_id} if tokenizer.eos_token_id is not None else set()
    ids.update([eos] if isinstance(eos, int) else eos or [])
    return ModelLimits(ids, getattr(config, "max_position_embeddings", None))
