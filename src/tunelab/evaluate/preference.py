"""Preference scoring: does a model rank the chosen answer above the rejected one?

A language model (task dpo) ranks a pair by its log-probability margin, log p(chosen | prompt) - log p(rejected |
prompt), summed over the answer tokens. A positive margin means the model ranks the pair as the data does; DPO's
implicit reward of an answer is beta times its log-probability ratio to the reference, so the tuned model's margin
minus the base model's (the reference) is, up to beta, the implicit reward margin. Pairs are tokenized the way TRL's
DPOTrainer tokenizes them (the prompt with the generation prompt, then prompt and answer rendered together, the
answer starting where the two diverge), so evaluation scores the tokens training moved.

A feedback row (task kto: a prompt and one completion judged desirable or not) has no second answer to rank it
against; a model's lean on it is the completion's mean log-probability per token, counted + when the completion is
desirable and - when not (`feedback_outputs`). Averaged per token so that long and short completions weigh alike.

A reward model (task reward_model) ranks a pair by its reward margin, score(prompt + chosen) - score(prompt +
rejected), its scalar head read on each whole conversation as TRL's RewardTrainer reads it; its loss is the
trainer's, -log sigmoid(margin), per pair.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

from tunelab.data.templates import IGNORE_INDEX, Encoded
from tunelab.evaluate.loss import row_losses
from tunelab.evaluate.outputs import ModelOutputs

if TYPE_CHECKING:
    from tunelab.data.formats import Example
    from tunelab.device import Placement


def chat_ids(tokenizer: Any, messages: list[dict[str, str]], add_generation_prompt: bool) -> list[int]:
    encoded = tokenizer.apply_chat_template(messages, tokenize=True, return_dict=True,
                                            add_generation_prompt=add_generation_prompt)
    return list(encoded["input_ids"])


def answer_encodings(tokenizer: Any, prompt: list[dict[str, str]], answers: list[str],
                     max_length: int) -> tuple[list[Encoded], int]:
    """Each answer after the prompt, with loss labels on the answer tokens only, cut to `max_length` as TRL's
    collator cuts it (the start kept); and the prompt's length in tokens."""
    from trl.data_utils import common_prefix_length

    prompt_ids = chat_ids(tokenizer, prompt, add_generation_prompt=True)
    fulls = [chat_ids(tokenizer, [*prompt, {"role": "assistant", "content": answer}], False) for answer in answers]
    start = min(common_prefix_length(prompt_ids, full) for full in fulls)
    encodings = [Encoded(full[:max_length], ([IGNORE_INDEX] * start + full[start:])[:max_length]) for full in fulls]
    return encodings, start


def pair_encodings(tokenizer: Any, example: "Example", max_length: int) -> tuple[Encoded, Encoded]:
    (chosen, rejected), _ = answer_encodings(tokenizer, example.messages, [example.chosen, example.rejected],
                                             max_length)
    return chosen, rejected


def preference_outputs(model: Any, tokenizer: Any, pairs: list["Example"], max_length: int, batch_size: int,
                       placement: "Placement | None") -> ModelOutputs:
    """Per pair: the margin, the answer the model ranks first (its 'prediction'), and its loss on the chosen
    answer (the teacher-forced loss every evaluation reports)."""
    started = time.perf_counter()
    encoded = [pair_encodings(tokenizer, example, max_length) for example in pairs]
    chosen = row_losses(model, [pair[0] for pair in encoded], tokenizer.pad_token_id, batch_size, placement)
    rejected = row_losses(model, [pair[1] for pair in encoded], tokenizer.pad_token_id, batch_size, placement)
    # row_losses gives summed negative log-likelihoods: the margin is the rejected answer's minus the chosen's.
    margins = [rejected_loss - chosen_loss for (chosen_loss, _), (rejected_loss, _) in zip(chosen, rejected)]
    return ranked(pairs, margins, chosen, started)


def ranked(pairs: list["Example"], margins: list[float], losses: list[tuple[float, int]],
           started: float) -> ModelOutputs:
    """What a model produced on the pairs: the answer it ranks first (its 'prediction'), its margins, losses."""
    preferred = [example.chosen if margin > 0 else example.rejected for example, margin in zip(pairs, margins)]
    seconds = time.perf_counter() - started
    return ModelOutputs(preferred, losses, [0] * len(pairs),
                        {"rows_per_second": len(pairs) / seconds if seconds else 0.0}, margins=margins)


def feedback_outputs(model: Any, tokenizer: Any, rows: list["Example"], max_length: int, batch_size: int,
                     placement: "Placement | None") -> ModelOutputs:
    """Per feedback row: its signed mean log-probability (in `margins`), the completion as the row's 'prediction'
    (nothing is generated), and the loss on the desirable completions only (undesirable rows count no tokens), as a
    pair's loss is the loss on its chosen answer."""
    started = time.perf_counter()
    encoded = [answer_encodings(tokenizer, example.messages, [example.completion], max_length)[0][0]
               for example in rows]
    losses = row_losses(model, encoded, tokenizer.pad_token_id, batch_size, placement)
    signed = [(1.0 if example.desirable else -1.0) * (-total / count if count else 0.0)
              for example, (total, count) in zip(rows, losses)]
    desirable_losses = [loss if example.desirable else (0.0, 0) for example, loss in zip(rows, losses)]
    seconds = time.perf_counter() - started
    return ModelOutputs([example.completion for example in rows], desirable_losses, [0] * len(rows),
                        {"rows_per_second": len(rows) / seconds if seconds else 0.0}, margins=signed)


def conversation_ids(tokenizer: Any, example: "Example", answer: str) -> list[int]:
    """The whole conversation, prompt and answer, as a reward model reads it."""
    return chat_ids(tokenizer, [*example.messages, {"role": "assistant", "content": answer}], False)


def rewards(model: Any, sequences: list[list[int]], pad_id: int, batch_size: int,
            placement: "Placement | None") -> list[float]:
    """The scalar head's output on each sequence (right-padded: the head reads each row's last real token)."""
    import torch

    from tunelab.evaluate.generation import autocast, right_pad

    device = next(model.parameters()).device
    out: list[float] = []
    for start in range(0, len(sequences), batch_size):
        batch = {key: value.to(device) for key, value in right_pad(sequences[start : start + batch_size],
                                                                     pad_id).items()}
        with torch.no_grad(), autocast(placement):
            logits = model(**batch).logits
        out += logits.float()[:, 0].tolist()
    return out


def reward_outputs(model: Any, tokenizer: Any, pairs: list["Example"], max_length: int, batch_size: int,
                   placement: "Placement | None") -> ModelOutputs:
    import math

    started = time.perf_counter()
    chosen = [conversation_ids(tokenizer, example, example.chosen)[:max_length] for example in pairs]
    rejected = [conversation_ids(tokenizer, example, example.rejected)[:max_length] for example in pairs]
    scores = rewards(model, chosen + rejected, tokenizer.pad_token_id, batch_size, placement)
    margins = [good - bad for good, bad in zip(scores[: len(pairs)], scores[len(pairs) :])]
    # -log sigmoid(margin), written to stay finite for large margins of either sign
    losses = [(max(-margin, 0.0) + math.log1p(math.exp(-abs(margin))), 1) for margin in margins]
    return ranked(pairs, margins, losses, started)
