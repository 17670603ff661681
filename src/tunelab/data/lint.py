"""Template lint: before any training, check on a few real rows that the chat template does what training needs.

Checks, each on the encoded rows exactly as training will see them:
  renders             the template renders the row and marks every assistant turn (encode_example succeeds)
  loss_on_answers     the tokens carrying loss are the assistant answers, nothing else, and all of them
  end_of_turn_in_loss each answer's end-of-turn/EOS token carries loss (else the model never learns to stop)
  same_as_inference   the prompt part is token for token what inference sends, with the template reloaded from a
                      saved tokenizer, as `tunelab eval/generate/serve` load it from the run folder
  fits_context        data.max_length fits the model's context window (else rows are cut where no one counts)
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass, field
from typing import Any

from tunelab.data.formats import Example
from tunelab.data.templates import IGNORE_INDEX, Encoded, encode_example, encode_prompt, prompt_and_reference
from tunelab.errors import TunelabError

CHECKS = ("renders", "loss_on_answers", "end_of_turn_in_loss", "same_as_inference", "fits_context")


@dataclass
class Check:
    name: str
    passed: bool
    detail: str = ""


@dataclass
class Rendered:
    where: str
    segments: list[tuple[str, bool]]  # (text, carries loss)


@dataclass
class LintReport:
    checks: list[Check] = field(default_factory=list)
    examples: list[Rendered] = field(default_factory=list)
    skipped: str | None = None  # why no check ran (no conversation or text rows)

    @property
    def failures(self) -> list[Check]:
        return [check for check in self.checks if not check.passed]

    def raise_if_failed(self) -> None:
        if self.failures:
            first = self.failures[0]
            more = f" (and {len(self.failures) - 1} more failed check(s))" if len(self.failures) > 1 else ""
            raise TunelabError(f"template lint: {first.name}: {first.detail}{more}")

    def to_json(self) -> dict[str, Any]:
        return {"checks": [vars(check) for check in self.checks], "skipped": self.skipped,
                "examples": [{"where": r.where, "segments": [list(s) for s in r.segments]} for r in self.examples]}


def lint_rows(examples: list[Example], count: int) -> list[Example]:
    """The first `count` trainable rows, plus the one with the most answers (multi-turn rows exercise more)."""
    trainable = [example for example in examples if example.kind in ("chat", "text")]
    chosen = trainable[:count]
    chats = [example for example in trainable if example.kind == "chat"]
    if chats:
        most_turns = max(chats, key=lambda e: sum(m["role"] == "assistant" for m in e.messages))
        if most_turns not in chosen:
            chosen.append(most_turns)
    return chosen


def lint_template(tokenizer: Any, examples: list[Example], stop_ids: set[int], max_length: int,
                  context: int | None, count: int = 5) -> LintReport:
    rows = lint_rows(examples, count)
    report = LintReport()
    if not rows:
        report.skipped = "no conversation or text rows (label and preference rows are not trained with the template)"
        return report
    failures: dict[str, str] = {}
    inference_tokenizer = reloaded(tokenizer)
    for example in rows:
        try:
            encoded = encode_example(tokenizer, example, stop_ids)
        except TunelabError as error:
            name = "end_of_turn_in_loss" if "end of the assistant turn" in str(error) else "renders"
            failures.setdefault(name, f"{example.where}: {error}")
            continue
        for name, problem in row_problems(tokenizer, inference_tokenizer, example, encoded, stop_ids):
            failures.setdefault(name, f"{example.where}: {problem}")
        report.examples.append(Rendered(example.where, segments(tokenizer, encoded)))
    if context is not None and max_length > context:
        failures["fits_context"] = (f"data.max_length={max_length} is longer than the model's context window "
                                    f"({context} tokens); lower it to {context} or less")
    for name in CHECKS:
        ran = name != "fits_context" or context is not None
        if ran:
            report.checks.append(Check(name, name not in failures, failures.get(name, "")))
    return report


def reloaded(tokenizer: Any) -> Any:
    """The tokenizer as inference will load it: saved (as train saves it into the run) and read back."""
    from transformers import AutoTokenizer

    with tempfile.TemporaryDirectory() as folder:
        tokenizer.save_pretrained(folder)
        return AutoTokenizer.from_pretrained(folder)


def spans(encoded: Encoded) -> list[tuple[int, int]]:
    """[start, end) of each run of loss-carrying tokens."""
    found, start = [], None
    for position, label in enumerate(encoded.labels + [IGNORE_INDEX]):
        if label != IGNORE_INDEX and start is None:
            start = position
        elif label == IGNORE_INDEX and start is not None:
            found.append((start, position))
            start = None
    return found


def plain(tokenizer: Any, ids: list[int]) -> str:
    """Decoded text without special tokens and with spacing normalised (tokenizers differ in how they decode)."""
    return " ".join(tokenizer.decode(ids, skip_special_tokens=True).split())


def row_problems(tokenizer: Any, inference_tokenizer: Any, example: Example, encoded: Encoded,
                 stop_ids: set[int]) -> list[tuple[str, str]]:
    problems = []
    runs = spans(encoded)
    if example.kind == "chat":
        last = max(i for i, m in enumerate(example.messages) if m["role"] == "assistant")
        answers = [m["content"] for m in example.messages[: last + 1] if m["role"] == "assistant"]
    else:
        answers = [example.text]
    if len(runs) != len(answers):
        problems.append(("loss_on_answers", f"{len(runs)} loss-carrying span(s) for {len(answers)} answer(s)"))
    for (start, end), answer in zip(runs, answers):
        got = plain(tokenizer, encoded.input_ids[start:end])
        if got != " ".join(answer.split()):
            problems.append(("loss_on_answers", f"the loss falls on {got[:80]!r}, not on the answer {answer[:80]!r}"))
        if encoded.input_ids[end - 1] not in stop_ids:
            problems.append(("end_of_turn_in_loss", "an answer's last loss-carrying token is not end-of-turn/EOS"))
        if example.kind == "chat" and end < len(encoded.input_ids):
            following = next((p for p in range(end, len(encoded.input_ids)) if encoded.input_ids[p] in stop_ids), None)
            if following is not None and not any(encoded.input_ids[p] in stop_ids for p in range(start, end)):
                problems.append(("end_of_turn_in_loss", "the end-of-turn token after an answer carries no loss"))
    if example.kind == "chat":
        messages, _ = prompt_and_reference(example.messages)
        prompt = encode_prompt(inference_tokenizer, messages)
        if encoded.input_ids[: len(prompt)] != prompt or (runs and runs[-1][0] != len(prompt)):
            problems.append(("same_as_inference", "the prompt trained on differs from the prompt sent at inference "
                             "(template or tokenizer not saved as used)"))
    return problems


def segments(tokenizer: Any, encoded: Encoded) -> list[tuple[str, bool]]:
    """The row as text, cut into runs that carry loss and runs that do not (special tokens kept)."""
    out: list[tuple[str, bool]] = []
    start = 0
    for position in range(1, len(encoded.labels) + 1):
        boundary = position == len(encoded.labels) or (
            (encoded.labels[position] != IGNORE_INDEX) != (encoded.labels[start] != IGNORE_INDEX))
        if boundary:
            out.append((tokenizer.decode(encoded.input_ids[start:position]), encoded.labels[start] != IGNORE_INDEX))
            start = position
    return out
