"""Data sets tunelab generates itself, so the quick start needs no download.

`notes-to-json`: free-text order notes, written in many phrasings, to be turned into one fixed JSON shape. A base
instruct model answers in its own style (other keys, prose, code fences) and scores near zero on exact match; a
briefly tuned model learns the shape, the key order and the normalisations (plural item -> singular, "urgent"
phrases -> true).
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


def notes_to_json_row(rng: random.Random) -> dict[str, Any]:
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
    return {"prompt": INSTRUCTION + note, "completion": json.dumps(answer)}


GENERATORS = {"notes-to-json": notes_to_json_row}


def generate_rows(task: str, rows: int, seed: int) -> list[dict[str, Any]]:
    """`rows` distinct rows of a generated task; the same task, count and seed give the same rows."""
    make_row = GENERATORS[task]
    rng = random.Random(seed)
    seen: set[str] = set()
    out = []
    while len(out) < rows:
        row = make_row(rng)
        if row["prompt"] not in seen:
            seen.add(row["prompt"])
            out.append(row)
    return out
