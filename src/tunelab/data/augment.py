"""Optional augmentation of small training sets (off by default), applied to the train split only.

- prompt templates: the user's paraphrase list, each with `{prompt}`; every conversation (or label text) gets one
  copy per template with its last prompt rewritten. The answer and the label never change.
- noise: copies of the input side (last prompt, or a label row's text) with a share of words dropped or with two
  neighbouring letters swapped; label-preserving for any task that should survive typos.
Every added row keeps its source and line and says how it was made in `origin`.
"""

from __future__ import annotations

import dataclasses
import random
from typing import Any

from tunelab.data.formats import Example
from tunelab.errors import TunelabError


def last_prompt_index(example: Example) -> int | None:
    messages = example.messages or []
    for index in range(len(messages) - 1, -1, -1):
        if messages[index]["role"] == "user" and (
            example.kind == "preference" or any(m["role"] == "assistant" for m in messages[index + 1:])
        ):
            return index
    return None


def with_input(example: Example, rewrite, origin: str) -> Example | None:
    """A copy whose input text (last user prompt, or a label row's text) is `rewrite(text)`."""
    if example.kind == "label":
        return dataclasses.replace(example, text=rewrite(example.text), origin=origin)
    index = last_prompt_index(example) if example.kind in ("chat", "preference") else None
    if index is None:
        return None
    messages = [dict(m) for m in example.messages]
    messages[index]["content"] = rewrite(messages[index]["content"])
    return dataclasses.replace(example, messages=messages, origin=origin)


def noisy(text: str, rate: float, rng: random.Random) -> str:
    words = text.split(" ")
    out = []
    for word in words:
        roll = rng.random()
        if roll < rate / 2 and len(words) > 3:
            continue
        if roll < rate and len(word) > 3:
            at = rng.randrange(len(word) - 1)
            word = word[:at] + word[at + 1] + word[at] + word[at + 2:]
        out.append(word)
    return " ".join(out)


def check_templates(templates: list[str]) -> None:
    for number, template in enumerate(templates, start=1):
        if "{prompt}" not in template:
            raise TunelabError(f"data.augment.prompt_templates[{number - 1}]: needs a {{prompt}} placeholder")


def augment(examples: list[Example], options: Any) -> list[Example]:
    """The added rows (the originals are not repeated)."""
    check_templates(options.prompt_templates)
    added = []
    for example in examples:
        for number, template in enumerate(options.prompt_templates, start=1):
            copy = with_input(example, lambda text, t=template: t.replace("{prompt}", text),
                              f"augment: template {number}")
            if copy is not None:
                added.append(copy)
        for copy_number in range(1, options.noise_copies + 1):
            rng = random.Random(f"{options.seed}:{example.source}:{example.line}:{copy_number}")
            copy = with_input(example, lambda text, r=rng: noisy(text, options.noise_rate, r),
                              f"augment: noise {copy_number}")
            if copy is not None:
                added.append(copy)
    return added
