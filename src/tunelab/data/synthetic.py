"""Data sets tunelab generates itself, so the quick start needs no download.

`notes-to-json`: free-text order notes, written in many phrasings, to be turned into one fixed JSON shape. A base
instruct model answers in its own style (other keys, prose, code fences) and scores near zero on exact match; a
briefly tuned model learns the shape, the key order and the normalisations (plural item -> singular, "urgent"
phrases -> true).

The same notes, for the preference and RL tasks (the same seed gives the same notes, in the same order, as
`notes-to-json`):
  `notes-to-json-pairs`     preference rows: the compact right JSON chosen over a worse answer, one of three kinds
                            mixed at random: `verbose` (a preamble, the right JSON, an explanation), `wrong` (JSON with
                            one field wrong or missing) or `prose` (the order told in a sentence)
  `notes-to-json-feedback`  feedback rows (KTO): each note with either its right JSON (label true) or one worse
                            answer (label false), unpaired
  `notes-to-json-prompts`   prompt rows (GRPO, RLOO, PPO): the note, its right JSON as `reference`, and each of the
                            note's fields, for rule graders to read
"""

from __future__ import annotations

import json
import random
from typing import Any

FIRST_NAMES = [
    "Ana", "Ben", "Chloe", "David", "Elena", "Farid", "Grace", "Hugo", "Ines", "Jonas", "Kira", "Liam", "Maya",
    "Noah", "Olga", "Pedro", "Quinn", "Rosa", "Sami", "Tara", "Umar", "Vera", "Wes", "Yuki", "Zoe", "Priya",
    "Omar", "Lena", "Marco", "Nadia",
]
LAST_NAMES = [
    "Silva", "Novak", "Okafor", "Schmidt", "Rossi", "Kim", "Haddad", "Larsen", "Moreau", "Tanaka", "Costa", "Brown",
    "Ivanova", "Mensah", "Garcia", "Patel", "Weber", "Nilsen", "Dubois", "Santos",
]
CITIES = [
    "Lisbon", "Porto", "Leeds", "Bristol", "Lyon", "Turin", "Ghent", "Bergen", "Krakow", "Malaga", "Dublin",
    "Graz", "Aarhus", "Bilbao", "Utrecht", "Tampere", "Brno", "Cork", "Nantes", "Basel",
]
ITEMS = [
    ("mug", "mugs"), ("notebook", "notebooks"), ("lamp", "lamps"), ("chair", "chairs"), ("cable", "cables"),
    ("kettle", "kettles"), ("backpack", "backpacks"), ("umbrella", "umbrellas"), ("scarf", "scarves"),
    ("candle", "candles"), ("towel", "towels"), ("helmet", "helmets"), ("blanket", "blankets"), ("vase", "vases"),
]
COLORS = ["red", "blue", "green", "black", "white", "yellow", "grey", "orange", "purple", "brown"]
DAYS = ["Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday"]
URGENT = [" Urgent!", " This one is urgent.", " Rush order, please.", " ASAP please."]
CALM = ["", " No rush.", " Whenever is convenient.", ""]

TEMPLATES = [
    "{name} called: wants {quantity} {color} {items} delivered to {city} by {day}.{urgency}",
    "Order from {name} - {quantity} x {color} {items}, ship to {city}, needed {day}.{urgency}",
    "Please send {quantity} {color} {items} to {city} for {name} before {day}.{urgency}",
    "{city} customer {name} asked for {quantity} {items} in {color}; deliver {day}.{urgency}",
    "Note to self: {name} ({city}) needs {quantity} {color} {items} on {day}.{urgency}",
    "{day} delivery: {quantity} {color} {items} for {name} in {city}.{urgency}",
    "Got an email from {name}. They'd like {quantity} of the {color} {items}, sent to {city}, arriving {day}.{urgency}",
    "New request: {quantity} {items}, colour {color}. Customer: {name}. City: {city}. Day: {day}.{urgency}",
]

INSTRUCTION = (
    "Turn this order note into JSON with the keys customer, item, color, quantity, city, day, urgent. "
    "Use the singular item name.\n\nNote: "
)


def order_note(rng: random.Random) -> tuple[str, dict[str, Any]]:
    """One order note as the quick start asks it (the instruction and the note), and its right answer."""
    name = f"{rng.choice(FIRST_NAMES)} {rng.choice(LAST_NAMES)}"
    item, items = rng.choice(ITEMS)
    color, city, day = rng.choice(COLORS), rng.choice(CITIES), rng.choice(DAYS)
    quantity = rng.randint(1, 60)
    urgent = rng.random() < 0.4
    note = rng.choice(TEMPLATES).format(
        name=name, quantity=quantity, color=color, items=items, city=city, day=day,
        urgency=rng.choice(URGENT if urgent else CALM),
    )
    answer = {"customer": name, "item": item, "color": color, "quantity": quantity, "city": city, "day": day,
              "urgent": urgent}
    return INSTRUCTION + note, answer


PREAMBLES = ["Sure! Here is the order as JSON:", "Of course. I converted the note into JSON for you:",
             "Here's the JSON for this order note:", "Happy to help! The order in JSON format:"]
EXPLANATIONS = ["I used the singular item name and kept the quantity as a number.",
                "Let me know if you need anything else.",
                "Each key comes from the note; urgent says whether the customer asked for a rush.",
                "I hope this helps! Tell me if a field should be formatted differently."]
PLURAL = dict(ITEMS)
PROSE = ["{customer} ordered {quantity} {color} {items} for delivery to {city} on {day}.{rush}",
         "The order is for {customer}: {quantity} {color} {items}, to be sent to {city} by {day}.{rush}",
         "This note asks for {quantity} {items} in {color}, going to {customer} in {city} on {day}.{rush}"]
BAD_KINDS = ("verbose", "wrong", "prose")


def verbose_answer(answer: dict[str, Any], rng: random.Random) -> str:
    """The right JSON wrapped in chat: a preamble before it, an explanation after."""
    body = json.dumps(answer, indent=2) if rng.random() < 0.5 else json.dumps(answer)
    return f"{rng.choice(PREAMBLES)}\n\n{body}\n\n{rng.choice(EXPLANATIONS)}"


def wrong_answer(answer: dict[str, Any], rng: random.Random) -> str:
    """Compact JSON, as the right answer is, with one field wrong or missing: the mistakes a model makes here."""
    wrong = dict(answer)
    field = rng.choice(["quantity", "item", "color", "city", "day", "urgent", "missing"])
    if field == "quantity":
        wrong["quantity"] = answer["quantity"] + rng.choice([-1, 1, 10])
    elif field == "item":
        wrong["item"] = PLURAL[answer["item"]]  # the plural the note used, not the singular asked for
    elif field == "urgent":
        wrong["urgent"] = not answer["urgent"]
    elif field == "missing":
        del wrong[rng.choice(list(answer))]
    else:
        choices = {"color": COLORS, "city": CITIES, "day": DAYS}[field]
        wrong[field] = rng.choice([value for value in choices if value != answer[field]])
    return json.dumps(wrong)


def prose_answer(answer: dict[str, Any], rng: random.Random) -> str:
    rush = " It is urgent." if answer["urgent"] else ""
    return rng.choice(PROSE).format(**answer, items=PLURAL[answer["item"]], rush=rush)


def bad_answer(answer: dict[str, Any], rng: random.Random) -> str:
    kind = rng.choice(BAD_KINDS)
    return {"verbose": verbose_answer, "wrong": wrong_answer, "prose": prose_answer}[kind](answer, rng)


def notes_to_json_row(prompt: str, answer: dict[str, Any], rng: random.Random) -> dict[str, Any]:
    return {"prompt": prompt, "completion": json.dumps(answer)}


def pair_row(prompt: str, answer: dict[str, Any], rng: random.Random) -> dict[str, Any]:
    return {"prompt": prompt, "chosen": json.dumps(answer), "rejected": bad_answer(answer, rng)}


def feedback_row(prompt: str, answer: dict[str, Any], rng: random.Random) -> dict[str, Any]:
    if rng.random() < 0.5:
        return {"prompt": prompt, "completion": json.dumps(answer), "label": True}
    return {"prompt": prompt, "completion": bad_answer(answer, rng), "label": False}


def prompt_row(prompt: str, answer: dict[str, Any], rng: random.Random) -> dict[str, Any]:
    return {"prompt": prompt, "reference": json.dumps(answer), **answer}


# Each task's row from a note (the prompt and its right answer) and a generator for the answers' own choices.
GENERATORS = {"notes-to-json": notes_to_json_row, "notes-to-json-pairs": pair_row,
              "notes-to-json-feedback": feedback_row, "notes-to-json-prompts": prompt_row}


def generate_rows(task: str, rows: int, seed: int) -> list[dict[str, Any]]:
    """`rows` rows of a generated task, one per distinct note; the same task, count and seed give the same rows.
    The notes come from one generator and the answers' choices (which worse answer) from another, so every task
    has the same notes for the same seed."""
    make_row = GENERATORS[task]
    notes, answers = random.Random(seed), random.Random(f"{task}:{seed}")
    seen: set[str] = set()
    out = []
    while len(out) < rows:
        prompt, answer = order_note(notes)
        if prompt not in seen:
            seen.add(prompt)
            out.append(make_row(prompt, answer, answers))
    return out
