"""The language-model loss from logits at label positions only.

A causal LM's forward computes logits for every token ([tokens x vocabulary]: 49,152 wide for SmolLM2) and its loss
upcasts them all to fp32, although the loss reads only the positions whose next token is a label: in a completion-
only batch (the answers of CoNaLa rows are ~30% of their tokens) most of that head matmul, its softmax and their
backward are thrown away. transformers' causal LMs take `logits_to_keep` (a tensor of positions), so the model's own
forward (through peft's and DDP's wrappers alike) computes logits there only; the cross-entropy then runs in chunks
of rows, each chunk's fp32 log-softmax recomputed in the backward rather than kept, so that no fp32
[labels x vocabulary] tensor exists whole (what Liger's fused linear cross-entropy does on GPUs; Liger's kernels are
Triton, GPU only).

The loss is the same number the model's own would be: summed over the label tokens and divided by the label tokens
of the whole optimizer step (`num_items_in_batch`, as transformers does), so gradient accumulation and the logged loss
are unchanged (tests/unit/test_fast_training.py compares the loss curve with a plain loop's).
"""

from __future__ import annotations

import inspect
from typing import Any

from transformers import Trainer

CHUNK_ROWS = 1024  # label positions per cross-entropy chunk: a 1024 x 49,152 fp32 log-softmax is 200 MB


class LabelPositionsTrainer(Trainer):
    """transformers' Trainer whose training loss is computed at label positions only (see the module's doc).

    `positions_multiple`: the head computes logits at a multiple of this many positions (the label positions, then
    position 0 repeated; the extra logits are not used), for the reason train/batches.py filler_row gives: fewer
    distinct shapes of the head's large matmul."""

    def __init__(self, *args: Any, positions_multiple: int | None = None, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.positions_multiple = positions_multiple

    def compute_loss(self, model: Any, inputs: dict[str, Any], return_outputs: bool = False,
                     num_items_in_batch: Any = None) -> Any:
        labels = inputs.get("labels")
        if return_outputs or not model.training or not label_positions_apply(inputs):
            return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
        import torch

        targets = labels[0, 1:]
        keep = (targets != -100).nonzero().squeeze(-1)
        forward = {name: value for name, value in inputs.items() if name != "labels"}
        computed = keep
        if self.positions_multiple:
            computed = torch.cat([keep, keep.new_zeros(-len(keep) % self.positions_multiple)])
        logits = model(**forward, logits_to_keep=computed).logits[0, :len(keep)]
        loss = chunked_cross_entropy(logits, targets[keep])
        count = num_items_in_batch if num_items_in_batch is not None else torch.tensor(len(keep))
        loss = loss / count
        if self.args.average_tokens_across_devices and num_items_in_batch is not None:
            loss = loss * self.accelerator.num_processes  # num_items_in_batch counts every process's labels
        return loss

    # compute_loss divides by the step's label count itself: the Trainer must not divide again
    loss_is_scaled_for_ga = True


def label_positions_apply(inputs: dict[str, Any]) -> bool:
    """A padding-free language-model batch: one row of packed tokens, a label per token. (The model's forward takes
    `logits_to_keep`: plain_trainer uses this trainer only for such a model.)"""
    labels, input_ids = inputs.get("labels"), inputs.get("input_ids")
    return not (labels is None or input_ids is None or labels.shape != input_ids.shape or labels.shape[0] != 1)


def accepts_logits_to_keep(model: Any) -> bool:
    from tunelab.models.load import transformers_model

    return "logits_to_keep" in inspect.signature(transformers_model(model).forward).parameters


def chunked_cross_entropy(logits: Any, targets: Any, chunk_rows: int = CHUNK_ROWS) -> Any:
    """Summed cross-entropy of `logits` [positions x vocabulary] against `targets`, computed in fp32 a chunk of
    rows at a time; past one chunk, each chunk's log-softmax is recomputed in the backward (activation
    checkpointing) instead of being kept for it."""
    import torch
    from torch.utils.checkpoint import checkpoint

    def summed(part: Any, wanted: Any) -> Any:
        return torch.nn.functional.cross_entropy(part.float(), wanted, reduction="sum")

    if len(targets) <= chunk_rows:
        return summed(logits, targets)
    return sum(checkpoint(summed, logits[start:start + chunk_rows], targets[start:start + chunk_rows],
                          use_reentrant=False)
               for start in range(0, len(targets), chunk_rows))
