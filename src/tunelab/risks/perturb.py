"""Perturbations of a user's text the way real users write it: typos, case, spacing, dropped punctuation, a greeting
or signature, reordered clauses, synonyms from the recipe's list.

Each kind is a plain function (text, random generator, synonyms) -> the changed text, or None where the kind cannot
change this text (no punctuation to drop, one clause only, no listed word): the caller then tries the next kind.
Every function is deterministic given the generator, so the same seed gives the same text. Only the text given is
touched; which part of a row is the user's text is decided by `perturb_example`, which never changes a reference.
nlpaug and TextAttack do similar things, but pull in models and word lists; these few rules need neither.
"""

from __future__ import annotations

import random
import re
from dataclasses import replace
from typing import TYPE_CHECKING, Callable

if TYPE_CHECKING:
    from tunelab.data.formats import Example

WORD = re.compile(r"[A-Za-z]{3,}")
# A punctuation mark that ends a clause or sentence (followed by a space or the end): dropping it keeps numbers
# such as 3.5 or 1,000 and things like e-mail addresses intact.
CLAUSE_PUNCTUATION = re.compile(r"[.,;:!?](?=\s|$)")
SENTENCE_END = re.compile(r"(?<=[.!?;])\s+")
# Text that looks like code, markup or data: reordering it could change what it means.
UNSAFE_TO_REORDER = re.compile(r"[{}\[\]()<>\"`=\n]")
GREETINGS = ("Hi!", "Hello,", "Hey there,", "Good morning!", "hi team,")
SIGNATURES = ("Thanks!", "Cheers,\nSam", "thx", "Best regards,\nA. Customer", "Sent from my phone")

Perturbation = Callable[[str, random.Random, dict[str, list[str]]], "str | None"]


def typo(text: str, rng: random.Random, synonyms: dict[str, list[str]]) -> str | None:
    """One word of three letters or more gets two neighbouring letters swapped, a letter dropped or doubled."""
    words = list(WORD.finditer(text))
    if not words:
        return None
    word = rng.choice(words)
    start, letters = word.start(), word.group()
    at = rng.randrange(len(letters) - 1)
    operations = ["drop", "double"] + (["swap"] if letters[at] != letters[at + 1] else [])
    operation = rng.choice(operations)
    if operation == "swap":
        changed = letters[:at] + letters[at + 1] + letters[at] + letters[at + 2:]
    elif operation == "drop":
        changed = letters[:at] + letters[at + 1:]
    else:
        changed = letters[:at + 1] + letters[at] + letters[at + 1:]
    return text[:start] + changed + text[word.end():]


def case(text: str, rng: random.Random, synonyms: dict[str, list[str]]) -> str | None:
    """All lower case, all upper case, or the first letter's case flipped: whichever of them changes the text."""
    options = [text.lower(), text.upper()]
    first = next((index for index, char in enumerate(text) if char.isalpha()), None)
    if first is not None:
        options.append(text[:first] + text[first].swapcase() + text[first + 1:])
    options = [option for option in options if option != text]
    return rng.choice(options) if options else None


def whitespace(text: str, rng: random.Random, synonyms: dict[str, list[str]]) -> str | None:
    """A doubled space between two words, or a space lost between two words, and a stray trailing space."""
    spaces = [match.start() for match in re.finditer(r"(?<=\S) (?=\S)", text)]
    if not spaces:
        return text + "  "
    at = rng.choice(spaces)
    if rng.random() < 0.5:
        return text[:at] + "  " + text[at + 1:] + " "
    return text[:at] + text[at + 1:] + " "


def punctuation(text: str, rng: random.Random, synonyms: dict[str, list[str]]) -> str | None:
    """Every mark that ends a clause or sentence dropped (a hurried user writes none)."""
    changed = CLAUSE_PUNCTUATION.sub("", text)
    return changed if changed != text else None


def greeting(text: str, rng: random.Random, synonyms: dict[str, list[str]]) -> str | None:
    return f"{rng.choice(GREETINGS)} {text}"


def signature(text: str, rng: random.Random, synonyms: dict[str, list[str]]) -> str | None:
    sign = rng.choice(SIGNATURES)
    return f"{text}\n\n{sign}" if "\n" in sign else f"{text} {sign}"


def reorder(text: str, rng: random.Random, synonyms: dict[str, list[str]]) -> str | None:
    """Sentences (or else comma-separated clauses) in another order; text that looks like code or data is left."""
    if UNSAFE_TO_REORDER.search(text.strip()):
        return None
    parts = [part for part in SENTENCE_END.split(text.strip()) if part]
    joiner = " "
    if len(parts) < 2:
        parts = [part for part in text.strip().split(", ") if part]
        joiner = ", "
    if len(parts) < 2 or len(set(parts)) < 2:
        return None
    order = parts[1:] + parts[:1] if len(parts) == 2 else rng.sample(parts, len(parts))
    if order == parts:
        order = parts[1:] + parts[:1]
    return joiner.join(order)


def synonym(text: str, rng: random.Random, synonyms: dict[str, list[str]]) -> str | None:
    """One listed word (whole word, any case) replaced by one of its alternatives, in the word's case."""
    found = []
    for word, alternatives in synonyms.items():
        if alternatives:
            found += [(match, alternatives) for match in re.finditer(rf"\b{re.escape(word)}\b", text, re.IGNORECASE)]
    if not found:
        return None
    found.sort(key=lambda item: item[0].start())
    match, alternatives = rng.choice(found)
    return text[:match.start()] + same_case(match.group(), rng.choice(alternatives)) + text[match.end():]


def same_case(original: str, word: str) -> str:
    if original.isupper() and len(original) > 1:
        return word.upper()
    if original[:1].isupper():
        return word[:1].upper() + word[1:]
    return word


PERTURBATIONS: dict[str, Perturbation] = {
    "typo": typo, "case": case, "whitespace": whitespace, "punctuation": punctuation, "greeting": greeting,
    "signature": signature, "reorder": reorder, "synonym": synonym,
}
KINDS = tuple(PERTURBATIONS)


def perturb_text(text: str, kind: str, seed: int, synonyms: dict[str, list[str]] | None = None) -> str | None:
    """`text` perturbed by `kind`, the same for the same seed; None where the kind cannot change it."""
    changed = PERTURBATIONS[kind](text, random.Random(seed), synonyms or {})
    return changed if changed is not None and changed != text else None


def user_text(example: "Example") -> str | None:
    """The user's own words in a row: a label row's text, else the last user message before the answer."""
    if example.label is not None:
        return example.text
    if example.messages is None:
        return None  # plain text rows have no prompt
    index = last_user_index(example)
    return example.messages[index]["content"] if index is not None else None


def last_user_index(example: "Example") -> int | None:
    messages = example.messages or []
    answer = max((i for i, message in enumerate(messages) if message["role"] == "assistant"), default=len(messages))
    users = [i for i, message in enumerate(messages[:answer]) if message["role"] == "user"]
    return users[-1] if users else None


def with_user_text(example: "Example", text: str) -> "Example":
    """The row with its user text replaced; the system prompt, the answer, the label and every other field kept."""
    if example.label is not None:
        return replace(example, text=text)
    index = last_user_index(example)
    messages = [dict(message) for message in example.messages]
    messages[index]["content"] = text
    return replace(example, messages=messages)


def perturb_example(example: "Example", kinds: list[str], seed: int,
                    synonyms: dict[str, list[str]] | None = None) -> tuple["Example", str] | None:
    """The row perturbed by the first of `kinds` that changes its user text, and that kind; None where none does."""
    text = user_text(example)
    if not text:
        return None
    for kind in kinds:
        changed = perturb_text(text, kind, seed, synonyms)
        if changed is not None:
            return with_user_text(example, changed), kind
    return None
