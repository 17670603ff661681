"""Attention for padding-free training batches, one row at a time, without a [tokens x tokens] mask.

A padding-free batch is one sequence of several rows, each with positions that restart at 0. transformers' sdpa
path builds a block-diagonal mask over the whole sequence for it and attends every token to every other one
through that mask: for 8 CoNaLa rows (~470 tokens) that is 8x the attention a row needs, and PyTorch's CPU
flash-attention backward with an explicit mask (and in bf16) is slow. Here the rows are scattered into a right-padded
[rows, longest row] batch, attended with a plain causal mask (right padding needs no mask: a real token's keys all
come before the padding), and gathered back: exact, and a third of the attention time on CPU in fp32
(bench/train_throughput.py). No library offers this on CPU (flash-attn's varlen kernels are CUDA only).

It runs under transformers' documented extension point: a named function in `AttentionInterface` and its mask
builder in `AttentionMaskInterface` (the libraries' own registries, registered once per process under a tunelab
name; nothing of transformers is replaced). Batches that are not padding-free (a padding mask, a KV cache) go
through transformers' sdpa function unchanged.
"""

from __future__ import annotations

from typing import Any

NAME = "tunelab_rows"


def row_attention(module: Any, query: Any, key: Any, value: Any, attention_mask: Any, scaling: float | None = None,
                  dropout: float = 0.0, **kwargs: Any) -> tuple[Any, None]:
    import torch
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    positions = kwargs.get("position_ids")
    if (attention_mask is not None or positions is None or query.shape[0] != 1 or query.shape[2] != key.shape[2]
            or dropout or not getattr(module, "is_causal", True)):
        return sdpa_attention_forward(module, query, key, value, attention_mask, scaling=scaling, dropout=dropout,
                                      **kwargs)
    positions = positions[0]
    row = (positions == 0).cumsum(0) - 1  # which row each token belongs to
    if int(row[0]) != 0:  # not a packed batch that starts a row at its first token
        return sdpa_attention_forward(module, query, key, value, None, scaling=scaling, **kwargs)
    rows, width = int(row[-1]) + 1, int(positions.max()) + 1

    def padded(states: Any) -> Any:  # [1, heads, tokens, dim] -> [rows, heads, width, dim], fp32
        by_token = states[0].transpose(0, 1).float()
        grid = by_token.new_zeros(rows, width, *by_token.shape[1:])
        return grid.index_put((row, positions), by_token).transpose(1, 2)

    # fp32, autocast off (sdpa is on its bf16 list): PyTorch's CPU flash attention runs its backward ~3x faster in
    # fp32 than in bf16 at these sizes
    with torch.autocast(query.device.type, enabled=False):
        output = torch.nn.functional.scaled_dot_product_attention(padded(query), padded(key), padded(value),
                                                                  is_causal=True, scale=scaling, enable_gqa=True)
    return output.transpose(1, 2)[row, positions][None].to(query.dtype), None


def row_mask(*args: Any, attention_mask: Any = None, **kwargs: Any) -> Any:
    """No mask where the batch has no padding (the rows are told apart by their positions); sdpa's otherwise."""
    from transformers.masking_utils import sdpa_mask

    return None if attention_mask is None else sdpa_mask(*args, attention_mask=attention_mask, **kwargs)


def supports_row_attention(model: Any) -> bool:
    """Causal self-attention over whole rows only: no sliding window, no logit soft-capping, and a model that
    dispatches its attention through transformers' AttentionInterface."""
    config = getattr(model, "config", None)
    if config is None or getattr(config, "sliding_window", None) or getattr(config, "attn_logit_softcapping", None):
        return False
    can_set = getattr(model, "_can_set_attn_implementation", None)
    return bool(can_set and can_set())


def use_row_attention(model: Any) -> str | None:
    """Switch `model` (a transformers model, or peft's wrapper of one) to row attention; returns the attention
    implementation it replaced, or None where it does not apply. Nothing switches back: other batches (a padding
    mask, a KV cache) go through sdpa as before."""
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface

    from tunelab.models.load import transformers_model

    inner = transformers_model(model)
    if not supports_row_attention(inner):
        return None
    AttentionInterface.register(NAME, row_attention)
    AttentionMaskInterface.register(NAME, row_mask)
    before = inner.config._attn_implementation
    inner.set_attn_implementation(NAME)
    return before
