"""Sequence classifiers: a base checkpoint (encoder or causal LM) with a classification head over given labels."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


def is_causal_lm_checkpoint(folder: str | Path) -> bool:
    """Whether the checkpoint is a causal LM (its config names a *ForCausalLM architecture)."""
    config = json.loads((Path(folder) / "config.json").read_text(encoding="utf-8"))
    return any(name.endswith("ForCausalLM") for name in config.get("architectures") or [])


def is_sequence_classifier_checkpoint(folder: str | Path) -> bool:
    config = json.loads((Path(folder) / "config.json").read_text(encoding="utf-8"))
    return any(name.endswith("ForSequenceClassification") for name in config.get("architectures") or [])


def load_sequence_classifier(folder: str | Path, labels: list[str], pad_token_id: int | None, seed: int) -> Any:
    """The checkpoint with a new head over `labels`, initialised from `seed` (so base and tuned runs agree)."""
    import torch
    from transformers import AutoModelForSequenceClassification

    torch.manual_seed(seed)
    model = AutoModelForSequenceClassification.from_pretrained(
        str(folder), num_labels=len(labels), id2label=dict(enumerate(labels)),
        label2id={label: index for index, label in enumerate(labels)}, dtype=torch.float32,
    )
    if model.config.pad_token_id is None:  # a causal LM's head reads the last non-pad token of each row
        model.config.pad_token_id = pad_token_id
    return model


def load_saved_classifier(folder: str | Path) -> Any:
    import torch
    from transformers import AutoModelForSequenceClassification

    return AutoModelForSequenceClassification.from_pretrained(str(folder), dtype=torch.float32)
