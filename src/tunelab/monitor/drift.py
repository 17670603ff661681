"""Drift: do the prompts a model gets in service still look like the data its run was tuned on?

Live inputs are the user text of the successful chat and completions requests the log holds with content (`serve
--log-content`): a chat's user messages, a completion's prompt. They are grouped by the run folder that answered
(the `adapter` column), since the training data is that run's: its prepared train split (`RunDir.data`).

The training rows are shuffled (seeded) and cut in two: a reference (up to MAX_REFERENCE rows) and held-out rows
(up to MAX_HOLDOUT). The held-out rows are in-distribution traffic by construction, so they calibrate the scores
whose raw value depends on the sample size or on the data set (every score is "more drift = higher"):

- length_distance: the two-sample Kolmogorov-Smirnov statistic between the character lengths of live inputs and
  the reference (0: same distribution, 1: disjoint).
- ngram_distance: the Jensen-Shannon distance (base 2) between the character 3-gram distributions of the live
  inputs and the reference, minus the same distance for as many held-out rows: a small sample is far from a big
  one by chance alone, and this excess is what is left of the distance once chance is taken out.
- novel_share: the share of live inputs whose closest reference row (Jaccard similarity of char 3-gram sets, the
  measure data/dedup.py's near-duplicate search confirms with) is less similar than the closest of 90% of held-out
  rows: about 0.1 for in-distribution traffic on any data set, towards 1 for prompts unlike any training row.
- format_share / language_share: the share of live inputs in a shape (prose, list, table, code, JSON, markup) or
  a language (textkind.py) that fewer than 2% of the training rows are in.
- embedding_distance: the cosine distance between the mean MiniLM (`minilm-l6-v2`) embeddings of the live inputs
  and the reference, minus the same for as many held-out rows; None, with the reason, when the model's package is
  not installed or no embedder was given.

Fewer than MIN_LIVE live inputs: the value is computed but never flagged (the threshold is dropped, the detail
says so). Every cap is a seeded sample so a score costs well under a second (embeddings: a few seconds the first
time, then the reference's are cached).
"""

from __future__ import annotations

import json
import random
import sqlite3
import time
from collections import Counter
from contextlib import closing
from pathlib import Path
from typing import Any, Callable

from tunelab.monitor.requestlog import database_path, open_read_only
from tunelab.monitor.scores import Score
from tunelab.monitor.textkind import language, same_language, shape
from tunelab.monitor.thresholds import DRIFT_THRESHOLDS, MIN_LIVE, Thresholds, for_version

MAX_REFERENCE = 500
MAX_HOLDOUT = 200
MAX_LIVE = 500
MAX_EMBEDDED = 200  # rows embedded per side: MiniLM on 2 CPU cores does ~100 short rows a second
SEED = 0
NOVEL_QUANTILE = 0.1  # a live input is novel when less similar than 90% of held-out rows are
RARE_SHARE = 0.02  # a shape or language under this share of the training rows is not "theirs"
GENERATION_ENDPOINTS = ("/v1/chat/completions", "/v1/completions")


# ---- what is compared -----------------------------------------------------------------------------------------


def example_input(example: Any) -> str:
    """The user text of a training row, as a live request would carry it."""
    if example.messages is not None:
        return "\n".join(m["content"] for m in example.messages if m["role"] == "user")
    return example.text or ""


def request_inputs(endpoint: str, prompt: str) -> list[str]:
    """The user text of one logged request's `prompt` (JSON): a chat's user messages as one input, each completions
    prompt as one."""
    value = json.loads(prompt)
    if endpoint.endswith("/chat/completions"):
        return ["\n".join(m.get("content") or "" for m in value if m.get("role") == "user")]
    return [text for text in value if isinstance(text, str)]


def live_inputs(connection: sqlite3.Connection, model: str, start: float, end: float
                ) -> tuple[dict[str | None, list[str]], int]:
    """The user texts of `model`'s successful generation requests in [start, end) by the run folder that answered
    (None: the base model), and how many successful requests had no content logged."""
    rows = connection.execute(
        f"SELECT endpoint, adapter, prompt FROM requests WHERE model = ? AND ts >= ? AND ts < ? AND status = 200 "
        f"AND error IS NULL AND endpoint IN ({', '.join('?' for _ in GENERATION_ENDPOINTS)}) ORDER BY id",
        (model, start, end, *GENERATION_ENDPOINTS)).fetchall()
    by_version: dict[str | None, list[str]] = {}
    unlogged = 0
    for endpoint, adapter, prompt in rows:
        if prompt is None:
            unlogged += 1
            by_version.setdefault(adapter, [])
            continue
        by_version.setdefault(adapter, []).extend(text for text in request_inputs(endpoint, prompt) if text.strip())
    return by_version, unlogged


def training_inputs(run_root: str | Path) -> list[str] | str:
    """The user texts of a run's train split, or why there are none."""
    from tunelab.data.dataset import read_splits
    from tunelab.run.folder import RunDir

    data = RunDir(Path(run_root)).data
    if not (data / "train.jsonl").is_file():
        return f"no training data at {data / 'train.jsonl'}"
    texts = [text for text in map(example_input, read_splits(data).train) if text.strip()]
    return texts if len(texts) >= 3 else f"too few training rows with text in {data}"


def sample(rows: list[str], size: int, seed: int = SEED) -> list[str]:
    return rows if len(rows) <= size else random.Random(seed).sample(rows, size)


def reference_and_holdout(train: list[str]) -> tuple[list[str], list[str]]:
    shuffled = random.Random(SEED).sample(train, len(train))
    held = min(MAX_HOLDOUT, len(shuffled) // 3)
    return shuffled[held:held + MAX_REFERENCE], shuffled[:held]


# ---- the scores -----------------------------------------------------------------------------------------------


def drift_scores(serve_dir: Path, model: str, since_s: float, thresholds: Thresholds | None = None,
                 now: float | None = None, embedder: Any = None) -> list[Score]:
    """Every drift score of `model` over the last `since_s` seconds, per version (run folder) that answered.
    `thresholds`: overrides of the defaults, or a function of the version giving them (thresholds.layered)."""
    end = now if now is not None else time.time()
    with closing(open_read_only(database_path(serve_dir))) as connection:
        by_version, unlogged = live_inputs(connection, model, end - since_s, end)
    scores = []
    for version, live in by_version.items():
        if version is None:
            scores += unmeasured(model, None, len(live), "the base model answered: it has no training data to "
                                                           "drift from")
        elif not live:
            scores += unmeasured(model, version, 0, f"no prompts logged ({unlogged} requests): serve with "
                                                    "--log-content")
        else:
            scores += version_drift(model, version, live, for_version(thresholds, version), embedder)
    return scores


def unmeasured(model: str, version: str | None, count: int, why: str) -> list[Score]:
    return [Score(model, name, "drift", None, None, "above", count=count, version=version, detail=why)
            for name in DRIFT_THRESHOLDS]


def version_drift(model: str, version: str, live: list[str], thresholds: dict[str, float],
                  embedder: Any = None) -> list[Score]:
    """The drift scores of one version's live inputs against its run's training rows."""
    train = training_inputs(version)
    if isinstance(train, str):
        return unmeasured(model, version, len(live), train)
    reference, holdout = reference_and_holdout(train)
    live = sample(live, MAX_LIVE)
    values = {
        "length_distance": length_distance(live, reference),
        "ngram_distance": ngram_distance(live, reference, holdout),
        "novel_share": novel_share(live, reference, holdout),
        "format_share": unseen_share(live, train, shape, lambda kind, seen: kind in seen, "shape"),
        "language_share": unseen_share(live, train, language, same_language, "language"),
        "embedding_distance": embedding_distance(live, reference, holdout, embedder),
    }
    few = len(live) < MIN_LIVE
    scores = []
    for name, (value, detail) in values.items():
        threshold = thresholds[name]
        if few and value is not None:
            detail = f"{detail}; too few live inputs ({len(live)} < {MIN_LIVE}) to flag (threshold {threshold:g})"
        scores.append(Score(model, name, "drift", value, None if few else threshold, "above", count=len(live),
                            version=version, detail=detail))
    return scores


def length_distance(live: list[str], reference: list[str]) -> tuple[float, str]:
    from scipy.stats import ks_2samp

    result = ks_2samp([len(text) for text in live], [len(text) for text in reference])
    return float(result.statistic), f"Kolmogorov-Smirnov statistic of character lengths (p={result.pvalue:.2g})"


def ngram_distributions(*groups: list[str]) -> list[Any]:
    """Each group's pooled character 3-gram frequencies, over one shared vocabulary."""
    from sklearn.feature_extraction.text import CountVectorizer

    vectorizer = CountVectorizer(analyzer="char", ngram_range=(3, 3), lowercase=True)
    vectorizer.fit([text for group in groups for text in group])
    return [vectorizer.transform(group).sum(axis=0).A1 for group in groups]


def ngram_distance(live: list[str], reference: list[str], holdout: list[str]) -> tuple[float, str]:
    from scipy.spatial.distance import jensenshannon

    size = min(len(live), len(holdout))
    live_counts, held_counts, ref_counts = ngram_distributions(sample(live, size), holdout[:size], reference)
    raw = float(jensenshannon(live_counts, ref_counts, base=2))
    chance = float(jensenshannon(held_counts, ref_counts, base=2))
    return raw - chance, (f"Jensen-Shannon distance of char 3-grams {raw:.3f} minus {chance:.3f} for {size} "
                          "held-out training rows")


def best_similarities(rows: list[str], reference: list[str]) -> Any:
    """Each row's highest Jaccard similarity of char 3-gram sets to any reference row (one sparse product)."""
    import numpy as np
    from sklearn.feature_extraction.text import CountVectorizer

    vectorizer = CountVectorizer(analyzer="char", ngram_range=(3, 3), lowercase=True, binary=True)
    ref = vectorizer.fit_transform(reference)
    mine = vectorizer.transform(rows)
    # n-grams no reference row has still count in a row's own set: its size comes from the text, not the vocabulary
    own = np.array([max(1, len({text.lower()[i:i + 3] for i in range(len(text) - 2)})) for text in rows])
    shared = (mine @ ref.T).toarray()
    union = own[:, None] + np.asarray(ref.sum(axis=1)).ravel()[None, :] - shared
    return (shared / np.maximum(union, 1)).max(axis=1)


def novel_share(live: list[str], reference: list[str], holdout: list[str]) -> tuple[float, str]:
    import numpy as np

    cut = float(np.quantile(best_similarities(holdout, reference), NOVEL_QUANTILE))
    novel = best_similarities(live, reference) < cut
    return float(novel.mean()), (f"share of live inputs whose closest training row (char 3-gram Jaccard) is under "
                                 f"{cut:.2f}, the closest of {1 - NOVEL_QUANTILE:.0%} of held-out training rows")


def unseen_share(live: list[str], train: list[str], kind_of: Any, matches: Any, what: str) -> tuple[float, str]:
    train_kinds = Counter(kind_of(text) for text in sample(train, MAX_REFERENCE + MAX_HOLDOUT))
    total = sum(train_kinds.values())
    seen = {kind for kind, count in train_kinds.items() if count / total >= RARE_SHARE}
    live_kinds = [kind_of(text) for text in live]
    unseen = Counter(kind for kind in live_kinds if not matches(kind, seen))
    named = ", ".join(f"{kind} {count}" for kind, count in unseen.most_common(3)) or "none"
    return sum(unseen.values()) / len(live), (f"share of live inputs in a {what} under {RARE_SHARE:.0%} of training "
                                              f"rows (training: {', '.join(sorted(map(str, seen)))}; unseen: {named})")


def embedding_distance(live: list[str], reference: list[str], holdout: list[str], embedder: Any
                       ) -> tuple[float | None, str]:
    if embedder is None:
        return None, "no embedding model (minilm-l6-v2) loaded"
    if embedder.unavailable:
        return None, embedder.unavailable
    size = min(len(live), len(holdout), MAX_EMBEDDED)
    ref_mean = embedder.mean(sample(reference, MAX_EMBEDDED))
    raw = cosine_distance(embedder.mean(sample(live, size)), ref_mean)
    chance = cosine_distance(embedder.mean(holdout[:size]), ref_mean)
    return raw - chance, (f"cosine distance of mean MiniLM embeddings {raw:.3f} minus {chance:.3f} for {size} "
                          "held-out training rows")


def cosine_distance(first: Any, second: Any) -> float:
    import numpy as np

    return float(1 - first @ second / (np.linalg.norm(first) * np.linalg.norm(second)))


class Embedder:
    """Sentence embeddings from the built-in MiniLM (mean pooling over tokens, as sentence-transformers does),
    loaded on first use. Each text is embedded once (its vector is kept), so a tick embeds only the inputs that
    arrived since the last one; the means of text sets already seen (a run's reference rows) are kept too.

    `runner` runs the torch work: in the server, on the engine's thread (`engine.call`), because a second thread
    calling torch gets an OpenMP team of its own that fights the engine's for the cores (measured: serving at half
    its tokens/s with the monitor embedding on its own thread every 3 s)."""

    MAX_TOKENS = 128
    MAX_VECTORS = 50_000  # texts whose vectors are kept (384 floats each: about 75 MB at most)

    def __init__(self, home: Path, runner: Callable[[Callable[[], Any]], Any] | None = None):
        self.home = home
        self.runner = runner or (lambda work: work())
        self.unavailable: str | None = None
        self.model: Any = None
        self.tokenizer: Any = None
        self.cache: dict[int, Any] = {}
        self.vectors_of: dict[str, Any] = {}
        self.find()

    def find(self) -> None:
        from tunelab.errors import TunelabError
        from tunelab.models import builtin
        from tunelab.models.catalog import BUILTIN_MODELS

        try:  # never installed from here: a monitor must not reach for the network
            self.folder = builtin.provide(BUILTIN_MODELS["minilm-l6-v2"], self.home, install=False)
        except TunelabError as error:
            self.unavailable = f"embedding model unavailable: {error}"

    def mean(self, texts: list[str]) -> Any:
        key = hash(tuple(texts))
        if key not in self.cache:
            if len(self.cache) > 64:
                self.cache.clear()
            self.cache[key] = self.vectors(texts).mean(axis=0)
        return self.cache[key]

    def vectors(self, texts: list[str]) -> Any:
        import numpy as np

        missing = [text for text in dict.fromkeys(texts) if text not in self.vectors_of]
        if missing:
            computed = self.runner(lambda: self.embed(missing))
            if len(self.vectors_of) + len(missing) > self.MAX_VECTORS:
                self.vectors_of.clear()
            self.vectors_of.update(zip(missing, computed))
        return np.stack([self.vectors_of[text] for text in texts])

    def embed(self, texts: list[str]) -> Any:
        import torch

        if self.model is None:
            from transformers import AutoModel, AutoTokenizer

            self.tokenizer = AutoTokenizer.from_pretrained(str(self.folder))
            self.model = AutoModel.from_pretrained(str(self.folder)).eval()
        batches = []
        with torch.inference_mode():
            for start in range(0, len(texts), 64):
                encoded = self.tokenizer(texts[start:start + 64], padding=True, truncation=True,
                                         max_length=self.MAX_TOKENS, return_tensors="pt")
                hidden = self.model(**encoded).last_hidden_state
                mask = encoded["attention_mask"].unsqueeze(-1).to(hidden.dtype)
                pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1)
                batches.append(torch.nn.functional.normalize(pooled, dim=-1))
        return torch.cat(batches).numpy()
