"""The data of a run: its input files (hashed), its splits as saved in the run folder, and their token counts.

The data doctor (doctor.py) makes the splits; this module holds what it hands on and how a run folder keeps it."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from tunelab.data.formats import Example
from tunelab.data.split import SPLITS, Splits
from tunelab.data.templates import Encoded, encode_example
from tunelab.files import read_jsonl, sha256_file


@dataclass(frozen=True)
class DataFile:
    role: str  # train / validation / test / generated
    path: str
    sha256: str
    rows: int


@dataclass
class LoadedData:
    splits: Splits
    files: list[DataFile]
    generated_rows: list[dict[str, Any]] = field(default_factory=list)  # written to the run folder when generated


GENERATED_FILE = "generated.jsonl"


def describe_file(role: str, path: Path, rows: int) -> DataFile:
    return DataFile(role, str(path), sha256_file(path), rows)


def read_splits(data_dir: Path) -> Splits:
    loaded = {}
    for name in SPLITS:
        path = data_dir / f"{name}.jsonl"
        loaded[name] = [Example.from_json(row) for row in read_jsonl(path)] if path.exists() else []
    return Splits(**loaded)


@dataclass
class TokenizedSplit:
    rows: list[Encoded] = field(default_factory=list)
    kept: int = 0
    dropped_overlong: int = 0
    truncated: int = 0
    tokens: int = 0
    label_tokens: int = 0

    def counts(self) -> dict[str, Any]:
        summary = asdict(self)
        summary.pop("rows")
        return summary


def tokenize_examples(
    examples: list[Example], tokenizer: Any, stop_ids: set[int], max_length: int, overlong: str
) -> TokenizedSplit:
    """Encode rows; rows over `max_length` are dropped or cut (per `overlong`), and counted either way."""
    result = TokenizedSplit()
    for example in examples:
        encoded = encode_example(tokenizer, example, stop_ids)
        if len(encoded.input_ids) > max_length:
            if overlong == "drop":
                result.dropped_overlong += 1
                continue
            encoded = Encoded(encoded.input_ids[:max_length], encoded.labels[:max_length])
            if encoded.label_count == 0:  # the cut removed every answer token: nothing left to learn
                result.dropped_overlong += 1
                continue
            result.truncated += 1
        result.rows.append(encoded)
        result.kept += 1
        result.tokens += len(encoded.input_ids)
        result.label_tokens += encoded.label_count
    return result
