"""Row cleaning: Unicode NFC, whitespace trim, control characters, empty turns, personal data.

Each step follows the recipe's `data.clean` / `data.pii`. A row that cleaning leaves unusable (no answer, no text,
chosen equal to rejected) comes back with the reason instead, so the caller can quarantine it.
"""

from __future__ import annotations

import dataclasses
import re
import unicodedata
from dataclasses import dataclass, field
from typing import Any

from tunelab.data.formats import Example
from tunelab.data.pii import scrub

# C0/C1 control characters except tab and newline (a CR has become a newline first).
CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")


@dataclass
class Cleaned:
    example: Example | None
    reason: str | None = None  # why the row is rejected, when `example` is None
    changed: bool = False  # cleaning altered some text
    pii: dict[str, int] = field(default_factory=dict)


def clean_text(text: str, clean: Any) -> str:
    if clean.normalize_unicode:
        text = unicodedata.normalize("NFC", text)
    if clean.control_chars:
        text = CONTROL.sub("", text.replace("\r\n", "\n").replace("\r", "\n"))
    if clean.strip_whitespace:
        text = text.strip()
    return text


def clean_example(example: Example, clean: Any, pii: Any) -> Cleaned:
    """The cleaned row (or the reason it is rejected) and the personal data found in it, by kind."""
    found: dict[str, int] = {}

    def tidy(text: str | None) -> str | None:
        if text is None:
            return None
        text = clean_text(text, clean)
        text, counts = scrub(text, pii.kinds, pii.scrub)
        for kind, count in counts.items():
            found[kind] = found.get(kind, 0) + count
        return text

    changes: dict[str, Any] = {"text": tidy(example.text), "chosen": tidy(example.chosen),
                               "rejected": tidy(example.rejected), "completion": tidy(example.completion)}
    if example.label is not None:
        changes["label"] = clean_text(example.label, clean)
    if example.messages is not None:
        messages = [{"role": m["role"], "content": tidy(m["content"])} for m in example.messages]
        if clean.drop_empty_turns:
            messages = [m for m in messages if m["content"].strip()]
        changes["messages"] = messages
    cleaned = dataclasses.replace(example, **changes)
    reason = unusable(cleaned)
    return Cleaned(None if reason else cleaned, reason, cleaned != example, found)


def unusable(example: Example) -> str | None:
    kind = example.kind
    if kind in ("text", "label") and not (example.text or "").strip():
        return "empty text"
    if kind == "label" and not example.label:
        return "empty label"
    if kind == "preference":
        if not example.chosen.strip() or not example.rejected.strip():
            return "empty chosen or rejected answer"
        if example.chosen == example.rejected:
            return "chosen and rejected are the same answer: nothing to prefer"
        if not any(m["content"].strip() for m in example.messages):
            return "empty prompt"
    if kind in ("feedback", "prompt") and not any(m["content"].strip() for m in example.messages):
        return "empty prompt"
    if kind == "feedback" and not example.completion.strip():
        return "empty completion"
    if kind == "chat":
        if not any(m["role"] == "assistant" and m["content"].strip() for m in example.messages):
            return "no assistant answer left (empty turns)"
        if not any(m["role"] != "assistant" and m["content"].strip() for m in example.messages):
            return "no prompt left (empty turns)"
    return None
