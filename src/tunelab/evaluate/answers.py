"""How a model answers the test rows, in the ways tasks evaluate: each returns ModelOutputs for the scorer.

  generated_answers  a causal LM writes each answer (batched greedy decoding); loss on the reference answer
  label_answers      a causal LM answers with a class: each class is scored by the log-probability of the whole
                     answer (the label and the end-of-turn token, under the chat template used in training) and the
                     best is the prediction, so an answer outside the label set is impossible and a label that is a
                     prefix of another ("spam" / "spammy") is told apart; loss on the reference class's answer
  head_answers       a model with a classification head: the arg-max class; loss is the cross-entropy of the logits
  text_losses        plain text (continued pre-training): loss on every token, no answer
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

from tunelab.data.templates import Encoded, encode_conversation, encode_prompt, encode_text, stop_token_ids
from tunelab.evaluate.generation import autocast, generate_texts
from tunelab.evaluate.loss import row_losses
from tunelab.evaluate.outputs import ModelOutputs
from tunelab.models.load import model_stop_ids

if TYPE_CHECKING:
    from tunelab.device import Placement


def cut(rows: list[Encoded], max_length: int) -> list[Encoded]:
    return [Encoded(row.input_ids[:max_length], row.labels[:max_length]) for row in rows]


def model_stops(model: Any, tokenizer: Any) -> set[int]:
    return stop_token_ids(tokenizer, model_stop_ids(model))


def generated_answers(model: Any, tokenizer: Any, conversations: list[list[dict[str, str]]],
                      prompts: list[list[dict[str, str]]], max_new_tokens: int, batch_size: int, max_length: int,
                      placement: "Placement | None") -> ModelOutputs:
    """`conversations` end with the reference answer (scored for loss); `prompts` are what the model answers."""
    stop_ids = model_stops(model, tokenizer)
    encoded = cut([encode_conversation(tokenizer, messages, stop_ids) for messages in conversations], max_length)
    losses = row_losses(model, encoded, tokenizer.pad_token_id, placement=placement)
    generated = generate_texts(model, tokenizer, [encode_prompt(tokenizer, prompt) for prompt in prompts],
                               max_new_tokens, batch_size, sorted(stop_ids), placement=placement)
    return ModelOutputs(generated.texts, losses, generated.row_tokens,
                        {"tokens_per_second": generated.tokens_per_second,
                         "rows_per_second": generated.rows_per_second})


def label_answers(model: Any, tokenizer: Any, prompts: list[list[dict[str, str]]], labels: list[str],
                  references: list[str], batch_size: int, placement: "Placement | None") -> ModelOutputs:
    started = time.perf_counter()
    stop_ids = model_stops(model, tokenizer)
    rows = [encode_conversation(tokenizer, prompt + [{"role": "assistant", "content": label}], stop_ids)
            for prompt in prompts for label in labels]
    scored = row_losses(model, rows, tokenizer.pad_token_id, batch_size=batch_size, placement=placement)
    predictions, losses = [], []
    for index, reference in enumerate(references):
        options = scored[index * len(labels):(index + 1) * len(labels)]
        predictions.append(labels[min(range(len(labels)), key=lambda k: options[k][0])])
        losses.append(options[labels.index(reference)] if reference in labels else (float("nan"), 1))
    seconds = time.perf_counter() - started
    return ModelOutputs(predictions, losses, [0] * len(prompts),
                        {"rows_per_second": len(prompts) / seconds if seconds else 0.0})


def head_answers(model: Any, tokenizer: Any, texts: list[str], labels: list[str], references: list[str] | None,
                 max_length: int, batch_size: int, placement: "Placement | None") -> ModelOutputs:
    import torch
    import torch.nn.functional as F

    started = time.perf_counter()
    device = next(model.parameters()).device
    predictions: list[str] = []
    losses: list[tuple[float, int]] = []
    for start in range(0, len(texts), batch_size):
        batch = tokenizer(texts[start:start + batch_size], padding=True, truncation=True, max_length=max_length,
                          return_tensors="pt")
        batch.pop("token_type_ids", None)  # not every base model takes them; a single-segment input needs none
        with torch.no_grad(), autocast(placement):
            logits = model(**{key: value.to(device) for key, value in batch.items()}).logits.float()
        predictions += [labels[index] for index in logits.argmax(dim=-1).tolist()]
        if references is not None:
            targets = torch.tensor([labels.index(label) for label in references[start:start + batch_size]],
                                   device=device)
            losses += [(value, 1) for value in F.cross_entropy(logits, targets, reduction="none").tolist()]
    seconds = time.perf_counter() - started
    return ModelOutputs(predictions, losses, [0] * len(texts),
                        {"rows_per_second": len(texts) / seconds if seconds else 0.0})


def text_losses(model: Any, tokenizer: Any, texts: list[str], max_length: int,
                placement: "Placement | None") -> ModelOutputs:
    started = time.perf_counter()
    stop_ids = model_stops(model, tokenizer)
    rows = cut([encode_text(tokenizer, text, stop_ids) for text in texts], max_length)
    losses = row_losses(model, rows, tokenizer.pad_token_id, placement=placement)
    seconds = time.perf_counter() - started
    return ModelOutputs([""] * len(texts), losses, [0] * len(texts),
                        {"rows_per_second": len(texts) / seconds if seconds else 0.0})
