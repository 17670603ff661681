"""Small file helpers used across tunelab: content hashes and writes that never leave half a file behind."""

from __future__ import annotations

import errno
import hashlib
import json
import os
import shutil
from pathlib import Path
from typing import Any


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def write_text_atomic(path: str | Path, text: str) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.tmp")
    try:
        temporary.write_text(text, encoding="utf-8")
        os.replace(temporary, path)
    except OSError as error:
        temporary.unlink(missing_ok=True)  # no half-written file left behind
        if error.filename is None:  # a failed write() names no file: name the one being written
            raise OSError(error.errno, error.strerror, str(path)) from error
        raise


def copy_file(source: str | Path, destination: str | Path) -> None:
    """shutil.copyfile whose errors about the destination name it: on a full disk copyfile names the source
    (sendfile) or no file at all (its fallback write), never where it could not write."""
    try:
        shutil.copyfile(source, destination)
    except OSError as error:
        if error.errno in (errno.ENOSPC, errno.EDQUOT, errno.EROFS) or error.filename is None:
            raise OSError(error.errno, error.strerror, str(destination)) from error
        raise


def write_json(path: str | Path, value: Any) -> None:
    write_text_atomic(path, json.dumps(value, indent=2, ensure_ascii=False) + "\n")


def read_json(path: str | Path) -> Any:
    return json.loads(Path(path).read_text(encoding="utf-8"))


def jsonl_text(rows: list[dict[str, Any]]) -> str:
    return "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows)


def write_jsonl(path: str | Path, rows: list[dict[str, Any]]) -> None:
    write_text_atomic(path, jsonl_text(rows))


def read_jsonl(path: str | Path) -> list[dict[str, Any]]:
    with open(path, encoding="utf-8") as handle:
        return [json.loads(line) for line in handle if line.strip()]
