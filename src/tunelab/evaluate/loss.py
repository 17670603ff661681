"""Teacher-forced loss on the answer tokens of each row (the same labels training used)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from tunelab.data.templates import IGNORE_INDEX, Encoded
from tunelab.evaluate.generation import autocast

if TYPE_CHECKING:
    from tunelab.device import Placement


def row_losses(model: Any, rows: list[Encoded], pad_id: int, batch_size: int = 8,
               placement: "Placement | None" = None) -> list[tuple[float, int]]:
    """(summed loss, label tokens) per row, in order. Rows are batched by length so batches pad little."""
    import torch
    import torch.nn.functional as F

    device = next(model.parameters()).device
    order = sorted(range(len(rows)), key=lambda i: len(rows[i].input_ids))
    results: list[tuple[float, int]] = [(0.0, 0)] * len(rows)
    for start in range(0, len(order), batch_size):
        positions = order[start : start + batch_size]
        chunk = [rows[i] for i in positions]
        width = max(len(row.input_ids) for row in chunk)
        input_ids = torch.full((len(chunk), width), pad_id, dtype=torch.long)
        labels = torch.full((len(chunk), width), IGNORE_INDEX, dtype=torch.long)
        attention_mask = torch.zeros((len(chunk), width), dtype=torch.long)
        for index, row in enumerate(chunk):
            input_ids[index, : len(row.input_ids)] = torch.tensor(row.input_ids)
            labels[index, : len(row.labels)] = torch.tensor(row.labels)
            attention_mask[index, : len(row.input_ids)] = 1
        with torch.no_grad(), autocast(placement):
            logits = model(input_ids=input_ids.to(device), attention_mask=attention_mask.to(device)).logits
        # Prompt tuning returns logits for the virtual tokens it put in front too; the last `width` are the row's.
        logits = logits[:, -width:]
        shifted = labels[:, 1:].to(device)
        token_losses = F.cross_entropy(
            logits[:, :-1].float().reshape(-1, logits.shape[-1]), shifted.reshape(-1),
            ignore_index=IGNORE_INDEX, reduction="none",
        ).view(shifted.shape)
        counts = (shifted != IGNORE_INDEX).sum(dim=1)
        for position, total, count in zip(positions, token_losses.sum(dim=1).tolist(), counts.tolist()):
            results[position] = (total, count)
    return results

