"""Read rows from JSONL, JSON, CSV and Parquet files, each row remembering its file and line."""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from tunelab.errors import TunelabError


@dataclass(frozen=True)
class Record:
    fields: dict[str, Any]
    source: str
    line: int  # 1-based line in the file (JSONL, CSV) or 1-based row number (JSON, Parquet)

    @property
    def where(self) -> str:
        return f"{self.source}:{self.line}"


def read_records(path: str | Path, file_type: str = "auto", columns: list[str] | None = None) -> list[Record]:
    """All rows of a data file. Malformed input stops with file:line; nothing is dropped silently.

    `file_type` auto goes by the extension. `columns` names the columns of a CSV/TSV file that has no header row.
    """
    path = Path(path)
    if not path.is_file():
        raise TunelabError(f"{path}: data file not found")
    kind = path.suffix.lower().lstrip(".") if file_type == "auto" else file_type
    if kind not in READERS:
        known = ", ".join(f".{name}" for name in READERS)
        raise TunelabError(f"{path}: unsupported file type '{path.suffix}' (use {known}, or set data.file_type)")
    if columns and kind not in ("csv", "tsv"):
        raise TunelabError(f"{path}: data.columns applies to csv and tsv files only")
    records = READERS[kind](path, columns)
    if not records:
        raise TunelabError(f"{path}: no rows")
    return records


def read_jsonl(path: Path, columns: None = None) -> list[Record]:
    records = []
    with path.open("rb") as handle:
        for number, raw in enumerate(handle, start=1):
            text = decode_line(raw, path, number)
            if not text.strip():
                continue
            try:
                value = json.loads(text)
            except json.JSONDecodeError as error:
                raise TunelabError(f"{path}:{number}: not valid JSON ({error.msg} at column {error.colno})") from None
            if not isinstance(value, dict):
                raise TunelabError(f"{path}:{number}: a row must be a JSON object, got {type(value).__name__}")
            records.append(Record(value, str(path), number))
    return records


def decode_line(raw: bytes, path: Path, number: int) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as error:
        raise TunelabError(f"{path}:{number}: not UTF-8 (byte {error.start + 1} of the line)") from None


def read_json(path: Path, columns: None = None) -> list[Record]:
    try:
        value = json.loads(path.read_bytes().decode("utf-8"))
    except UnicodeDecodeError as error:
        raise TunelabError(f"{path}: not UTF-8 (byte {error.start + 1})") from None
    except json.JSONDecodeError as error:
        raise TunelabError(f"{path}:{error.lineno}: not valid JSON ({error.msg} at column {error.colno})") from None
    if isinstance(value, dict) and isinstance(value.get("data"), list):
        value = value["data"]
    if not isinstance(value, list):
        raise TunelabError(f"{path}: a JSON data file holds a list of row objects")
    records = []
    for number, row in enumerate(value, start=1):
        if not isinstance(row, dict):
            raise TunelabError(f"{path}: row {number} must be a JSON object, got {type(row).__name__}")
        records.append(Record(row, str(path), number))
    return records


def read_delimited(path: Path, kind: str, columns: list[str] | None = None) -> list[Record]:
    """CSV (quoted fields allowed) or TSV (tabs only: quotes are text, as in most TSV exports)."""
    options = {"delimiter": "\t", "quoting": csv.QUOTE_NONE} if kind == "tsv" else {}
    try:
        with path.open(newline="", encoding="utf-8") as handle:
            reader = csv.DictReader(handle, fieldnames=columns, **options)
            records = []
            for row in reader:
                if None in row:
                    raise TunelabError(f"{path}:{reader.line_num}: more values than columns")
                records.append(Record(dict(row), str(path), reader.line_num))
            return records
    except UnicodeDecodeError as error:
        raise TunelabError(f"{path}: not UTF-8 (byte {error.start + 1})") from None
    except csv.Error as error:
        raise TunelabError(f"{path}: not valid CSV ({error})") from None


def read_parquet(path: Path, columns: None = None) -> list[Record]:
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(path)
    except Exception as error:  # pyarrow raises several unrelated types for a bad file
        raise TunelabError(f"{path}: not a readable Parquet file ({error})") from None
    return [Record(row, str(path), number) for number, row in enumerate(table.to_pylist(), start=1)]


def read_csv(path: Path, columns: list[str] | None = None) -> list[Record]:
    return read_delimited(path, "csv", columns)


def read_tsv(path: Path, columns: list[str] | None = None) -> list[Record]:
    return read_delimited(path, "tsv", columns)


# Each reader takes the path and, for delimited files, the column names of a header-less file.
READERS: dict[str, Callable[[Path, list[str] | None], list[Record]]] = {
    "jsonl": read_jsonl,
    "json": read_json,
    "csv": read_csv,
    "tsv": read_tsv,
    "parquet": read_parquet,
}
