"""The running batch's decoding state: a KV cache whose rows can be added and removed between decoding steps.

transformers' DynamicCache holds, per layer, keys and values of shape [rows, kv heads, time, head dim]; generate
only ever appends to it. Continuous batching also needs to
  join   rows prefilled apart (left-padded) to the running rows: the shorter cache is left-padded along the time
         axis and the attention mask extended with zeros there, then both are concatenated along the row axis;
  leave  drop rows that ended (index_select on the row axis, DynamicCache.batch_select_indices);
  trim   drop leading time columns that are padding for every row (once a long row has left).
Every row stays left-padded (zeros, then ones in its mask), so a position id is the count of ones before it, and
padded keys are never attended to: a row's tokens are the same as when it runs alone.

Only plain DynamicLayer caches are joined: a sliding-window layer keeps only its last window of keys, which left
padding would shift out of place (`can_join` says no, and the engine then starts new rows only once a batch drains).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass
class Decoding:
    """Rows being decoded together: their cache, attention mask ([rows, time], 1 = a real token) and the token each
    row feeds to the next step ([rows])."""

    cache: Any  # transformers DynamicCache
    mask: Any
    tokens: Any

    @property
    def size(self) -> int:
        return int(self.mask.shape[0])

    def next_inputs(self) -> dict[str, Any]:
        """The next step's model inputs: each row's last token at its position (the count of its real tokens so
        far), and the mask with that token's column (the model appends its keys to the cache)."""
        import torch

        positions = self.mask.sum(-1, keepdim=True)
        self.mask = torch.cat([self.mask, self.mask.new_ones((self.size, 1))], dim=-1)
        return {"input_ids": self.tokens[:, None], "attention_mask": self.mask, "position_ids": positions}


def prefill_positions(mask: Any) -> Any:
    """Position ids of left-padded prompts (generate's rule: count the real tokens; pads get 0, never attended)."""
    return (mask.cumsum(-1) - 1).clamp(min=0) * mask


def can_join(cache: Any) -> bool:
    from transformers.cache_utils import DynamicLayer

    return all(type(layer) is DynamicLayer for layer in cache.layers)


def join(running: Decoding | None, joining: Decoding) -> Decoding:
    """The running rows followed by the joining ones, in one cache (the running one, changed in place)."""
    import torch

    if running is None or running.size == 0:
        return joining
    width = max(running.mask.shape[1], joining.mask.shape[1])
    for mine, theirs in zip(running.cache.layers, joining.cache.layers):
        mine.keys = torch.cat([left_pad_time(mine.keys, width), left_pad_time(theirs.keys, width)])
        mine.values = torch.cat([left_pad_time(mine.values, width), left_pad_time(theirs.values, width)])
    mask = torch.cat([left_pad_time(running.mask, width), left_pad_time(joining.mask, width)])
    return Decoding(running.cache, mask, torch.cat([running.tokens, joining.tokens]))


def keep(decoding: Decoding, rows: list[int]) -> Decoding:
    """Only `rows` (indices into the batch, in order); leading columns that are padding for all of them go too."""
    import torch

    if len(rows) < decoding.size:
        index = torch.tensor(rows, dtype=torch.long, device=decoding.mask.device)
        decoding.cache.batch_select_indices(index)
        decoding = Decoding(decoding.cache, decoding.mask[index], decoding.tokens[index])
    return trim(decoding)


def trim(decoding: Decoding) -> Decoding:
    if decoding.size == 0 or not can_join(decoding.cache):  # a sliding window's columns are not the mask's
        return decoding
    used = decoding.mask.any(0).nonzero()
    lead = int(used[0]) if len(used) else 0
    if lead == 0:
        return decoding
    for layer in decoding.cache.layers:
        layer.keys = layer.keys[:, :, lead:]
        layer.values = layer.values[:, :, lead:]
    return Decoding(decoding.cache, decoding.mask[:, lead:], decoding.tokens)


def left_pad_time(tensor: Any, width: int) -> Any:
    """Zeros on the left of the time axis (the mask's last axis; the keys' and values' third) up to `width`."""
    import torch.nn.functional as F

    missing = width - (tensor.shape[-1] if tensor.dim() == 2 else tensor.shape[-2])
    if missing == 0:
        return tensor
    return F.pad(tensor, (missing, 0)) if tensor.dim() == 2 else F.pad(tensor, (0, 0, missing, 0))
