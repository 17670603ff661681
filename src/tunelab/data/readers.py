"""Read rows from JSONL, JSON, CSV/TSV and Parquet files, each row remembering its file and line.

`scan_records` keeps going past a bad line (a `BadRow` with its reason); `read_records` stops at the first.
"""

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


@dataclass(frozen=True)
class BadRow:
    """A line or row that could not be read: where it is, why, and its raw text (cut if very long)."""

    source: str
    line: int
    reason: str
    raw: str | None = None

    @property
    def where(self) -> str:
        return f"{self.source}:{self.line}"


RAW_KEPT_CHARS = 100_000  # rejected.jsonl keeps at most this much of a bad line; the file itself still has it all


def read_records(path: str | Path, file_type: str = "auto", columns: list[str] | None = None,
                 max_row_bytes: int | None = None) -> list[Record]:
    """All rows of a data file. Malformed input stops with file:line; nothing is dropped silently.

    `file_type` auto goes by the extension. `columns` names the columns of a CSV/TSV file that has no header row.
    """
    records = []
    for item in scan_records(path, file_type, columns, max_row_bytes):
        if isinstance(item, BadRow):
            raise TunelabError(f"{item.where}: {item.reason}")
        records.append(item)
    return records


def scan_records(path: str | Path, file_type: str = "auto", columns: list[str] | None = None,
                 max_row_bytes: int | None = None) -> list[Record | BadRow]:
    """Every row of a data file in order, a row that cannot be read as a `BadRow` with its reason.

    A problem with the whole file (missing, unknown type, not JSON at all, no rows) still raises.
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
    items = READERS[kind](path, columns, max_row_bytes)
    if not items:
        raise TunelabError(f"{path}: no rows")
    return items


def raw_text(raw: bytes | str) -> str:
    text = raw.decode("utf-8", errors="replace") if isinstance(raw, bytes) else raw
    return text[:RAW_KEPT_CHARS]


def read_jsonl(path: Path, columns: None = None, max_row_bytes: int | None = None) -> list[Record | BadRow]:
    items: list[Record | BadRow] = []
    with path.open("rb") as handle:
        for number, raw in enumerate(handle, start=1):
            if max_row_bytes and len(raw) > max_row_bytes:
                items.append(BadRow(str(path), number, f"line of {len(raw):,} bytes is over data.max_row_bytes="
                                    f"{max_row_bytes:,}", raw_text(raw)))
                continue
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError as error:
                items.append(BadRow(str(path), number, f"not UTF-8 (byte {error.start + 1} of the line)",
                                    raw_text(raw)))
                continue
            if not text.strip():
                continue
            try:
                value = json.loads(text)
            except json.JSONDecodeError as error:
                items.append(BadRow(str(path), number, f"not valid JSON ({error.msg} at column {error.colno})",
                                    raw_text(text)))
                continue
            if not isinstance(value, dict):
                items.append(BadRow(str(path), number, f"a row must be a JSON object, got {type(value).__name__}",
                                    raw_text(text)))
                continue
            items.append(Record(value, str(path), number))
    return items


def read_json(path: Path, columns: None = None, max_row_bytes: int | None = None) -> list[Record | BadRow]:
    content = path.read_bytes()
    try:
        value = json.loads(content.decode("utf-8"))
    except UnicodeDecodeError as error:  # one JSON document: a bad byte spoils the whole file, so say where it is
        line = content[: error.start].count(b"\n") + 1
        raise TunelabError(f"{path}:{line}: not UTF-8 (byte {error.start + 1} of the file)") from None
    except json.JSONDecodeError as error:
        raise TunelabError(f"{path}:{error.lineno}: not valid JSON ({error.msg} at column {error.colno})") from None
    if isinstance(value, dict) and isinstance(value.get("data"), list):
        value = value["data"]
    if not isinstance(value, list):
        raise TunelabError(f"{path}: a JSON data file holds a list of row objects")
    items: list[Record | BadRow] = []
    for number, row in enumerate(value, start=1):
        if not isinstance(row, dict):
            items.append(BadRow(str(path), number, f"row {number} must be a JSON object, got {type(row).__name__}",
                                raw_text(json.dumps(row, ensure_ascii=False))))
        else:
            items.append(Record(row, str(path), number))
    return items


def read_delimited(path: Path, kind: str, columns: list[str] | None = None,
                   max_row_bytes: int | None = None) -> list[Record | BadRow]:
    """CSV (quoted fields allowed) or TSV (tabs only: quotes are text, as in most TSV exports).

    Bytes that are not UTF-8 are decoded as surrogates (`surrogateescape`) so that only their row is bad.
    """
    options = {"delimiter": "\t", "quoting": csv.QUOTE_NONE} if kind == "tsv" else {}
    if max_row_bytes:
        csv.field_size_limit(max(max_row_bytes, csv.field_size_limit()))
    items: list[Record | BadRow] = []
    try:
        with path.open(newline="", encoding="utf-8", errors="surrogateescape") as handle:
            reader = csv.DictReader(handle, fieldnames=columns, **options)
            for row in reader:
                number = reader.line_num  # the line the row ends on (a quoted field may span lines)
                problem = delimited_row_problem(row, max_row_bytes)
                if problem:
                    shown = {key: value for key, value in row.items() if key is not None}
                    items.append(BadRow(str(path), number, problem, raw_text(repr_row(shown, row.get(None)))))
                else:
                    items.append(Record(dict(row), str(path), number))
    except csv.Error as error:
        raise TunelabError(f"{path}:{reader.line_num}: not valid CSV ({error})") from None
    if reader.fieldnames and any(not_utf8(name) for name in reader.fieldnames):
        raise TunelabError(f"{path}:1: not UTF-8 in the header row")
    return items


def delimited_row_problem(row: dict, max_row_bytes: int | None) -> str | None:
    if None in row:
        return "more values than columns"
    values = [value for value in row.values() if isinstance(value, str)]
    for value in values:
        if not_utf8(value):
            offset = next(i for i, char in enumerate(value) if "\udc80" <= char <= "\udcff")
            return f"not UTF-8 (character {offset + 1} of a field)"
    size = sum(len(value) for value in values)
    if max_row_bytes and size > max_row_bytes:
        return f"row of {size:,} characters is over data.max_row_bytes={max_row_bytes:,}"
    return None


def not_utf8(value: str) -> bool:
    return any("\udc80" <= char <= "\udcff" for char in value)


def repr_row(fields: dict, extra: list | None) -> str:
    text = json.dumps(fields, ensure_ascii=False, default=str)
    text = text.encode("utf-8", errors="surrogateescape").decode("utf-8", errors="replace")
    return text + (f" + extra values {extra!r}" if extra else "")


def read_parquet(path: Path, columns: None = None, max_row_bytes: int | None = None) -> list[Record | BadRow]:
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(path)
    except Exception as error:  # pyarrow raises several unrelated types for a bad file
        raise TunelabError(f"{path}: not a readable Parquet file ({error})") from None
    return [Record(row, str(path), number) for number, row in enumerate(table.to_pylist(), start=1)]


def read_csv(path: Path, columns: list[str] | None = None, max_row_bytes: int | None = None) -> list[Record | BadRow]:
    return read_delimited(path, "csv", columns, max_row_bytes)


def read_tsv(path: Path, columns: list[str] | None = None, max_row_bytes: int | None = None) -> list[Record | BadRow]:
    return read_delimited(path, "tsv", columns, max_row_bytes)


# Each reader takes the path, for delimited files the column names of a header-less file, and the longest row.
READERS: dict[str, Callable[[Path, list[str] | None, int | None], list[Record | BadRow]]] = {
    "jsonl": read_jsonl,
    "json": read_json,
    "csv": read_csv,
    "tsv": read_tsv,
    "parquet": read_parquet,
}
