"""The data doctor: from the recipe's `data` section to clean, deduplicated, checked splits, with every row
accounted for (read = kept + rejected) and every rejected row kept with its file, line and reason.

Order: read and parse -> clean (parallel) -> deduplicate each file -> split -> remove evaluation rows that repeat
train (duplicates, n-gram contamination) -> augment train -> tokenize (parallel) -> lint the template -> checks on
the whole set. `diagnose` does the work; `cache.py` stores its result by content hash.
"""

from __future__ import annotations

import hashlib
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tunelab.data.augment import augment
from tunelab.data.canaries import insert_canaries
from tunelab.data.contamination import contamination_hits
from tunelab.data.dataset import GENERATED_FILE, DataFile, describe_file
from tunelab.data.dedup import DedupIndex, Fingerprint, content_text
from tunelab.data.formats import Example, parse_items
from tunelab.data.lint import LintReport, lint_template
from tunelab.data.readers import BadRow, Record, scan_records
from tunelab.data.split import SPLITS, Splits, check_no_overlap, split_examples
from tunelab.data.stages import Progress, clean_row, parallel_map, tokenize_row, worker_count
from tunelab.data.synthetic import generate_rows
from tunelab.data.templates import Encoded
from tunelab.errors import TunelabError
from tunelab.files import jsonl_text

if TYPE_CHECKING:
    from tunelab.config.schema import DataSection

# Stages a row can be rejected at, in pipeline order (the report lists counts in this order).
STAGES = ("read", "parse", "clean", "duplicate", "near_duplicate", "label_conflict", "duplicate_across_splits",
          "contamination", "length", "template")
BAD_ROW_HINT = ("set data.bad_rows: quarantine to set such rows aside in rejected.jsonl (`tunelab data check` lists "
                "them all)")


def bad_row_refusal(where: str, reason: str) -> str:
    """How an unreadable row is refused under `data.bad_rows: stop`: here at the first one, and by `data check`
    (cache.refusals) for each."""
    return f"{where}: {reason}; {BAD_ROW_HINT}"


@dataclass
class Rejected:
    source: str
    line: int
    file_role: str  # train / validation / test / generated: the file the row came from
    stage: str
    reason: str
    split: str | None = None  # the split it was taken out of (evaluation rows removed as contamination)
    row: dict[str, Any] | None = None
    raw: str | None = None

    @property
    def where(self) -> str:
        return f"{self.source}:{self.line}"

    def to_json(self) -> dict[str, Any]:
        return {key: value for key, value in vars(self).items() if value is not None}


@dataclass
class Row:
    example: Example
    role: str  # the file it came from
    fp: Fingerprint | None = None
    length: int | None = None
    truncated: bool = False
    encoded: Encoded | None = None


@dataclass
class Diagnosis:
    files: list[DataFile]
    generated_rows: list[dict[str, Any]]
    read: dict[str, int]
    splits: dict[str, list[Row]]
    rejected: list[Rejected]
    added: dict[str, int]
    pii: dict[str, int]
    pii_scrubbed: bool
    cleaned_rows: int
    contamination: list[dict[str, Any]]
    lint: LintReport
    problems: list[str]
    seconds: dict[str, float]
    workers: int
    kinds: dict[str, str] = field(default_factory=dict)  # file role -> most common row kind


class Clock:
    def __init__(self):
        self.seconds: dict[str, float] = {}
        self.started = time.perf_counter()

    def lap(self, name: str) -> None:
        now = time.perf_counter()
        self.seconds[name] = round(now - self.started, 4)
        self.started = now


def diagnose(data: DataSection, tokenizer: Any, stop_ids: set[int], context: int | None,
             strict: bool, fingerprint: str, progress: Progress | None = None) -> Diagnosis:
    """Run every check. `strict` (prepare/train with data.bad_rows: stop) raises at the first unreadable row.
    `progress` hears of the two per-row stages (cleaning, tokenizing) as they go."""
    clock = Clock()
    inputs = read_inputs(data, strict)
    rejected = inputs.rejected
    clock.lap("read")
    workers = worker_count(data.num_proc, sum(len(rows) for rows in inputs.rows.values()))
    rows, pii, changed = clean_rows(inputs.rows, data, workers, fingerprint, rejected, progress)
    clock.lap("clean")
    rows = {role: deduplicate(role_rows, data, rejected) for role, role_rows in rows.items()}
    clock.lap("dedup")
    try:
        splits, split_problem = split_rows(rows, data), None
    except TunelabError as error:  # too few rows to split: keep them all in train, say so with the other problems
        splits = {"train": rows.get("train", []), "validation": rows.get("validation", []),
                  "test": rows.get("test", [])}
        split_problem = str(error)
    removed_from_eval(splits, data, rejected)
    contamination = check_contamination(splits, data, rejected)
    clock.lap("contamination")
    added = add_augmented(splits, data)
    added.update(add_canaries(splits, data))
    tokenize_rows(splits, data, tokenizer, stop_ids, workers, fingerprint, rejected, progress)
    clock.lap("tokenize")
    lint = (lint_template(tokenizer, [row.example for row in splits["train"]], stop_ids, data.max_length, context,
                          data.lint.rows) if data.lint.enabled else LintReport(skipped="data.lint.enabled is false"))
    clock.lap("lint")
    diagnosis = Diagnosis(
        files=inputs.files, generated_rows=inputs.generated_rows, read=inputs.read, splits=splits,
        rejected=rejected, added=added, pii=pii, pii_scrubbed=data.pii.scrub, cleaned_rows=changed,
        contamination=contamination, lint=lint, problems=[], seconds=clock.seconds, workers=workers,
        kinds=inputs.kinds,
    )
    diagnosis.problems = ([split_problem] if split_problem else []) + whole_set_problems(diagnosis, data)
    check_counts(diagnosis)
    return diagnosis


@dataclass
class Inputs:
    rows: dict[str, list[Row]]
    rejected: list[Rejected]
    files: list[DataFile]
    generated_rows: list[dict[str, Any]]
    read: dict[str, int]
    kinds: dict[str, str]


def read_inputs(data: DataSection, strict: bool) -> Inputs:
    inputs = Inputs({}, [], [], [], {}, {})
    sources: list[tuple[str, list[Record | BadRow]]] = []
    if data.generate is not None:
        inputs.generated_rows = generate_rows(data.generate.task, data.generate.rows, data.generate.seed)
        source = f"generated:{data.generate.task}"
        sources.append(("train", [Record(row, source, n) for n, row in enumerate(inputs.generated_rows, start=1)]))
        digest = hashlib.sha256(jsonl_text(inputs.generated_rows).encode("utf-8")).hexdigest()
        inputs.files.append(DataFile("generated", GENERATED_FILE, digest, len(inputs.generated_rows)))
    paths = {"train": data.train if data.generate is None else None, "validation": data.validation,
             "test": data.test}
    for role, path in paths.items():
        if path:
            items = scan_records(Path(path), data.file_type, data.columns, data.max_row_bytes)
            sources.append((role, items))
            inputs.files.append(describe_file(role, Path(path), len(items)))
    for role, items in sources:
        examples, bad = parse_items(items, data.format, data.fields, data.system_prompt)
        if strict and bad:
            first = min(bad, key=lambda b: b.line)
            raise TunelabError(bad_row_refusal(first.where, first.reason))
        inputs.read[role] = len(items)
        inputs.rows[role] = [Row(example, role) for example in examples]
        stage = {True: "read", False: "parse"}
        unread = {(b.source, b.line) for b in items if isinstance(b, BadRow)}
        for b in bad:
            inputs.rejected.append(Rejected(b.source, b.line, role, stage[(b.source, b.line) in unread], b.reason,
                                            raw=b.raw))
        inputs.kinds[role] = most_common_kind(examples)
    return inputs


def most_common_kind(examples: list[Example]) -> str:
    kinds = Counter(example.kind for example in examples)
    return kinds.most_common(1)[0][0] if kinds else "none"


def clean_rows(rows: dict[str, list[Row]], data: DataSection, workers: int, fingerprint: str,
               rejected: list[Rejected], progress: Progress | None = None,
               ) -> tuple[dict[str, list[Row]], dict[str, int], int]:
    flat = [row for role_rows in rows.values() for row in role_rows]
    results = parallel_map(clean_row, [jsonl_row(row.example) for row in flat], workers, "clean" + fingerprint,
                           progress, "cleaning rows", clean=data.clean, pii=data.pii, dedup=data.dedup)
    pii: Counter = Counter()
    changed = 0
    kept: dict[str, list[Row]] = {role: [] for role in rows}
    for row, result in zip(flat, results):
        pii.update(result["pii"])
        changed += result["changed"]
        if result["reason"]:
            rejected.append(Rejected(row.example.source, row.example.line, row.role, "clean", result["reason"],
                                     row=row.example.to_json()))
            continue
        fp = result.get("fingerprint")
        kept[row.role].append(Row(Example.from_json(result["example"]), row.role,
                                  Fingerprint(**fp) if fp else None))
    return kept, dict(pii), changed


def jsonl_row(example: Example) -> str:
    import json

    return json.dumps(example.to_json(), ensure_ascii=False)


def deduplicate(rows: list[Row], data: DataSection, rejected: list[Rejected]) -> list[Row]:
    """Later copies of a row within one file are rejected; the first is kept."""
    if not (data.dedup.exact or data.dedup.near):
        return rows
    index, kept = DedupIndex(data.dedup), []
    for row in rows:
        hit = index.find(row.fp)
        if hit is None:
            index.add(len(kept), row.fp)
            kept.append(row)
            continue
        twin, kind, similarity = kept[hit[0]].example, hit[1], hit[2]
        example = row.example
        if kind == "exact" and example.kind == "label" and example.label != twin.label:
            stage, reason = "label_conflict", (f"same text as {twin.where}, labelled {twin.label!r} there and "
                                               f"{example.label!r} here")
        elif kind == "exact" and example.kind == "feedback" and example.desirable != twin.desirable:
            stage, reason = "label_conflict", (f"same prompt and completion as {twin.where}, judged "
                                               f"{'desirable' if twin.desirable else 'undesirable'} there and "
                                               f"{'desirable' if example.desirable else 'undesirable'} here")
        elif kind == "exact":
            stage, reason = "duplicate", f"duplicate of {twin.where} (same content once case and spacing are ignored)"
        else:
            stage, reason = "near_duplicate", (f"near-duplicate of {twin.where} (similarity {similarity:.2f} >= "
                                               f"data.dedup.threshold={data.dedup.threshold})")
        rejected.append(Rejected(example.source, example.line, row.role, stage, reason, row=example.to_json()))
    return kept


def split_rows(rows: dict[str, list[Row]], data: DataSection) -> dict[str, list[Row]]:
    train = rows.get("train", [])
    given = {role: rows[role] for role in ("validation", "test") if role in rows}
    if not train:
        return {"train": [], "validation": given.get("validation", []), "test": given.get("test", [])}
    by_id = {id(row.example): row for row in train}
    splits = split_examples(
        [row.example for row in train],
        validation=0 if "validation" in given else data.split.validation,
        test=0 if "test" in given else data.split.test,
        seed=data.split.seed,
    )
    out = {name: [by_id[id(example)] for example in examples] for name, examples in splits.items()}
    out.update(given)
    return out


def removed_from_eval(splits: dict[str, list[Row]], data: DataSection, rejected: list[Rejected]) -> None:
    """Evaluation rows that repeat (exactly or nearly) a train row, or a validation row for test rows, leave
    their split: the first occurrence is kept in the earliest split (train, then validation)."""
    if not (data.dedup.exact or data.dedup.near):
        return
    index, owners = DedupIndex(data.dedup), []
    for row in splits["train"]:
        index.add(len(owners), row.fp)
        owners.append(("train", row))
    for name in ("validation", "test"):
        kept = []
        for row in splits[name]:
            hit = index.find(row.fp)
            if hit is None:
                kept.append(row)
                continue
            twin_split, twin = owners[hit[0]]
            kind = "exact" if hit[1] == "exact" else f"near (similarity {hit[2]:.2f})"
            rejected.append(Rejected(row.example.source, row.example.line, row.role, "duplicate_across_splits",
                                     f"{kind} duplicate of {twin_split} row {twin.example.where}", name,
                                     row=row.example.to_json()))
        splits[name] = kept
        for row in kept:
            index.add(len(owners), row.fp)
            owners.append((name, row))


def check_contamination(splits: dict[str, list[Row]], data: DataSection,
                        rejected: list[Rejected]) -> list[dict[str, Any]]:
    options = data.contamination
    if not options.enabled or not splits["train"]:
        return []
    train_texts = [content_text(row.example) for row in splits["train"]]
    listed = []
    for name in ("validation", "test"):
        rows = splits[name]
        hits = contamination_hits([content_text(row.example) for row in rows], train_texts, options.ngram,
                                  options.threshold, options.common_share)
        for hit in hits:
            row, twin = rows[hit.index], splits["train"][hit.train_index].example
            listed.append({"split": name, "where": row.example.where, "overlap": round(hit.overlap, 4),
                           "train_where": twin.where, "removed": options.action == "remove"})
            if options.action == "remove":
                reason = (f"{hit.overlap:.0%} of its {options.ngram}-grams appear in train (most in {twin.where}); "
                          f"data.contamination.threshold={options.threshold}")
                rejected.append(Rejected(row.example.source, row.example.line, row.role, "contamination", reason,
                                         name, row=row.example.to_json()))
        if options.action == "remove":
            gone = {hit.index for hit in hits}
            splits[name] = [row for number, row in enumerate(rows) if number not in gone]
    return listed


def add_augmented(splits: dict[str, list[Row]], data: DataSection) -> dict[str, int]:
    options = data.augment
    if not options.prompt_templates and not options.noise_copies:
        return {}
    added = augment([row.example for row in splits["train"]], options)
    splits["train"] = splits["train"] + [Row(example, "augment") for example in added]
    return dict(Counter(example.origin.split(" ")[1] for example in added))


def add_canaries(splits: dict[str, list[Row]], data: DataSection) -> dict[str, int]:
    """`data.canaries` secrets into train only, after every check that removes rows (data/canaries.py)."""
    if not data.canaries or not splits["train"]:
        return {}
    splits["train"] = insert_canaries(splits["train"], data.canaries, data.canary_repeats, data.split.seed,
                                      lambda example: Row(example, "canary"))
    return {"canary": data.canaries * data.canary_repeats}


def tokenize_rows(splits: dict[str, list[Row]], data: DataSection, tokenizer: Any, stop_ids: set[int],
                  workers: int, fingerprint: str, rejected: list[Rejected], progress: Progress | None = None) -> None:
    flat = [(name, row) for name in SPLITS for row in splits[name]]
    results = parallel_map(tokenize_row, [jsonl_row(row.example) for _, row in flat], workers,
                           "tokens" + fingerprint, progress, "tokenizing rows", tokenizer=tokenizer,
                           stop_ids=sorted(stop_ids),
                           max_length=data.max_length, overlong=data.overlong, min_tokens=data.clean.min_tokens)
    kept: dict[str, list[Row]] = {name: [] for name in SPLITS}
    for (name, row), result in zip(flat, results):
        row.length, row.truncated = result["length"], result.get("truncated", False)
        if result["reason"]:
            if row.role not in ("augment", "canary"):  # an added row that does not fit is simply not added
                stage = "template" if result["reason"].startswith("template:") else "length"
                rejected.append(Rejected(row.example.source, row.example.line, row.role, stage, result["reason"],
                                         name, row=row.example.to_json()))
            continue
        if "input_ids" in result:
            row.encoded = Encoded(result["input_ids"], result["labels"])
        kept[name].append(row)
    splits.update(kept)


def main_reasons(rejected: list[Rejected], role: str, most: int = 2) -> str:
    """The commonest rejection reasons of one file's rows, e.g. '3: exact duplicate; 1: empty text'."""
    reasons = Counter(item.reason for item in rejected if item.file_role == role)
    return "; ".join(f"{count}: {reason}" for reason, count in reasons.most_common(most)) or "no reason recorded"


def whole_set_problems(diagnosis: Diagnosis, data: DataSection) -> list[str]:
    """What makes the set unusable as a whole; `data check` lists them, prepare and train stop at the first."""
    problems = []
    splits, read = diagnosis.splits, diagnosis.read
    train_read = read.get("train", 0)
    if not splits["train"]:
        problems.append(f"nothing usable left: all {train_read} train rows were rejected "
                        f"({main_reasons(diagnosis.rejected, 'train')}; see rejected.jsonl)")
    for role in ("validation", "test"):
        if role in read and not splits[role] and read[role]:
            problems.append(f"{getattr(data, role)}: all {read[role]} {role} row(s) also appear in train or were "
                            f"rejected ({main_reasons(diagnosis.rejected, role)}), so nothing is held out "
                            "(see rejected.jsonl)")
    labels = Counter(row.example.label for row in splits["train"] if row.example.kind == "label")
    if len(labels) == 1:
        only = next(iter(labels))
        problems.append(f"{data.train}: every label row has the class {only!r}; a classifier needs at least two "
                        "classes")
    for check in diagnosis.lint.failures:
        problems.append(f"template lint: {check.name}: {check.detail}")
    if data.contamination.action == "remove":
        try:
            check_no_overlap(Splits(*[[row.example for row in splits[name]] for name in SPLITS]))
        except TunelabError as error:
            problems.append(str(error))
    return problems


def check_counts(diagnosis: Diagnosis) -> None:
    """The accounting every report promises: rows read = rows kept + rows rejected, file by file."""
    kept = Counter(row.role for rows in diagnosis.splits.values() for row in rows if row.role != "augment")
    rejected = Counter(item.file_role for item in diagnosis.rejected)
    for role, count in diagnosis.read.items():
        if count != kept[role] + rejected[role]:
            raise AssertionError(f"{role}: read {count} != kept {kept[role]} + rejected {rejected[role]}")
