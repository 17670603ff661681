"""The data report as data: everything the doctor found, machine-readable (`data_report.json`). The HTML page and
the terminal summary are drawn from the same dictionary in present/data_report.py and present/console.py."""

from __future__ import annotations

import statistics
from collections import Counter
from typing import Any

from tunelab import __version__
from tunelab.data.canaries import recorded as recorded_canaries
from tunelab.data.doctor import STAGES, Diagnosis
from tunelab.data.split import SPLITS

SHOWN_REJECTED = 25  # rows listed in the HTML report; rejected.jsonl has them all


def build_report(diagnosis: Diagnosis, data: Any, key: str) -> dict[str, Any]:
    splits = diagnosis.splits
    by_stage = Counter(item.stage for item in diagnosis.rejected)
    read = sum(diagnosis.read.values())
    rejected = len(diagnosis.rejected)
    added = sum(diagnosis.added.values())
    by_file = {}
    for role, count in diagnosis.read.items():
        gone = sum(item.file_role == role for item in diagnosis.rejected)
        by_file[role] = {"read": count, "kept": count - gone, "rejected": gone}
    report = {
        "tunelab_version": __version__,
        "key": key,
        "files": [vars(item) for item in diagnosis.files],
        "kinds": diagnosis.kinds,
        "counts": {"read": read, "kept": read - rejected, "rejected": rejected, "added": added,
                   "final": read - rejected + added, "by_file": by_file},
        "rejected_by_stage": {stage: by_stage[stage] for stage in STAGES if by_stage[stage]},
        "splits": {name: split_summary(diagnosis, name) for name in SPLITS},
        "duplicates": {"exact": by_stage["duplicate"], "near": by_stage["near_duplicate"],
                       "label_conflicts": by_stage["label_conflict"],
                       "across_splits": by_stage["duplicate_across_splits"]},
        "contamination": {"ngram": data.contamination.ngram, "threshold": data.contamination.threshold,
                          "action": data.contamination.action, "enabled": data.contamination.enabled,
                          "hits": diagnosis.contamination},
        "pii": {"counts": diagnosis.pii, "scrubbed": diagnosis.pii_scrubbed},
        "cleaning": {"rows_changed": diagnosis.cleaned_rows},
        "augmented": diagnosis.added,
        "canaries": recorded_canaries([row.example for row in splits["train"]]),
        "length": {"max_length": data.max_length, "overlong": data.overlong, "min_tokens": data.clean.min_tokens,
                   "truncated": sum(summary_truncated(diagnosis, name) for name in SPLITS),
                   "dropped": by_stage["length"]},
        "lint": diagnosis.lint.to_json(),
        "problems": diagnosis.problems,
        "timing": {"seconds": diagnosis.seconds, "workers": diagnosis.workers,
                   "rows_per_second": round(read / max(sum(diagnosis.seconds.values()), 1e-9), 1)},
        "token_lengths": {name: [row.length for row in splits[name] if row.length is not None] for name in SPLITS},
        "duplicate_examples": [item.to_json() for item in diagnosis.rejected
                               if item.stage in ("duplicate", "near_duplicate", "label_conflict")][:SHOWN_REJECTED],
        "first_rejected": first_by_stage(diagnosis),
        "rejected_examples": [{k: v for k, v in item.to_json().items() if k not in ("row", "raw")}
                              for item in diagnosis.rejected[:SHOWN_REJECTED]],
    }
    return report


def first_by_stage(diagnosis: Diagnosis) -> dict[str, dict[str, Any]]:
    first: dict[str, dict[str, Any]] = {}
    for item in diagnosis.rejected:
        first.setdefault(item.stage, {"source": item.source, "line": item.line, "reason": item.reason})
    return first


def summary_truncated(diagnosis: Diagnosis, name: str) -> int:
    return sum(row.truncated for row in diagnosis.splits[name])


def split_summary(diagnosis: Diagnosis, name: str) -> dict[str, Any]:
    rows = diagnosis.splits[name]
    lengths = sorted(row.length for row in rows if row.length is not None)
    encoded = [row.encoded for row in rows if row.encoded is not None]
    labels = Counter(row.example.label for row in rows if row.example.label is not None)
    dropped = sum(item.split == name and item.stage == "length" and "max_length" in item.reason
                  for item in diagnosis.rejected)
    return {
        "rows": len(rows),
        "added": sum(row.role in ("augment", "canary") for row in rows),
        "kinds": dict(Counter(row.example.kind for row in rows)),
        "tokens": sum(len(row.encoded.input_ids) if row.encoded else row.length or 0 for row in rows),
        "label_tokens": sum(item.label_count for item in encoded),
        "truncated": summary_truncated(diagnosis, name),
        "dropped_overlong": dropped,
        "length": length_stats(lengths),
        "labels": dict(labels.most_common()),
    }


def length_stats(lengths: list[int]) -> dict[str, Any]:
    if not lengths:
        return {}
    return {"min": lengths[0], "median": round(statistics.median(lengths)),
            "p95": lengths[min(len(lengths) - 1, int(0.95 * len(lengths)))], "max": lengths[-1]}
