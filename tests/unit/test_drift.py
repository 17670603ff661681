"""Drift scores: in-distribution traffic (held-out rows of the training data) stays under every threshold; planted
shifts (another language, another format, much longer prompts, another topic) cross theirs."""

import json
import random
import time

import pytest

from tunelab.data.formats import Example
from tunelab.monitor.drift import Embedder, drift_scores
from tunelab.monitor.requestlog import RequestLog
from tunelab.monitor.textkind import language, shape
from tunelab.monitor.thresholds import DRIFT_THRESHOLDS, MIN_LIVE
from tunelab.paths import tunelab_home

ITEMS = ["order", "invoice", "password", "subscription", "refund", "delivery", "account", "coupon", "parcel", "card"]
ASKS = ["How do I change my {x}?", "Where is my {x}? It has been a week.", "Can you help me cancel the {x} I made?",
        "Why was my {x} rejected this morning?", "I need a copy of my {x} for my records, please.",
        "Is it possible to update the {x} on my profile?", "What is the status of my {x} number {n}?",
        "My {x} does not work since yesterday, what should I do?"]
FRENCH = ["Comment est-ce que je peux changer mon {x} ?", "Où est ma commande {n} ? Je ne la vois pas dans le suivi.",
          "Pourquoi est-ce que le paiement de ma facture {n} a été refusé ?", "Je voudrais annuler mon abonnement, "
          "comment faire ?"]
SPACE = ["What is the mass of the planet {p} compared with the Earth?", "How far is {p} from the sun in light minutes?",
         "Which spacecraft first flew past {p} and what did it photograph?", "Does {p} have rings, moons or an "
         "atmosphere thick enough to see?"]
PLANETS = ["Mercury", "Venus", "Mars", "Jupiter", "Saturn", "Uranus", "Neptune"]


def support(rng):
    return rng.choice(ASKS).format(x=rng.choice(ITEMS), n=rng.randint(1000, 99999))


def fake_run(tmp_path, rows):
    """A run folder as far as drift reads it: data/train.jsonl as the data stage writes it."""
    run = tmp_path / "run"
    (run / "data").mkdir(parents=True)
    examples = [Example("train.jsonl", i, messages=[{"role": "user", "content": text},
                                                    {"role": "assistant", "content": "Sure."}])
                for i, text in enumerate(rows)]
    (run / "data" / "train.jsonl").write_text("".join(json.dumps(e.to_json()) + "\n" for e in examples))
    return run


def log_prompts(serve_dir, run, prompts, now, model="bot", content=True):
    log = RequestLog(serve_dir)
    for i, text in enumerate(prompts):
        chat = i % 2 == 0  # both endpoints: a chat's user messages and a completion's prompt are the input
        prompt = [{"role": "system", "content": "Be kind."}, {"role": "user", "content": text}] if chat else [text]
        log.append({"ts": now - 60, "request_id": f"r{i}", "endpoint": "/v1/chat/completions" if chat else
                    "/v1/completions", "model": model, "adapter": run and str(run), "status": 200, "latency_ms": 5.0,
                    "prompt": json.dumps(prompt) if content else None, "output": json.dumps(["ok"])})
    log.append({"ts": now - 60, "request_id": "bad", "endpoint": "/v1/chat/completions", "model": model,
                "adapter": run and str(run), "status": 500, "latency_ms": 5.0, "error": "boom",
                "prompt": json.dumps([{"role": "user", "content": "x" * 5000}])})  # failed: not an input
    log.close()


@pytest.fixture(scope="module")
def training(tmp_path_factory):
    rng = random.Random(1)
    rows = [support(rng) for _ in range(400)]
    return fake_run(tmp_path_factory.mktemp("drift"), rows), [support(rng) for _ in range(60)]


SHIFTS = {
    "in_distribution": lambda held, rng: held,
    "french": lambda held, rng: [rng.choice(FRENCH).format(x=rng.choice(ITEMS), n=rng.randint(1000, 9999))
                                 for _ in held],
    "json": lambda held, rng: [json.dumps({"ticket": text, "priority": "high", "fields": {"lang": "en"}})
                               for text in held],
    "long": lambda held, rng: [" ".join([text] * 6) for text in held],
    "topic": lambda held, rng: [rng.choice(SPACE).format(p=rng.choice(PLANETS)) for _ in held],
}
# The scores each shift must cross (others may or may not).
EXPECTED = {"french": {"language_share", "novel_share", "ngram_distance"}, "json": {"format_share", "length_distance"},
            "long": {"length_distance"}, "topic": {"novel_share", "ngram_distance"}}


@pytest.fixture(scope="module")
def scored(training, tmp_path_factory):
    run, held = training
    now = time.time()
    results = {}
    for name, shift in SHIFTS.items():
        serve_dir = tmp_path_factory.mktemp(name)
        log_prompts(serve_dir, run, shift(held, random.Random(2)), now)
        results[name] = {s.name: s for s in drift_scores(serve_dir, "bot", 3600, now=now)}
    return results


def test_in_distribution_traffic_is_under_every_threshold(scored):
    scores = scored["in_distribution"]
    assert set(scores) == set(DRIFT_THRESHOLDS)
    for score in scores.values():
        assert score.count == 60 and score.kind == "drift" and score.flag_when == "above"
        if score.name == "embedding_distance":
            assert score.value is None and "no embedding model" in score.detail
            continue
        assert score.value is not None and not score.flagged, score


@pytest.mark.parametrize("shift", sorted(EXPECTED))
def test_planted_shifts_cross_their_thresholds(scored, shift):
    flagged = {name for name, score in scored[shift].items() if score.flagged}
    assert EXPECTED[shift] <= flagged, {name: (s.value, s.detail) for name, s in scored[shift].items()}


def test_scores_grow_with_the_shift(scored):
    base = scored["in_distribution"]
    assert scored["long"]["length_distance"].value > 0.9 > 0.35 > base["length_distance"].value
    assert scored["french"]["language_share"].value == 1.0 and base["language_share"].value == 0.0
    assert scored["json"]["format_share"].value == 1.0 and "json" in scored["json"]["format_share"].detail


def test_too_few_live_inputs_are_shown_not_flagged(training, tmp_path):
    run, held = training
    now = time.time()
    log_prompts(tmp_path, run, [" ".join([text] * 6) for text in held[:MIN_LIVE - 1]], now)
    length = {s.name: s for s in drift_scores(tmp_path, "bot", 3600, now=now)}["length_distance"]
    assert length.value > 0.9 and length.threshold is None and not length.flagged and "too few" in length.detail


def test_unmeasurable_models_say_why(training, tmp_path):
    run, held = training
    now = time.time()
    log_prompts(tmp_path, run, held, now, content=False)
    log_prompts(tmp_path, None, held, now, model="base")
    no_content = drift_scores(tmp_path, "bot", 3600, now=now)
    assert all(s.value is None and "--log-content" in s.detail for s in no_content)
    base = drift_scores(tmp_path, "base", 3600, now=now)
    assert base and all(s.value is None and "base model" in s.detail for s in base)


def test_thresholds_are_configurable(scored, training, tmp_path):
    run, held = training
    now = time.time()
    log_prompts(tmp_path, run, held, now)
    scores = {s.name: s for s in drift_scores(tmp_path, "bot", 3600, {"length_distance": 0.0}, now=now)}
    assert scores["length_distance"].threshold == 0.0 and scores["length_distance"].flagged


def test_text_kinds():
    assert language("Comment est-ce que je peux changer mon mot de passe ?") == "fr"
    assert language("How do I reset the password of my account?") == "en"
    assert language("Как сменить пароль?") == "cyrillic" and language("1234") is None
    assert [shape(t) for t in ('{"a": [1, 2]}', "def f(x):\n    return x\n", "- one\n- two", "<p>hi</p><br/>",
                               "a | b | c\n1 | 2 | 3", "Just a question.")] == \
        ["json", "code", "list", "markup", "table", "prose"]


def test_embedding_distance_with_minilm(training, tmp_path):
    embedder = Embedder(tunelab_home())
    if embedder.unavailable:
        pytest.skip(embedder.unavailable)
    run, held = training
    now = time.time()
    log_prompts(tmp_path / "in", run, held, now)
    log_prompts(tmp_path / "topic", run, SHIFTS["topic"](held, random.Random(3)), now)
    inside = {s.name: s for s in drift_scores(tmp_path / "in", "bot", 3600, now=now, embedder=embedder)}
    shifted = {s.name: s for s in drift_scores(tmp_path / "topic", "bot", 3600, now=now, embedder=embedder)}
    assert not inside["embedding_distance"].flagged and shifted["embedding_distance"].flagged
