"""What kind of text a prompt is: its shape (prose, list, table, code, JSON, markup) and its language.

Drift (drift.py) compares the shares of these between live prompts and a run's training rows. Hand-written on
purpose: a language-identification model or library (fastText, langdetect) is a new heavy dependency for a coarse
question ("is traffic now in a language or shape the model was never tuned on?"), which the Unicode script of the
letters and a few dozen stopwords answer for the languages a small model is tuned on.
"""

from __future__ import annotations

import json
import re
import unicodedata
from collections import Counter

# The letters' script decides first; only Latin text needs the stopword vote.
SCRIPTS = ("LATIN", "CYRILLIC", "GREEK", "ARABIC", "HEBREW", "DEVANAGARI", "THAI", "HANGUL", "HIRAGANA", "KATAKANA",
           "CJK")
STOPWORDS: dict[str, set[str]] = {code: set(words.split()) for code, words in {
    "en": "the and is to of in it you that for what how my i with this can do are on",
    "fr": "le la les et est un une des du de je vous pour que qui dans pas mon comment avec",
    "de": "der die das und ist nicht ich sie ein eine zu mit wie mein den dem auf für es was",
    "es": "el la los las y es un una de que en por para con mi cómo qué no se lo",
    "it": "il lo la gli le e è un una di che per con non mio come sono del della mi",
    "pt": "o a os as e é um uma de que para com não meu como do da em se por",
    "nl": "de het een en is van ik je niet dat met voor op hoe mijn zijn wat te er die",
}.items()}
WORD = re.compile(r"[^\W\d_]+")
UNKNOWN_LATIN = "latin"  # Latin letters but no stopword vote (a name, a code identifier): matches any Latin language

CODE_LINE = re.compile(r"^\s*(def |class |import |from \S+ import|return\b|#include|function\b|for\s*\(|if\s*\(|"
                       r"public |private |var |let |const |SELECT |print\()|[;{}]\s*$")
LIST_LINE = re.compile(r"^\s*([-*•]|\d+[.)])\s+\S")
TAG = re.compile(r"</?[A-Za-z][\w-]*(\s[^<>]*)?/?>")


def script(text: str) -> str | None:
    """The script most of the letters are in; None for text without letters."""
    found: Counter = Counter()
    for char in text:
        if char.isalpha():
            name = unicodedata.name(char, "")
            found[next((s for s in SCRIPTS if name.startswith(s)), "OTHER")] += 1
    if not found:
        return None
    top = found.most_common(1)[0][0]
    return "cjk" if top in ("CJK", "HIRAGANA", "KATAKANA", "HANGUL") else top.lower()


def language(text: str) -> str | None:
    """An ISO code for the Latin-script languages in STOPWORDS, the script's name for others, UNKNOWN_LATIN where
    no stopword decides, None for text without letters."""
    found = script(text)
    if found != "latin":
        return found
    words = [word.casefold() for word in WORD.findall(text)]
    votes = {code: sum(word in stop for word in words) for code, stop in STOPWORDS.items()}
    best = max(votes.values(), default=0)
    leaders = [code for code, count in votes.items() if count == best]
    return leaders[0] if best >= 2 and len(leaders) == 1 else UNKNOWN_LATIN


def shape(text: str) -> str:
    """json, markup, code, table, list or prose: the first that most of the text looks like."""
    stripped = text.strip()
    if stripped[:1] in "{[" and parses_as_json(stripped):
        return "json"
    lines = [line for line in stripped.splitlines() if line.strip()]
    if len(TAG.findall(stripped)) >= 2:
        return "markup"
    if "```" in stripped or share(lines, CODE_LINE.search) >= 0.4 and len(lines) >= 2:
        return "code"
    if len(lines) >= 2 and share(lines, lambda line: line.count("|") >= 2 or line.count("\t") >= 2) >= 0.6:
        return "table"
    if len(lines) >= 2 and share(lines, LIST_LINE.match) >= 0.5:
        return "list"
    return "prose"


def parses_as_json(text: str) -> bool:
    try:
        json.loads(text)
    except ValueError:
        return False
    return True


def share(lines: list[str], test) -> float:
    return sum(bool(test(line)) for line in lines) / len(lines) if lines else 0.0


def same_language(live: str | None, seen: set[str | None]) -> bool:
    """Whether a live prompt's language is one the training rows are in. Text without letters, and Latin text no
    stopword decided, are not counted as drift while the training rows have Latin text at all."""
    if live is None or live in seen:
        return True
    latin = {code for code in seen if code in STOPWORDS or code == UNKNOWN_LATIN}
    return live == UNKNOWN_LATIN and bool(latin) or live in STOPWORDS and UNKNOWN_LATIN in seen and len(latin) == 1
