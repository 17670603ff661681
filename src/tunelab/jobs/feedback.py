"""A served model's feedback as an uploaded fine-tune file: `tunelab feedback export` (monitor/feedback_export.py:
the data doctor's cleaning, dedup, PII scrub and contamination check against the serving run's test split) written
to a private temporary file, then stored and checked as any upload is (files.py)."""

from __future__ import annotations

import secrets
from pathlib import Path

from tunelab.errors import TunelabError
from tunelab.jobs.files import FileRow, save_upload
from tunelab.serve.errors import APIError


def feedback_upload(serve_dir: Path, model: str, fmt: str, limit_bytes: int) -> FileRow:
    from tunelab.monitor.feedback_export import export_feedback

    scratch = Path(serve_dir) / "files" / f".feedback-{secrets.token_hex(8)}.jsonl"
    scratch.parent.mkdir(parents=True, exist_ok=True)
    try:
        exported = export_feedback(serve_dir, model, fmt, scratch)
        if not exported.rows:
            raise TunelabError(f"model '{model}': its feedback gave no {fmt} rows once the data doctor was done "
                               f"({exported.feedback} feedback read)")
        with scratch.open("rb") as content:
            return save_upload(serve_dir, f"feedback-{model.replace(':', '_')}-{fmt}.jsonl", "fine-tune", content,
                               limit_bytes)
    except TunelabError as error:
        raise APIError(400, str(error), param="model") from None
    finally:
        scratch.unlink(missing_ok=True)
