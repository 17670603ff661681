"""Exact and near-duplicate rows.

Exact: the same content once case and spacing are normalised (a sha256 of it). Near: MinHash LSH from `datasketch`
over character shingles finds candidate pairs; each candidate is confirmed with the exact Jaccard similarity of the
two shingle sets, so the threshold means what it says and LSH can only miss pairs, never invent them.
The first occurrence of a row is kept; later copies point at it.
"""

from __future__ import annotations

import functools
import hashlib
import re
from dataclasses import dataclass
from typing import Any

from tunelab.data.formats import Example

SPACES = re.compile(r"\s+")


def normalised(text: str) -> str:
    return SPACES.sub(" ", text.casefold()).strip()


def content_text(example: Example) -> str:
    """What makes two rows the same: every turn but the system prompt (often shared by all rows), or the text;
    label rows by their text alone, so one text with two labels is a duplicate (a label conflict); feedback rows
    by prompt and completion; prompt rows by the prompt and the fields the rewards read."""
    if example.kind in ("text", "label"):
        return example.text
    parts = [f"{m['role']}: {m['content']}" for m in example.messages if m["role"] != "system"]
    if example.kind == "preference":
        parts += [f"chosen: {example.chosen}", f"rejected: {example.rejected}"]
    if example.kind == "feedback":  # without its label, like a label row: one answer judged both ways is a conflict
        parts.append(f"completion: {example.completion}")
    if example.kind == "prompt":  # the same prompt with another reference answer is another row
        parts += [f"{key}: {value}" for key, value in sorted(example.extra.items())]
    return "\n".join(parts)


def exact_key(example: Example) -> str:
    return hashlib.sha256(normalised(content_text(example)).encode("utf-8")).hexdigest()


def shingles(text: str, size: int) -> set[str]:
    text = normalised(text)
    if len(text) <= size:
        return {text}
    return {text[i : i + size] for i in range(len(text) - size + 1)}


def jaccard(first: set, second: set) -> float:
    return len(first & second) / len(first | second) if first or second else 1.0


def minhash_values(shingle_set: set[str], num_perm: int) -> list[int]:
    """A MinHash signature (datasketch's default affine32 scheme, seed 1), as plain ints to ship between processes."""
    from datasketch import MinHash

    signature = MinHash(num_perm=num_perm, permutations=permutations(num_perm), scheme="affine32")
    signature.update_batch([item.encode("utf-8") for item in shingle_set])
    return signature.hashvalues.tolist()


@functools.lru_cache(maxsize=4)
def permutations(num_perm: int) -> Any:
    """datasketch draws the permutation parameters anew for every MinHash; drawing them once per size gives the
    same values (same seed) at a fraction of the cost."""
    from datasketch import MinHash

    return MinHash(num_perm=num_perm).permutations


@dataclass
class Fingerprint:
    """What dedup needs of one row, computed once (in parallel) while cleaning."""

    key: str
    text: str
    signature: list[int] | None = None
    shingles: set[str] | None = None  # computed when first needed, then kept


def fingerprint(example: Example, dedup: Any) -> Fingerprint:
    text = content_text(example)
    signature = minhash_values(shingles(text, dedup.shingle), dedup.num_perm) if dedup.near else None
    return Fingerprint(exact_key(example), text, signature)


class NearIndex:
    """Rows added one by one; `find` returns the most similar earlier row at or above the threshold."""

    def __init__(self, dedup: Any):
        from datasketch import MinHashLSH

        self.dedup = dedup
        # Candidates are confirmed exactly, so a false candidate costs only time while a missed one is a missed
        # duplicate: weight LSH's parameter choice heavily against misses.
        self.lsh = MinHashLSH(threshold=dedup.threshold, num_perm=dedup.num_perm, weights=(0.1, 0.9))
        self.shingles: dict[Any, set[str]] = {}

    def find(self, fp: Fingerprint) -> tuple[Any, float] | None:
        mine = self.shingles_of(fp)
        best = None
        for key in self.lsh.query(self.signature(fp)):
            similarity = jaccard(mine, self.shingles[key])
            if similarity >= self.dedup.threshold and (best is None or similarity > best[1]):
                best = (key, similarity)
        return best

    def add(self, key: Any, fp: Fingerprint) -> None:
        self.lsh.insert(key, self.signature(fp), check_duplication=False)
        self.shingles[key] = self.shingles_of(fp)

    def signature(self, fp: Fingerprint) -> Any:
        from datasketch import MinHash

        # Given the permutations, MinHash skips drawing them again (the slow part of building one).
        return MinHash(hashvalues=fp.signature, permutations=permutations(self.dedup.num_perm), scheme="affine32")

    def shingles_of(self, fp: Fingerprint) -> set[str]:
        if fp.shingles is None:
            fp.shingles = shingles(fp.text, self.dedup.shingle)
        return fp.shingles


class DedupIndex:
    """Exact keys and (if enabled) the near-duplicate index of the rows kept so far."""

    def __init__(self, dedup: Any):
        self.dedup = dedup
        self.exact: dict[str, Any] = {}
        self.near = NearIndex(dedup) if dedup.near else None

    def find(self, fp: Fingerprint) -> tuple[Any, str, float] | None:
        if self.dedup.exact and fp.key in self.exact:
            return self.exact[fp.key], "exact", 1.0
        if self.near is not None:
            hit = self.near.find(fp)
            if hit is not None:
                return hit[0], "near", hit[1]
        return None

    def add(self, key: Any, fp: Fingerprint) -> None:
        self.exact.setdefault(fp.key, key)
        if self.near is not None:
            self.near.add(key, fp)
