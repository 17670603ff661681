"""From the recipe's `data` section to tokenized splits, with every file hashed and every row accounted for."""

from __future__ import annotations

import hashlib
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from tunelab.config.schema import DataSection
from tunelab.data.formats import Example, to_examples
from tunelab.data.readers import Record, read_records
from tunelab.data.split import SPLITS, Splits, check_no_overlap, split_examples
from tunelab.data.synthetic import generate_rows
from tunelab.data.templates import Encoded, encode_example
from tunelab.files import jsonl_text, read_jsonl, sha256_file, write_jsonl, write_text_atomic


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


def load_data(data: DataSection) -> LoadedData:
    """Read (or generate) the data, split what was not given as files, refuse held-out rows seen in train.

    Nothing is written here, so bad input stops the run before its folder is touched.
    """
    files, generated_rows = [], []
    if data.generate is not None:
        generated_rows = generate_rows(data.generate.task, data.generate.rows, data.generate.seed)
        source = f"generated:{data.generate.task}"
        records = [Record(row, source, number) for number, row in enumerate(generated_rows, start=1)]
        train_examples = to_examples(records, data.format, data.fields, data.system_prompt)
        digest = hashlib.sha256(jsonl_text(generated_rows).encode("utf-8")).hexdigest()
        files.append(DataFile("generated", GENERATED_FILE, digest, len(generated_rows)))
    else:
        train_examples = read_examples(Path(data.train), data)
        files.append(describe_file("train", Path(data.train), len(train_examples)))
    given = {}
    for role in ("validation", "test"):
        path = getattr(data, role)
        if path:
            given[role] = read_examples(Path(path), data)
            files.append(describe_file(role, Path(path), len(given[role])))
    splits = split_examples(
        train_examples,
        validation=0 if "validation" in given else data.split.validation,
        test=0 if "test" in given else data.split.test,
        seed=data.split.seed,
    )
    for role, examples in given.items():
        setattr(splits, role, examples)
    check_no_overlap(splits)
    return LoadedData(splits, files, generated_rows)


def read_examples(path: Path, data: DataSection) -> list[Example]:
    records = read_records(path, data.file_type, data.columns)
    return to_examples(records, data.format, data.fields, data.system_prompt)


def describe_file(role: str, path: Path, rows: int) -> DataFile:
    return DataFile(role, str(path), sha256_file(path), rows)


def write_data(loaded: LoadedData, data_dir: Path) -> None:
    """The splits exactly as used (and the generated source, if any) into the run's data folder."""
    if loaded.generated_rows:
        write_text_atomic(data_dir / GENERATED_FILE, jsonl_text(loaded.generated_rows))
    for name, examples in loaded.splits.items():
        write_jsonl(data_dir / f"{name}.jsonl", [example.to_json() for example in examples])


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
