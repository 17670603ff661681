"""Did fine-tuning cost general ability? Base and tuned model on text that has nothing to do with the task.

Probes, each run on both models with the same rows:
  general_text   340 sentences on everyday subjects, written for tunelab (general_text.txt, shipped with it)
  user_text      the recipe's `eval.forgetting.text`, if given
  prompts        general prompts (`builtin`: general_prompts.txt, or a file): the base model answers them greedily,
                 and the tuned model's perplexity on those answers is compared with the base model's own; both
                 models' answers are kept for reading side by side (causal LMs only: a classifier writes nothing)

Two measures, chosen by the task from what the model is:
  perplexity  a causal LM: tuned perplexity / base perplexity - 1 (0.05 = 5% more surprised by the same text)
  drift       a model with a classification head, which has no language-model head to read text with: how far the
              tuned model's representation of the same text moved, 1 - cosine similarity of the mean-pooled last
              hidden states, averaged over the rows (0: unchanged; the same 0-1 scale as the threshold)
Each probe's figure comes with a paired bootstrap interval over its rows; the gate's figure is the largest.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tunelab.data.templates import Encoded, encode_conversation, encode_prompt, tokens
from tunelab.errors import TunelabError
from tunelab.evaluate.generation import autocast
from tunelab.evaluate.loss import row_losses
from tunelab.run.record import Forgetting, ProbeResult

if TYPE_CHECKING:
    from tunelab.config.schema import ForgettingSection
    from tunelab.device import Placement

GENERAL_TEXT = "general_text.txt"
GENERAL_PROMPTS = "general_prompts.txt"
TEXT_BATCH = 32  # general-text passages are single sentences: many fit in one forward pass
MEASURES = ("perplexity", "drift")


@dataclass
class Probe:
    measure: str
    texts: dict[str, list[str]] = field(default_factory=dict)  # probe name -> passages
    prompts: list[str] = field(default_factory=list)


def shipped_lines(name: str) -> list[str]:
    text = resources.files("tunelab.evaluate").joinpath(name).read_text(encoding="utf-8")
    return [line.strip() for line in text.splitlines() if line.strip()]


def read_lines(path: Path, what: str) -> list[str]:
    """Passages or prompts from a .txt file (one a line) or a data file's `text` (or `prompt`) column."""
    if not path.is_file():
        raise TunelabError(f"eval.forgetting.{what}: {path}: file not found")
    if path.suffix.lower() == ".txt":
        lines = [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    else:
        from tunelab.data.readers import read_records

        column = "text" if what == "text" else "prompt"
        lines = []
        for record in read_records(path):
            value = record.fields.get(column)
            if not isinstance(value, str) or not value.strip():
                raise TunelabError(f"{record.where}: eval.forgetting.{what} needs a text field '{column}'")
            lines.append(value.strip())
    if not lines:
        raise TunelabError(f"eval.forgetting.{what}: {path}: no text in it")
    return lines


def load_probe(section: "ForgettingSection", measure: str = "perplexity") -> Probe | None:
    """The probe rows the recipe asks for (checked before any model is loaded), or None when disabled."""
    if not section.enabled:
        return None
    probe = Probe(measure, texts={"general_text": shipped_lines(GENERAL_TEXT)})
    if section.text:
        probe.texts["user_text"] = read_lines(Path(section.text), "text")
    if section.prompts and measure != "perplexity":
        raise TunelabError("eval.forgetting.prompts: this run's model has a classification head and writes no "
                           "answers to general prompts; leave prompts out (its forgetting is measured as drift)")
    if section.prompts == "builtin":
        probe.prompts = shipped_lines(GENERAL_PROMPTS)
    elif section.prompts:
        probe.prompts = read_lines(Path(section.prompts), "prompts")
    return probe


def run_probe(model: Any, tokenizer: Any, probe: Probe, stop_ids: set[int], max_length: int, max_new_tokens: int,
              batch_size: int, placement: "Placement | None",
              base_answers: list[str] | None = None) -> tuple[dict[str, Any], list[str]]:
    """One model's rows on every probe (per row: (loss, tokens) for perplexity, a vector for drift), and its
    answers to the general prompts. For prompts, `base_answers` are the texts scored (None: this model is the
    base, so it answers first and its own answers are scored)."""
    results: dict[str, Any] = {}
    for name, passages in probe.texts.items():
        ids = [tokens(tokenizer, passage)[:max_length] for passage in passages]
        if probe.measure == "drift":
            results[name] = mean_hidden_states(model, ids, tokenizer.pad_token_id, placement)
        else:
            # The text alone, no end-of-text token: whether a model expects a chat turn to end after a bare
            # sentence is exactly what chat tuning changes, and it would swamp the change in how well it reads.
            results[name] = row_losses(model, [Encoded(row, row) for row in ids], tokenizer.pad_token_id,
                                       batch_size=TEXT_BATCH, placement=placement)
    answers: list[str] = []
    if probe.prompts:
        from tunelab.evaluate.generation import generate_texts

        conversations = [[{"role": "user", "content": prompt}] for prompt in probe.prompts]
        prompts = [encode_prompt(tokenizer, messages) for messages in conversations]
        answers = generate_texts(model, tokenizer, prompts, max_new_tokens, batch_size, sorted(stop_ids),
                                 placement=placement).texts
        scored = base_answers if base_answers is not None else answers
        rows = [encode_conversation(tokenizer, messages + [{"role": "assistant", "content": answer}], stop_ids)
                for messages, answer in zip(conversations, scored)]
        rows = [Encoded(row.input_ids[:max_length], row.labels[:max_length]) for row in rows]
        results["prompts"] = row_losses(model, rows, tokenizer.pad_token_id, placement=placement)
    return results, answers


def mean_hidden_states(model: Any, rows: list[list[int]], pad_id: int, placement: "Placement | None",
                       batch_size: int = TEXT_BATCH) -> list[list[float]]:
    """Each row's last hidden state averaged over its tokens (a model with a classification head)."""
    import torch

    from tunelab.evaluate.generation import right_pad

    device = next(model.parameters()).device
    vectors: list[list[float]] = []
    for start in range(0, len(rows), batch_size):
        batch = right_pad(rows[start : start + batch_size], pad_id)
        with torch.no_grad(), autocast(placement):
            hidden = model(**{key: value.to(device) for key, value in batch.items()},
                           output_hidden_states=True).hidden_states[-1].float()
        mask = batch["attention_mask"].to(device).unsqueeze(-1).float()
        # Prompt tuning puts its virtual tokens' states in front of the row's; the last `width` are the row's.
        hidden = hidden[:, -mask.shape[1]:]
        vectors += ((hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1)).tolist()
    return vectors


def probe_statistics(measure: str, base: Any, tuned: Any) -> tuple[Any, Any]:
    """Per-row statistics of each model that the probe's figure is scored from (see `figure`)."""
    import numpy as np

    from tunelab.metrics.registry import as_array

    if measure == "perplexity":
        return as_array(base), as_array(tuned)
    first, second = np.asarray(base, dtype=np.float64), np.asarray(tuned, dtype=np.float64)
    cosine = (first * second).sum(axis=1) / np.maximum(
        np.linalg.norm(first, axis=1) * np.linalg.norm(second, axis=1), 1e-12)
    ones = np.ones_like(cosine)
    return as_array(np.stack([ones, ones], axis=1).tolist()), as_array(np.stack([1 - cosine, ones], axis=1).tolist())


def figure(measure: str, base_summed: Any, tuned_summed: Any) -> float:
    """The probe's forgetting figure from summed per-row statistics (exact under bootstrap resampling)."""
    from tunelab.metrics.registry import METRICS, ratio

    if measure == "perplexity":
        perplexity = METRICS["perplexity"].score
        return perplexity(tuned_summed) / perplexity(base_summed) - 1
    return ratio(tuned_summed)


def summarize(probe: Probe, base: dict[str, Any], tuned: dict[str, Any], threshold: float, resamples: int,
              confidence: float, seed: int) -> Forgetting:
    """The figure per probe with its interval; `value` is the largest, `flagged` above the threshold."""
    from tunelab.evaluate.bootstrap import percentile_interval, resample_weights
    from tunelab.metrics.registry import METRICS

    probes = {}
    for name in [*probe.texts, *(["prompts"] if probe.prompts else [])]:
        measure = "perplexity" if name == "prompts" else probe.measure
        base_stats, tuned_stats = probe_statistics(measure, base[name], tuned[name])
        change = figure(measure, base_stats.sum(axis=0), tuned_stats.sum(axis=0))
        interval = None
        if resamples:
            weights = resample_weights(len(base_stats), resamples, seed)
            changes = [figure(measure, a, b) for a, b in zip(weights @ base_stats, weights @ tuned_stats)]
            import numpy as np

            interval = percentile_interval(np.asarray(changes), confidence)
        perplexity = METRICS["perplexity"].score
        values = ((perplexity(base_stats.sum(axis=0)), perplexity(tuned_stats.sum(axis=0)))
                  if measure == "perplexity" else (None, None))
        tokens_counted = int(base_stats[:, 1].sum()) if measure == "perplexity" else 0
        probes[name] = ProbeResult(rows=len(base_stats), tokens=tokens_counted, measure=measure, base=values[0],
                                   tuned=values[1], change=change, interval=interval, flagged=change > threshold)
    worst = max(probes, key=lambda name: probes[name].change)
    value = probes[worst].change
    return Forgetting(threshold=threshold, measure=probe.measure, probes=probes, value=value,
                      flagged=value > threshold, worst_probe=worst)


def prompt_answers(probe: Probe, base: list[str], tuned: list[str]) -> list[dict[str, str]]:
    return [{"prompt": prompt, "base": base_answer, "tuned": tuned_answer}
            for prompt, base_answer, tuned_answer in zip(probe.prompts, base, tuned)]
