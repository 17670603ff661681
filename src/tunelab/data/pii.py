"""Personal data in text: e-mail addresses, phone numbers, credit-card numbers and IP addresses.

Counted always, replaced with placeholders (<EMAIL>, <PHONE>, <CREDIT_CARD>, <IP>) when the recipe asks.
Regular expressions written here on purpose: Presidio needs spaCy language models (a download), and
`phonenumbers` needs each number's region; a data check wants a fast, dependency-free first pass whose counts the
user then inspects. Card numbers must pass the Luhn check, so a long order number is not called a card.
"""

from __future__ import annotations

import re

EMAIL = re.compile(r"\b[A-Za-z0-9._%+-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,}\b")
# 13-19 digits, optionally grouped by single spaces or dashes.
CARD = re.compile(r"(?<![\d-])\d(?:[ -]?\d){12,18}(?![\d-])")
IPV4 = re.compile(r"(?<![\d.])(?:(?:25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)\.){3}(?:25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)(?![\d.])")
IPV6 = re.compile(r"(?<![\w:])(?:[0-9A-Fa-f]{1,4}:){7}[0-9A-Fa-f]{1,4}(?![\w:])|"
                  r"(?<![\w:])(?:[0-9A-Fa-f]{1,4}:){1,6}:(?:[0-9A-Fa-f]{1,4}:){0,5}[0-9A-Fa-f]{1,4}(?![\w:])")
# 7 to 15 digits (E.164 allows 15), with an optional leading + or 00 and ( ) . - or space between groups.
PHONE = re.compile(r"(?<![\w+])(?:\+|00)?\(?\d{1,4}\)?(?:[ .-]?\(?\d{1,4}\)?){2,6}(?![\w])")

PLACEHOLDERS = {"email": "<EMAIL>", "credit_card": "<CREDIT_CARD>", "ip": "<IP>", "phone": "<PHONE>"}
KINDS = tuple(PLACEHOLDERS)


def luhn_valid(digits: str) -> bool:
    total = 0
    for position, char in enumerate(reversed(digits)):
        value = int(char)
        if position % 2 == 1:
            value = value * 2 - 9 if value > 4 else value * 2
        total += value
    return total % 10 == 0


def is_card(match: str) -> bool:
    digits = re.sub(r"\D", "", match)
    return 13 <= len(digits) <= 19 and len(set(digits)) > 1 and luhn_valid(digits)


DATE = re.compile(r"\d{4}[-./]\d{1,2}[-./]\d{1,2}|\d{1,2}[-./]\d{1,2}[-./]\d{2,4}")


def is_phone(match: str) -> bool:
    digits = re.sub(r"\D", "", match)
    return 7 <= len(digits) <= 15 and not DATE.fullmatch(match.strip())


def scrub_kind(text: str, kind: str, replace: bool) -> tuple[str, int]:
    """`text` with every `kind` string replaced (when `replace`), and how many there were."""
    patterns = {"email": [EMAIL], "credit_card": [CARD], "ip": [IPV4, IPV6], "phone": [PHONE]}[kind]
    keep = {"credit_card": is_card, "phone": is_phone}.get(kind, lambda _: True)
    count = 0
    for pattern in patterns:
        def substitute(match: re.Match) -> str:
            nonlocal count
            if not keep(match.group(0)):
                return match.group(0)
            count += 1
            return PLACEHOLDERS[kind] if replace else match.group(0)

        text = pattern.sub(substitute, text)
    return text, count


def scrub(text: str, kinds: list[str], replace: bool) -> tuple[str, dict[str, int]]:
    """Count (and replace) personal data. Order matters: e-mails, cards and IPs are taken before phone numbers,
    whose looser pattern would otherwise claim their digits."""
    counts = {}
    for kind in KINDS:
        if kind in kinds:
            text, counts[kind] = scrub_kind(text, kind, replace)
    return text, {kind: count for kind, count in counts.items() if count}
