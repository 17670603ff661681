"""Batched greedy (or sampled) generation with left padding and the KV cache."""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from tunelab.device import Placement


@dataclass
class Generated:
    texts: list[str]
    new_tokens: int
    seconds: float
    row_tokens: list[int] = field(default_factory=list)  # tokens generated for each prompt, in prompt order
    row_ids: list[list[int]] = field(default_factory=list)  # each prompt's generated ids, its stop token included

    @property
    def tokens_per_second(self) -> float:
        return self.new_tokens / self.seconds if self.seconds else 0.0

    @property
    def rows_per_second(self) -> float:
        return len(self.texts) / self.seconds if self.seconds else 0.0


def generate_texts(
    model: Any,
    tokenizer: Any,
    prompts: list[list[int]],
    max_new_tokens: int,
    batch_size: int = 16,
    stop_ids: list[int] | None = None,
    temperature: float = 0.0,
    placement: "Placement | None" = None,
    top_p: float | None = None,
    whole_distribution: bool = False,
) -> Generated:
    """Continue each prompt (token ids). Prompts are sorted by length so batches pad little; order is restored.
    `whole_distribution`: sample from the model's own distribution, no top-k or top-p cut from its generation
    config (what a KL estimate needs)."""
    import torch

    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
    texts: list[str] = [""] * len(prompts)
    row_tokens = [0] * len(prompts)
    row_ids: list[list[int]] = [[] for _ in prompts]
    new_tokens = 0
    started = time.perf_counter()
    device = next(model.parameters()).device
    for start in range(0, len(order), batch_size):
        chunk = order[start : start + batch_size]
        batch = left_pad([prompts[i] for i in chunk], tokenizer.pad_token_id)
        batch = {key: value.to(device) for key, value in batch.items()}
        options = {"max_new_tokens": max_new_tokens, "pad_token_id": tokenizer.pad_token_id,
                   "eos_token_id": stop_ids or tokenizer.eos_token_id, "use_cache": True}
        if temperature > 0:
            options.update(do_sample=True, temperature=temperature, **({"top_p": top_p} if top_p else {}))
            if whole_distribution:
                options.update(top_k=0, top_p=1.0)
        else:
            options.update(do_sample=False, temperature=None, top_p=None, top_k=None)
        with torch.no_grad(), autocast(placement):
            output = model.generate(**batch, **options)
        continuations = output[:, batch["input_ids"].shape[1] :]
        for row, index in enumerate(chunk):
            generated = continuations[row].tolist()
            ids = trim_at_stop(generated, set(stop_ids or [tokenizer.eos_token_id]))
            new_tokens += len(ids)
            row_tokens[index] = len(ids)
            row_ids[index] = generated[: len(ids) + 1]  # with the stop token, where it stopped
            texts[index] = tokenizer.decode(ids, skip_special_tokens=True)
    return Generated(texts, new_tokens, time.perf_counter() - started, row_tokens, row_ids)


def autocast(placement: "Placement | None") -> Any:
    """The placement's autocast, or none (float32) when no placement is given."""
    return placement.autocast() if placement is not None else contextlib.nullcontext()


def left_pad(sequences: list[list[int]], pad_id: int) -> dict[str, Any]:
    import torch

    width = max(len(sequence) for sequence in sequences)
    input_ids = torch.full((len(sequences), width), pad_id, dtype=torch.long)
    attention_mask = torch.zeros((len(sequences), width), dtype=torch.long)
    for row, sequence in enumerate(sequences):
        input_ids[row, width - len(sequence) :] = torch.tensor(sequence)
        attention_mask[row, width - len(sequence) :] = 1
    return {"input_ids": input_ids, "attention_mask": attention_mask}


def right_pad(sequences: list[list[int]], pad_id: int) -> dict[str, Any]:
    """Rows padded on the right with an attention mask (for forward passes that read every position)."""
    import torch

    width = max(len(sequence) for sequence in sequences)
    input_ids = torch.full((len(sequences), width), pad_id, dtype=torch.long)
    attention_mask = torch.zeros((len(sequences), width), dtype=torch.long)
    for row, sequence in enumerate(sequences):
        input_ids[row, : len(sequence)] = torch.tensor(sequence)
        attention_mask[row, : len(sequence)] = 1
    return {"input_ids": input_ids, "attention_mask": attention_mask}


def trim_at_stop(ids: list[int], stop_ids: set[int]) -> list[int]:
    """The generated ids up to (not including) the first stop token; the padding of finished rows follows it."""
    for position, token in enumerate(ids):
        if token in stop_ids:
            return ids[:position]
    return ids
