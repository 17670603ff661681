"""Did fine-tuning cost general ability? Perplexity of base and tuned on text that has nothing to do with the task.

Probes, each run on both models with the same rows:
  general_text   340 sentences on everyday subjects, written for tunelab (general_text.txt, shipped with it)
  user_text      the recipe's `eval.forgetting.text`, if given
  prompts        general prompts (`builtin`: general_prompts.txt, or a file): the base model answers them greedily,
                 and the tuned model's perplexity on those answers is compared with the base model's own; both
                 models' answers are kept for reading side by side.
The forgetting figure of a probe is tuned perplexity / base perplexity - 1 (0.05 = 5% more surprised), with a
paired bootstrap interval over its rows; the gate's figure is the largest of them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from tunelab.config.schema import ForgettingSection
from tunelab.data.templates import Encoded, encode_conversation, encode_prompt, tokens
from tunelab.errors import TunelabError
from tunelab.evaluate.loss import row_losses

GENERAL_TEXT = "general_text.txt"
GENERAL_PROMPTS = "general_prompts.txt"
TEXT_BATCH = 32  # general-text passages are single sentences: many fit in one forward pass


@dataclass
class Probe:
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


def load_probe(section: ForgettingSection) -> Probe | None:
    """The probe rows the recipe asks for (checked before any model is loaded), or None when disabled."""
    if not section.enabled:
        return None
    probe = Probe(texts={"general_text": shipped_lines(GENERAL_TEXT)})
    if section.text:
        probe.texts["user_text"] = read_lines(Path(section.text), "text")
    if section.prompts == "builtin":
        probe.prompts = shipped_lines(GENERAL_PROMPTS)
    elif section.prompts:
        probe.prompts = read_lines(Path(section.prompts), "prompts")
    return probe


def run_probe(model: Any, tokenizer: Any, probe: Probe, stop_ids: set[int], max_length: int, max_new_tokens: int,
              batch_size: int, bf16: bool, base_answers: list[str] | None = None) -> dict[str, Any]:
    """One model's losses on every probe. For prompts, `base_answers` are the texts scored (None: this model is
    the base, so it answers first and its answers are scored)."""
    from tunelab.evaluate.generation import generate_texts

    results: dict[str, Any] = {}
    for name, passages in probe.texts.items():
        # The text alone, no end-of-text token: whether a model expects a chat turn to end after a bare sentence is
        # exactly what chat tuning changes, and it would swamp the change in how well it reads the text.
        rows = [tokens(tokenizer, passage)[:max_length] for passage in passages]
        rows = [Encoded(ids, ids) for ids in rows]
        results[name] = row_losses(model, rows, tokenizer.pad_token_id, batch_size=TEXT_BATCH, autocast_bf16=bf16)
    if probe.prompts:
        conversations = [[{"role": "user", "content": prompt}] for prompt in probe.prompts]
        prompts = [encode_prompt(tokenizer, messages) for messages in conversations]
        generated = generate_texts(model, tokenizer, prompts, max_new_tokens, batch_size, sorted(stop_ids),
                                   autocast_bf16=bf16)
        scored = base_answers if base_answers is not None else generated.texts
        rows = [encode_conversation(tokenizer, messages + [{"role": "assistant", "content": answer}], stop_ids)
                for messages, answer in zip(conversations, scored)]
        rows = [Encoded(row.input_ids[:max_length], row.labels[:max_length]) for row in rows]
        results["prompts"] = row_losses(model, rows, tokenizer.pad_token_id, autocast_bf16=bf16)
        results["prompt_answers"] = generated.texts
    return results


def summarize(probe: Probe, base: dict[str, Any], tuned: dict[str, Any], threshold: float, resamples: int,
              confidence: float, seed: int) -> dict[str, Any]:
    """Relative perplexity change per probe with its interval; `value` is the largest, `flagged` above threshold."""
    from tunelab.evaluate.bootstrap import relative_change_interval, resample_weights
    from tunelab.evaluate.registry import METRICS, as_array

    perplexity = METRICS["perplexity"].score
    probes = {}
    names = [*probe.texts, *(["prompts"] if probe.prompts else [])]
    for name in names:
        base_stats, tuned_stats = as_array(base[name]), as_array(tuned[name])
        base_ppl, tuned_ppl = perplexity(base_stats.sum(axis=0)), perplexity(tuned_stats.sum(axis=0))
        change = tuned_ppl / base_ppl - 1
        interval = None
        if resamples:
            weights = resample_weights(len(base_stats), resamples, seed)
            interval = relative_change_interval(perplexity, base_stats, tuned_stats, weights, confidence)
        probes[name] = {"rows": len(base_stats), "tokens": int(base_stats[:, 1].sum()), "base_perplexity": base_ppl,
                        "tuned_perplexity": tuned_ppl, "relative_change": change, "interval": interval,
                        "flagged": change > threshold}
    value = max(entry["relative_change"] for entry in probes.values())
    return {"threshold": threshold, "probes": probes, "value": value, "flagged": value > threshold,
            "worst_probe": max(probes, key=lambda name: probes[name]["relative_change"])}


def prompt_answers(probe: Probe, base: dict[str, Any], tuned: dict[str, Any]) -> list[dict[str, str]]:
    return [{"prompt": prompt, "base": base_answer, "tuned": tuned_answer}
            for prompt, base_answer, tuned_answer in zip(probe.prompts, base.get("prompt_answers", []),
                                                         tuned.get("prompt_answers", []))]
