"""The two per-row stages of the data doctor that run in parallel: clean (+ dedup fingerprint) and tokenize.

Both are plain functions over a batch of rows serialised as JSON, run by `datasets.Dataset.map` with `num_proc`
worker processes (rows keep their order). JSON strings keep the Arrow schema trivial whatever the row format.
"""

from __future__ import annotations

import json
import os
from typing import Any, Callable

from tunelab.data.clean import clean_example
from tunelab.data.dedup import fingerprint
from tunelab.data.formats import Example
from tunelab.data.templates import Encoded, encode_example, encode_prompt, tokens
from tunelab.errors import TunelabError

PARALLEL_FROM_ROWS = 2000  # below this, starting worker processes costs more than it saves


def worker_count(requested: int | None, rows: int) -> int:
    if requested is not None:
        return max(1, min(requested, rows))
    return max(1, min(os.cpu_count() or 1, 8)) if rows >= PARALLEL_FROM_ROWS else 1


# Progress of a per-row stage: (stage, rows done, rows in all). See present/progress.py StageProgress.
Progress = Callable[[str, int, int], None]
BATCH_ROWS = 256
PROGRESS_STEPS = 20  # with progress shown, rows go to the workers in about this many chunks


def parallel_map(function: Callable, rows: list[str], num_proc: int, fingerprint_seed: str,
                 progress: Progress | None = None, stage: str = "rows", **options: Any) -> list[dict[str, Any]]:
    """`function(batch of JSON rows, **options)` -> list of JSON results, over `num_proc` processes, in order.

    With `progress`, the rows are mapped in chunks (each large enough to keep every worker busy for many batches)
    and `progress(stage, done, total)` is called after each.
    """
    from datasets import Dataset

    if not rows:
        return []
    chunk = len(rows)
    if progress is not None:
        chunk = max(BATCH_ROWS * max(num_proc, 1) * 4, -(-len(rows) // PROGRESS_STEPS))
        progress(stage, 0, len(rows))
    results: list[dict[str, Any]] = []
    for start in range(0, len(rows), chunk):
        dataset = Dataset.from_dict({"row": rows[start:start + chunk]})
        mapped = dataset.map(
            run_batch, batched=True, batch_size=BATCH_ROWS, num_proc=num_proc if num_proc > 1 else None,
            fn_kwargs={"function": function, "options": options}, remove_columns=["row"],
            # Fingerprinting would hash the tokenizer in `options` (slow); tunelab's own cache key covers it.
            new_fingerprint=f"{fingerprint_seed[:40]}-{start}",
        )
        results += [json.loads(text) for text in mapped["out"]]
        if progress is not None:
            progress(stage, len(results), len(rows))
    return results


def run_batch(batch: dict[str, list], function: Callable, options: dict[str, Any]) -> dict[str, list]:
    return {"out": [json.dumps(function(json.loads(row), **options), ensure_ascii=False) for row in batch["row"]]}


def clean_row(row: dict[str, Any], clean: Any, pii: Any, dedup: Any) -> dict[str, Any]:
    result = clean_example(Example.from_json(row), clean, pii)
    out: dict[str, Any] = {"reason": result.reason, "changed": result.changed, "pii": result.pii}
    if result.example is not None:
        out["example"] = result.example.to_json()
        if dedup.exact or dedup.near:
            fp = fingerprint(result.example, dedup)
            out["fingerprint"] = {"key": fp.key, "text": fp.text, "signature": fp.signature}
    return out


def tokenize_row(row: dict[str, Any], tokenizer: Any, stop_ids: list[int], max_length: int, overlong: str,
                 min_tokens: int) -> dict[str, Any]:
    """Token count of a row and, for conversation and text rows, its ids and loss labels (cut per `overlong`)."""
    example = Example.from_json(row)
    try:
        encoded = encode_example(tokenizer, example, set(stop_ids)) if example.kind in ("chat", "text") else None
    except TunelabError as error:
        return {"reason": f"template: {error}", "length": None}
    length = len(encoded.input_ids) if encoded else other_length(tokenizer, example)
    out: dict[str, Any] = {"reason": None, "length": length, "truncated": False}
    if length < min_tokens:
        out["reason"] = f"{length} tokens, under data.clean.min_tokens={min_tokens}"
        return out
    if length > max_length:
        if overlong == "drop":
            out["reason"] = f"{length} tokens, over data.max_length={max_length} (data.overlong: drop)"
            return out
        out["truncated"] = True
        if encoded:
            encoded = Encoded(encoded.input_ids[:max_length], encoded.labels[:max_length])
            if encoded.label_count == 0:
                out["reason"] = f"{length} tokens; cut to data.max_length={max_length} it keeps no answer token"
                return out
    if encoded:
        out["input_ids"], out["labels"] = encoded.input_ids, encoded.labels
    return out


def other_length(tokenizer: Any, example: Example) -> int:
    """Tokens of a label row's text, a prompt row's prompt, a feedback row's prompt with its completion, or a
    preference row's prompt with its longer answer."""
    if example.kind == "label":
        return len(tokenizer(example.text)["input_ids"])
    prompt = encode_prompt(tokenizer, example.messages)
    if example.kind == "prompt":
        return len(prompt)
    if example.kind == "feedback":
        return len(prompt) + len(tokens(tokenizer, example.completion)) + 1
    return len(prompt) + max(len(tokens(tokenizer, example.chosen)), len(tokens(tokenizer, example.rejected))) + 1
