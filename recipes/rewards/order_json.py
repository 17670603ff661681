"""Rule rewards for the order-note demos (recipes/*-demo.yaml), as TRL's reward functions: each takes the prompts, the
completions (text, or one assistant message) and the rows' fields, and gives one number per completion.

  json_only     1 when the whole answer is one JSON object (the shape asked for, and nothing around it), else 0
  keys_present  the share of the seven keys the instruction names that the answer's first JSON object has
  fields_right  the share of the right answer's fields the answer's first JSON object gets exactly right; the right
                answer is the row's `reference` (prompt rows) or `chosen` (preference rows); None where a row has
                neither (a reward that does not apply, as TRL reads None)
"""

import json

KEYS = ("customer", "item", "color", "quantity", "city", "day", "urgent")


def text_of(completion):
    return completion if isinstance(completion, str) else completion[-1]["content"]


def first_object(text):
    """The first JSON object in the text (a verbose answer's JSON counts here), or None."""
    decoder = json.JSONDecoder()
    for start in (index for index, char in enumerate(text) if char == "{"):
        try:
            value, _ = decoder.raw_decode(text, start)
        except ValueError:
            continue
        if isinstance(value, dict):
            return value
    return None


def json_only(prompts, completions, **fields):
    scores = []
    for completion in completions:
        try:
            scores.append(1.0 if isinstance(json.loads(text_of(completion)), dict) else 0.0)
        except ValueError:
            scores.append(0.0)
    return scores


def keys_present(prompts, completions, **fields):
    found = [first_object(text_of(completion)) or {} for completion in completions]
    return [sum(key in answer for key in KEYS) / len(KEYS) for answer in found]


def fields_right(prompts, completions, reference=None, chosen=None, **fields):
    rights = reference or chosen or [None] * len(completions)
    scores = []
    for completion, right in zip(completions, rights):
        if right is None:
            scores.append(None)
            continue
        expected, answer = json.loads(right), first_object(text_of(completion)) or {}
        scores.append(sum(answer.get(key) == value for key, value in expected.items()) / len(expected))
    return scores
