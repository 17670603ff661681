"""Prepared data, cached by content hash: a second `data check`, `data prepare` or `train` on the same inputs,
data settings and tokenizer reads the result instead of doing the work again.

The key is a sha256 of: the pipeline version, the recipe's `data` section (all but num_proc), the sha256 of each
input file (or of the generated rows), the tokenizer (vocabulary, special tokens, chat template), the stop ids and
the model's context size. An entry is a folder under `<TUNELAB_HOME>/cache/data/<key>/`, written to a temporary
name and renamed when complete, so a crash never leaves a half entry that looks whole.

Folder layout (the run's data/ folder gets the same files but tokens/):
    train.jsonl validation.jsonl test.jsonl   the splits to use
    tokens/<split>.jsonl                        input ids and loss labels of the conversation and text rows
    rejected.jsonl                              every rejected row: file, line, stage, reason, the row
    data_report.json data_report.html           the report
    generated.jsonl                             the generated source rows, if the data was generated
    canaries.jsonl                              the secrets inserted into train (data.canaries), if any
    prepared.json                               the key; written last
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tunelab.data.dataset import GENERATED_FILE, DataFile, LoadedData, TokenizedSplit
from tunelab.data.formats import Example
from tunelab.data.split import SPLITS, Splits
from tunelab.data.stages import Progress
from tunelab.data.templates import Encoded
from tunelab.errors import TunelabError
from tunelab.files import (
    copy_file,
    jsonl_text,
    read_json,
    read_jsonl,
    sha256_file,
    write_json,
    write_jsonl,
    write_text_atomic,
)

if TYPE_CHECKING:
    from tunelab.config.schema import DataSection

PIPELINE_VERSION = 2  # part of the cache key: bump it whenever the pipeline or the report format changes
MARKER = "prepared.json"
REJECTED = "rejected.jsonl"
REPORT_JSON = "data_report.json"
REPORT_HTML = "data_report.html"
TOKENS = "tokens"
CANARIES = "canaries.jsonl"


@dataclass
class Prepared:
    key: str
    folder: Path  # where the files are (cache entry)
    report: dict[str, Any]
    from_cache: bool

    @property
    def problems(self) -> list[str]:
        return self.report["problems"]

    def splits(self) -> Splits:
        return Splits(**{name: [Example.from_json(row) for row in read_jsonl(self.folder / f"{name}.jsonl")]
                         for name in SPLITS})

    def tokenized(self) -> dict[str, TokenizedSplit]:
        out = {}
        for name in SPLITS:
            info = self.report["splits"][name]
            path = self.folder / TOKENS / f"{name}.jsonl"
            rows = [Encoded(row["input_ids"], row["labels"]) for row in read_jsonl(path)]
            out[name] = TokenizedSplit(rows, len(rows), info["dropped_overlong"], info["truncated"],
                                       info["tokens"], info["label_tokens"])
        return out

    def loaded(self) -> LoadedData:
        generated = self.folder / GENERATED_FILE
        return LoadedData(self.splits(), [DataFile(**item) for item in self.report["files"]],
                          read_jsonl(generated) if generated.exists() else [])

    def copy_to(self, data_dir: Path, splits: Splits | None = None) -> None:
        """The prepared files (not the token ids) into a run's data folder, replacing what an earlier prepare put
        there (a folder with the marker is ours to replace); the marker goes last. `splits`: the rows as a task
        trains on them, written instead of the doctor's where the task converted them."""
        if (data_dir / MARKER).is_file():
            shutil.rmtree(data_dir)
        data_dir.mkdir(parents=True, exist_ok=True)
        split_files = {f"{name}.jsonl" for name in SPLITS} if splits is not None else set()
        for item in sorted(self.folder.iterdir()):
            if item.name in (TOKENS, MARKER) or item.name in split_files:
                continue
            copy_file(item, data_dir / item.name)
        if splits is not None:
            for name, examples in splits.items():
                write_jsonl(data_dir / f"{name}.jsonl", [example.to_json() for example in examples])
        copy_file(self.folder / MARKER, data_dir / MARKER)


def tokenizer_fingerprint(tokenizer: Any) -> str:
    digest = hashlib.sha256()
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:
        digest.update(backend.to_str().encode("utf-8"))
    else:
        digest.update(json.dumps(sorted(tokenizer.get_vocab().items())).encode("utf-8"))
    digest.update(json.dumps([type(tokenizer).__name__, tokenizer.chat_template, tokenizer.eos_token,
                              tokenizer.pad_token, tokenizer.all_special_tokens]).encode("utf-8"))
    return digest.hexdigest()


def input_digests(data: DataSection) -> dict[str, str]:
    """sha256 of each input file: what the key depends on (a missing file fails later, with its own message)."""
    out = {}
    for role in ("train", "validation", "test"):
        path = getattr(data, role)
        if path and Path(path).is_file():
            out[role] = sha256_file(path)
    return out


def cache_key(data: DataSection, tokenizer_digest: str, stop_ids: set[int], context: int | None) -> str:
    settings = data.model_dump(mode="json", exclude={"num_proc"})
    inputs = {"pipeline": PIPELINE_VERSION, "data": settings, "files": input_digests(data),
              "tokenizer": tokenizer_digest, "stop_ids": sorted(stop_ids), "context": context}
    return hashlib.sha256(json.dumps(inputs, sort_keys=True).encode("utf-8")).hexdigest()


def cache_dir(home: Path) -> Path:
    return home / "cache" / "data"


def lookup(home: Path, key: str) -> Prepared | None:
    folder = cache_dir(home) / key
    if not (folder / MARKER).is_file():
        return None
    try:
        report = read_json(folder / REPORT_JSON)
    except (OSError, ValueError):
        return None  # a damaged entry is recomputed
    return Prepared(key, folder, report, from_cache=True)


def store(home: Path, key: str, diagnosis: Any, report: dict[str, Any], html: str) -> Prepared:
    """Write a fresh result into the cache (temporary folder, then an atomic rename)."""
    final = cache_dir(home) / key
    temporary = final.with_name(f".{key}.{os.getpid()}.tmp")
    if temporary.exists():
        shutil.rmtree(temporary)
    (temporary / TOKENS).mkdir(parents=True)
    for name in SPLITS:
        rows = diagnosis.splits[name]
        write_text_atomic(temporary / f"{name}.jsonl", jsonl_text([row.example.to_json() for row in rows]))
        tokens = [{"input_ids": r.encoded.input_ids, "labels": r.encoded.labels} for r in rows if r.encoded]
        write_text_atomic(temporary / TOKENS / f"{name}.jsonl", jsonl_text(tokens))
    write_text_atomic(temporary / REJECTED, jsonl_text([item.to_json() for item in diagnosis.rejected]))
    if diagnosis.generated_rows:
        write_text_atomic(temporary / GENERATED_FILE, jsonl_text(diagnosis.generated_rows))
    if report.get("canaries"):  # the secrets put in train on purpose (data.canaries), for the privacy probe
        write_text_atomic(temporary / CANARIES, jsonl_text(report["canaries"]))
    write_json(temporary / REPORT_JSON, report)
    write_text_atomic(temporary / REPORT_HTML, html)
    write_json(temporary / MARKER, {"key": key, "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())})
    try:
        os.replace(temporary, final)
    except OSError:  # another process stored the same key first: its entry is the same, keep it
        shutil.rmtree(temporary, ignore_errors=True)
    return Prepared(key, final, report, from_cache=False)


def unreadable_rows(prepared: Prepared) -> list[tuple[str, str]]:
    """(file:line, reason) of every row of a result that could not be read or parsed, in file order."""
    return [(f"{item['source']}:{item['line']}", item["reason"]) for item in read_jsonl(prepared.folder / REJECTED)
            if item["stage"] in ("read", "parse")]


def refusals(prepared: Prepared, data: DataSection) -> list[str]:
    """Everything in this data that `train` and `data prepare` refuse, in the order they meet it: with
    `data.bad_rows: stop` each unreadable row (with what to do about it), then each problem of the whole set.
    `data check` exits 2 when this is not empty, so a check that passes means train will accept the data."""
    from tunelab.data.doctor import bad_row_refusal

    bad = unreadable_rows(prepared) if data.bad_rows == "stop" else []
    return [bad_row_refusal(where, reason) for where, reason in bad] + list(prepared.problems)


def raise_problems(prepared: Prepared, data: DataSection) -> None:
    found = refusals(prepared, data)
    if found:
        raise TunelabError(found[0])


def prepare_data(data: DataSection, tokenizer: Any, stop_ids: set[int], context: int | None, home: Path,
                 check: bool = False, progress: Progress | None = None) -> Prepared:
    """The data doctor's result for these inputs, from the cache or computed (and stored).

    `check` (tunelab data check) lists every problem and never stops; otherwise unreadable rows follow
    `data.bad_rows` and a problem with the whole set stops with its one-line reason. `progress(stage, done, total)`
    hears how the per-row stages go (present/progress.py StageProgress draws it).
    """
    from tunelab.data.doctor import diagnose
    from tunelab.data.report import build_report
    from tunelab.present.data_report import html_report

    key = cache_key(data, tokenizer_fingerprint(tokenizer), stop_ids, context)
    prepared = lookup(home, key)
    if prepared is None:
        strict = not check and data.bad_rows == "stop"
        diagnosis = diagnose(data, tokenizer, stop_ids, context, strict, key, progress)
        report = build_report(diagnosis, data, key)
        title = f"Data report: {data.train or f'generated {data.generate.task}'}"
        prepared = store(home, key, diagnosis, report, html_report(report, title))
    if not check:
        raise_problems(prepared, data)
    return prepared


def doctor_summary(prepared: Prepared) -> dict[str, Any]:
    """What run.json records about the data doctor's pass."""
    return {"key": prepared.key, "from_cache": prepared.from_cache, "counts": prepared.report["counts"],
            "rejected": prepared.report["rejected_by_stage"]}
