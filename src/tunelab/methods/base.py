"""The interface every tuning method implements.

A method is data plus four plain functions, so core code (training, evaluation, export) never branches on a
method's name: it asks the method to wrap, save, load and (where defined) merge.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

from pydantic import BaseModel, ConfigDict

if TYPE_CHECKING:
    from torch import nn


class MethodConfig(BaseModel):
    """Options of one method. Subclasses add `name: Literal[...]` and their own fields."""

    model_config = ConfigDict(extra="forbid")

    name: str


@dataclass(frozen=True)
class Method:
    name: str
    config_class: type[MethodConfig]
    summary: str
    # Turn a freshly loaded base model into the model to train.
    wrap: Callable[[Any, MethodConfig], "nn.Module"]
    # Write what training produced (adapter or full weights) into a folder.
    save: Callable[["nn.Module", Path], None]
    # Rebuild the trained model from that folder; `load_base` yields the base model when the method needs it.
    load: Callable[[Callable[[], Any], Path], "nn.Module"]
    # A plain transformers model with the training folded in, or None where merging is not defined.
    merge: Callable[["nn.Module"], Any] | None = None
    # True when training leaves the base weights untouched (adapters), False when it rewrites them (full).
    is_adapter: bool = True
