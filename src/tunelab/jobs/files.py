"""Uploaded files (OpenAI's Files API): each stored as `<serve folder>/files/<file id>[.jsonl]` and listed in the
jobs database's `files` table (db.py). The uploaded filename is only shown, never part of a path.

A `fine-tune` upload is read whole by the data doctor's readers before it is kept: its format is detected as the
doctor detects it, and a line that is not a training row refuses the upload with a 400 naming the line. What was
detected (format, rows) is kept in the row, so the worker reads the file as `data_options` says. A refused upload,
or one over the size limit, leaves nothing behind: the content goes to a temporary file in the same folder, renamed
to its name only once it is accepted.

Errors are `APIError`s in OpenAI's shape (404 for an unknown or deleted id), for the routes and the worker alike.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

from tunelab.errors import TunelabError
from tunelab.jobs.db import connect, new_id, transaction
from tunelab.serve.errors import APIError

FOLDER = "files"
# What a client may upload for; the server writes `fine-tune-results` itself (add_result_file).
PURPOSES = ("fine-tune", "batch", "assistants", "user_data", "evals", "vision")
RESULTS = "fine-tune-results"
MAX_LIST = 10_000  # OpenAI's largest page (and its default)
CHUNK = 1 << 20
# How the data doctor reads a stored format back (data.fields): OpenAI's reinforcement rows keep the prompt in
# `messages`, which the doctor's `prompt` format otherwise takes from a `prompt` field.
FIELDS = {"prompt": {"prompt": "messages"}}


@dataclass(frozen=True)
class FileRow:
    id: str
    created_at: int
    filename: str  # as uploaded: shown, never a path
    purpose: str
    bytes: int
    path: str  # relative to the serve folder
    format: str | None  # fine-tune files: the data doctor's format (messages, openai_preference, prompt, ...)
    rows: int | None  # fine-tune files: rows read
    deleted: bool = False


@dataclass(frozen=True)
class FilePage:
    rows: list[FileRow]
    has_more: bool


def save_upload(serve_dir: Path, filename: str, purpose: str, content: bytes | BinaryIO,
                limit_bytes: int) -> FileRow:
    """Store an upload and list it; refused (400, 413) with nothing stored where it does not pass."""
    if purpose not in PURPOSES:
        raise APIError(400, f"purpose '{purpose}' is not one of {', '.join(PURPOSES)}", param="purpose")
    if purpose == "fine-tune" and not filename.lower().endswith(".jsonl"):
        raise APIError(400, f"a fine-tune file must be JSONL (.jsonl), got '{filename}'", param="file",
                       code="invalid_file_format")
    return store(serve_dir, filename, purpose, content, limit_bytes)


def add_result_file(serve_dir: Path, filename: str, content: bytes) -> FileRow:
    """A file the server made for a job (OpenAI's `fine-tune-results`: its step metrics), listed like uploads."""
    return store(serve_dir, filename, RESULTS, content, len(content))


def store(serve_dir: Path, filename: str, purpose: str, content: bytes | BinaryIO, limit_bytes: int) -> FileRow:
    file_id = new_id("file-")
    # The suffix is chosen here, never taken from the filename: the stored path is the id and nothing else.
    relative = f"{FOLDER}/{file_id}{'.jsonl' if filename.lower().endswith('.jsonl') else ''}"
    final = Path(serve_dir) / relative
    final.parent.mkdir(parents=True, exist_ok=True)
    temporary = final.with_name(f".{final.name}.tmp")
    try:
        size = copy_limited(content, temporary, limit_bytes)
        fmt, rows = check_training_file(temporary) if purpose == "fine-tune" else (None, None)
        os.replace(temporary, final)
        row = FileRow(file_id, int(time.time()), filename, purpose, size, relative, fmt, rows)
        insert(serve_dir, row)
    except BaseException:
        temporary.unlink(missing_ok=True)
        final.unlink(missing_ok=True)
        raise
    return row


def copy_limited(content: bytes | BinaryIO, destination: Path, limit_bytes: int) -> int:
    """Write `content` to `destination`, stopping with 413 as soon as it is over `limit_bytes`."""
    if isinstance(content, bytes):
        if len(content) > limit_bytes:
            raise too_large(limit_bytes)
        destination.write_bytes(content)
        return len(content)
    size = 0
    with destination.open("wb") as out:
        while block := content.read(CHUNK):
            size += len(block)
            if size > limit_bytes:
                raise too_large(limit_bytes)
            out.write(block)
    return size


def too_large(limit_bytes: int) -> APIError:
    return APIError(413, f"the file is over this server's upload limit of {limit_bytes} bytes", param="file")


def check_training_file(path: Path) -> tuple[str, int]:
    """The data doctor's format and row count of a fine-tune upload; 400 naming the first line that is not a row.

    OpenAI's reinforcement rows (`messages` that end before any assistant answer, plus what the grader reads) are
    `prompt` rows: auto-detection would take them as chat rows with nothing to learn from."""
    from tunelab.data.formats import majority_format, parse_items
    from tunelab.data.readers import Record, scan_records

    try:
        items = scan_records(path, "jsonl")
    except TunelabError:  # the only whole-file problem left for a JSONL file that exists: no rows
        raise invalid_file("the file holds no rows") from None
    records = [item for item in items if isinstance(item, Record)]
    try:
        fmt = majority_format(records, {}) if records else "messages"
    except TunelabError:
        found = ", ".join(sorted(records[0].fields)) or "none"
        raise invalid_file(f"line {records[0].line}: cannot tell the format from the fields ({found}); expected "
                           "OpenAI's chat (messages), preference (input, preferred_output, non_preferred_output) "
                           "or reinforcement (messages without the answer) rows") from None
    if fmt == "messages" and not any(has_assistant(record.fields) for record in records):
        fmt = "prompt"
    examples, bad = parse_items(items, fmt, FIELDS.get(fmt, {}), None)
    if bad:
        first = min(bad, key=lambda row: row.line)
        raise invalid_file(f"line {first.line}: {first.reason}")
    return fmt, len(examples)


def has_assistant(fields: dict[str, Any]) -> bool:
    messages = fields.get("messages")
    return isinstance(messages, list) and any(isinstance(m, dict) and m.get("role") == "assistant" for m in messages)


def invalid_file(message: str) -> APIError:
    return APIError(400, message, param="file", code="invalid_file_format")


def insert(serve_dir: Path, row: FileRow) -> None:
    connection = connect(serve_dir)
    try:
        with transaction(connection):
            connection.execute(
                "INSERT INTO files (id, created_at, filename, purpose, bytes, path, format, rows) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (row.id, row.created_at, row.filename, row.purpose, row.bytes, row.path, row.format, row.rows))
    finally:
        connection.close()


def get_file(serve_dir: Path, file_id: str) -> FileRow:
    """The row of a stored file; 404 where the id is unknown or the file was deleted."""
    connection = connect(serve_dir)
    try:
        found = connection.execute("SELECT * FROM files WHERE id = ? AND deleted = 0", (file_id,)).fetchone()
    finally:
        connection.close()
    if found is None:
        raise not_found(file_id)
    return to_row(found)


def file_path(serve_dir: Path, file_id: str) -> Path:
    """Where a stored file's content is (for the worker); 404 where the id is unknown or deleted."""
    return Path(serve_dir) / get_file(serve_dir, file_id).path


def data_options(serve_dir: Path, file_id: str) -> dict[str, Any]:
    """How a recipe's `data` section reads a fine-tune file: {"train": path, "format": ..., "fields": {...}}
    (set `validation` instead of `train` for a validation file)."""
    row = get_file(serve_dir, file_id)
    if row.format is None:
        raise APIError(400, f"file '{file_id}' was uploaded for '{row.purpose}', not fine-tune", param="file",
                       code="invalid_file_purpose")
    return {"train": str(Path(serve_dir) / row.path), "format": row.format, "fields": FIELDS.get(row.format, {})}


def list_files(serve_dir: Path, purpose: str | None = None, after: str | None = None, limit: int = MAX_LIST,
               order: str = "desc") -> FilePage:
    """Files not deleted, newest first (`desc`) or oldest first, from the one after `after` (an id)."""
    descending = order == "desc"
    connection = connect(serve_dir)
    try:
        where, values = ["deleted = 0"], []
        if purpose is not None:
            where.append("purpose = ?")
            values.append(purpose)
        if after is not None:
            # Deleted rows stay (deleted = 1), so a cursor whose file was deleted meanwhile still pages on.
            cursor = connection.execute("SELECT rowid FROM files WHERE id = ?", (after,)).fetchone()
            if cursor is None:
                raise APIError(400, f"after: no file '{after}'", param="after")
            where.append(f"rowid {'<' if descending else '>'} ?")
            values.append(cursor[0])
        # rowid is the insertion order (rows are never removed, so it is never reused): created_at to the second
        # would tie.
        found = connection.execute(
            f"SELECT * FROM files WHERE {' AND '.join(where)} ORDER BY rowid {'DESC' if descending else 'ASC'} "
            "LIMIT ?", (*values, limit + 1)).fetchall()
    finally:
        connection.close()
    return FilePage([to_row(row) for row in found[:limit]], len(found) > limit)


def delete_file(serve_dir: Path, file_id: str) -> FileRow:
    """Remove a file's content; its row stays, marked deleted, so the id is 404 from now on."""
    row = get_file(serve_dir, file_id)
    connection = connect(serve_dir)
    try:
        with transaction(connection):
            changed = connection.execute("UPDATE files SET deleted = 1 WHERE id = ? AND deleted = 0",
                                         (file_id,)).rowcount
    finally:
        connection.close()
    if not changed:  # deleted by another request since get_file
        raise not_found(file_id)
    (Path(serve_dir) / row.path).unlink(missing_ok=True)
    return row


def not_found(file_id: str) -> APIError:
    return APIError(404, f"No such File object: {file_id}", param="id", code="file_not_found")


def to_row(found: Any) -> FileRow:
    return FileRow(found["id"], found["created_at"], found["filename"], found["purpose"], found["bytes"],
                   found["path"], found["format"], found["rows"], bool(found["deleted"]))
