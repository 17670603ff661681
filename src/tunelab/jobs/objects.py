"""Rows of the jobs database as OpenAI's objects (openai-python's types/fine_tuning): the job, its events and its
checkpoints, and the list envelope the client's cursor pages read."""

from __future__ import annotations

import json
import sqlite3
from typing import Any

ORGANIZATION = "org-tunelab"  # OpenAI's field is required; a self-hosted server has one owner


def job_object(row: sqlite3.Row) -> dict[str, Any]:
    request = json.loads(row["request"])
    method = request.get("method") or {"type": "supervised"}
    hyperparameters = json.loads(row["hyperparameters"])
    kind = method["type"]
    method = {**method, kind: {**(method.get(kind) or {}), "hyperparameters": hyperparameters}}
    return {
        "id": row["id"],
        "created_at": row["created_at"],
        "error": json.loads(row["error"]) if row["error"] else None,
        "fine_tuned_model": row["fine_tuned_model"],
        "finished_at": row["finished_at"],
        "hyperparameters": {key: hyperparameters[key] for key in ("batch_size", "learning_rate_multiplier",
                                                                  "n_epochs")},
        "model": row["model"],
        "object": "fine_tuning.job",
        "organization_id": ORGANIZATION,
        "result_files": json.loads(row["result_files"]),
        "seed": row["seed"],
        "status": row["status"],
        "trained_tokens": row["trained_tokens"],
        "training_file": row["training_file"],
        "validation_file": row["validation_file"],
        "estimated_finish": row["estimated_finish"] if row["status"] == "running" else None,
        "integrations": request.get("integrations"),
        "metadata": request.get("metadata"),
        "method": method,
        "suffix": row["suffix"],
        # tunelab's: the gate's verdict on the evaluation against the base (and, for a retrain, its promotion), the
        # pause or cancel asked for, and what a retrain was made from
        "tunelab": {"verdict": json.loads(row["verdict"]) if row["verdict"] else None,
                    "requested": row["requested"], "retrain": request.get("retrain")},
    }


def event_object(row: sqlite3.Row) -> dict[str, Any]:
    return {"id": row["id"], "created_at": row["created_at"], "level": row["level"], "message": row["message"],
            "object": "fine_tuning.job.event", "data": json.loads(row["data"]) if row["data"] else None,
            "type": row["type"]}


def checkpoint_object(row: sqlite3.Row) -> dict[str, Any]:
    return {"id": row["id"], "created_at": row["created_at"],
            "fine_tuned_model_checkpoint": row["fine_tuned_model_checkpoint"], "fine_tuning_job_id": row["job_id"],
            "metrics": json.loads(row["metrics"]), "object": "fine_tuning.job.checkpoint", "step_number": row["step"]}


def page_object(data: list[dict[str, Any]], has_more: bool) -> dict[str, Any]:
    return {"object": "list", "data": data, "has_more": has_more,
            "first_id": data[0]["id"] if data else None, "last_id": data[-1]["id"] if data else None}
