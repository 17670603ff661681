"""The interface every tuning method implements.

A method is data plus four plain functions, so core code (training, evaluation, export) never branches on a
method's name: it asks the method to wrap, save, load and (where defined) merge, and reads what it declares
(whether it can train on padding-free batches, why it cannot merge, a learning rate that suits it).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

from pydantic import BaseModel, ConfigDict

from tunelab.errors import TunelabError

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
    # Turn a freshly loaded base model (causal LM or sequence classifier) into the model to train.
    wrap: Callable[[Any, MethodConfig], "nn.Module"]
    # Write what training produced (adapter or full weights) into a folder.
    save: Callable[["nn.Module", Path], None]
    # Rebuild the trained model from that folder; `load_base` yields the base model when the method needs it.
    load: Callable[[Callable[[], Any], Path], "nn.Module"]
    # A plain transformers model with the training folded in, or None where merging is not defined.
    merge: Callable[["nn.Module"], Any] | None = None
    # True when training leaves the base weights untouched (adapters), False when it rewrites them (full).
    is_adapter: bool = True
    # False for methods that prepend virtual tokens to every row (prefix, prompt tuning): rows concatenated into
    # one padding-free sequence would share one prefix and lose their per-row positions, so they train padded.
    padding_free: bool = True
    # Whether the text a run writes (eval, generate, chat) comes from the merged weights: the same function as the
    # base plus the adapter, without the adapter's extra matmuls at every decode step. False where merging costs
    # what the method saves (QLoRA's 4-bit base would be held whole).
    generate_merged: bool = True
    # Whether training in bf16 may hold the frozen base in bf16 (train/frozen_weights.py): not where the method
    # reads the base weights other than through the layers' own forward (DoRA's weight norm, QLoRA's 4-bit storage)
    # or trains them (full).
    bf16_frozen: bool = False
    # Why merging is not defined (shown when a recipe asks for a merged model); None where `merge` exists.
    no_merge_reason: str | None = None
    # A learning rate that suits the method with AdamW (compare-methods trains each method at its own).
    typical_lr: float = 2e-4


def check_merge_request(method: Method, merge_asked: bool) -> None:
    """A recipe that says `output.merge: true` for a method that cannot merge is refused before any work."""
    if merge_asked and method.is_adapter and method.merge is None:
        raise TunelabError(
            f"output.merge: method '{method.name}' cannot be merged into the base weights "
            f"({method.no_merge_reason}); set output.merge to false (the adapter folder is saved either way)"
        )


def wants_merge(method: Method, merge: bool) -> bool:
    """Whether to write a merged model: asked (the default) and defined for the method (full needs none)."""
    return merge and method.is_adapter and method.merge is not None


def no_merge_note(method: Method, merge: bool) -> str | None:
    """The line a run prints when a merged model was wanted (the default) but the method cannot merge."""
    if merge and method.is_adapter and method.merge is None:
        return f"no merged model: method '{method.name}' cannot merge ({method.no_merge_reason}); the adapter is saved"
    return None
