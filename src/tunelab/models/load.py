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
    kind: str  # builtin / gguf / folder
    path: Path  # the checkpoint folder that is loaded


def resolve_model(name: str, home: Path, console: Any = None) -> ModelRef:
    """The checkpoint folder for a built-in name, a .gguf file or a local folder; converts on first use."""
    from tunelab.models import builtin, convert, packaged

    if name in BUILTIN_MODELS:
        return ModelRef(name, "builtin", builtin.pull(BUILTIN_MODELS[name], home, console=console))
    if name in packaged.PACKAGED_CHECKPOINTS:
        return ModelRef(name, "builtin", packaged.locate(packaged.PACKAGED_CHECKPOINTS[name]))
    path = Path(name).expanduser()
    if path.is_file() and path.suffix == ".gguf":
        return ModelRef(name, "gguf", convert.cached_gguf_checkpoint(path, home, console=console))
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise TunelabError(f"model.name: folder '{path}' holds no config.json, so it is not a checkpoint")
        return ModelRef(name, "folder", path)
    raise TunelabError(
        f"model.name: '{name}' is not a built-in model ({', '.join(builtin_names())}), "
        "a checkpoint folder or a .gguf file"
    )


def builtin_names() -> list[str]:
    from tunelab.models.packaged import PACKAGED_CHECKPOINTS

    return [*BUILTIN_MODELS, *PACKAGED_CHECKPOINTS]


def load_causal_lm(folder: str | Path, dtype: Any = None) -> Any:
    """A causal LM from a checkpoint folder, in float32 unless told otherwise (bf16 compute is autocast)."""
    import torch
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(str(folder), dtype=dtype or torch.float32)


def model_stop_ids(model: Any) -> list[int]:
    eos = model.generation_config.eos_token_id
    if eos is None:
        return []
    return [eos] if isinstance(eos, int) else list(eos)
