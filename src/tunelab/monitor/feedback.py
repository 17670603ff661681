"""Feedback on served answers: the `feedback` table of the request log's database, and its reads.

One row per `POST /v1/feedback`: a thumb (up/down), a corrected answer or a preferred alternative, with an optional
comment, on one choice of a logged completion. Written by the request log's writer thread
(requestlog.RequestLog.add_feedback: one writer for the database); read by the feedback route (the completion a
feedback names) and by `tunelab feedback export` (feedback with the prompt and output it judged). API keys are not
stored: the log never holds a secret.
"""

from __future__ import annotations

import json
import sqlite3
from dataclasses import dataclass

FEEDBACK_COLUMNS = {
    "id": "TEXT NOT NULL UNIQUE",  # fb-...
    "ts": "REAL NOT NULL",  # unix time the feedback arrived
    "completion_id": "TEXT NOT NULL",  # the requests row's request_id (chatcmpl-..., cmpl-...)
    "choice": "INTEGER NOT NULL",  # which choice of the completion was judged (0 unless n > 1 or several prompts)
    "model": "TEXT",  # the model id that answered
    "rating": "TEXT",  # up / down / NULL
    "correction": "TEXT",  # the answer it should have given
    "preferred": "TEXT",  # a better alternative answer
    "comment": "TEXT",
}
FEEDBACK_SCHEMA = (f"CREATE TABLE IF NOT EXISTS feedback (seq INTEGER PRIMARY KEY, "
                   f"{', '.join(f'{name} {kind}' for name, kind in FEEDBACK_COLUMNS.items())})")


@dataclass(frozen=True)
class LoggedCompletion:
    """A chat or completions request as the request log holds it."""

    request_id: str
    endpoint: str
    model: str | None
    adapter: str | None  # the run folder that answered; None for the base model
    status: int
    error: str | None
    prompt: str | None  # JSON; None when content logging was off
    output: str | None

    @property
    def has_content(self) -> bool:
        return self.prompt is not None and self.output is not None

    @property
    def succeeded(self) -> bool:
        return self.status == 200 and self.error is None

    def outputs(self) -> list[str]:
        return json.loads(self.output) if self.output is not None else []

    def prompt_messages(self, choice: int) -> list[dict[str, str]]:
        """The conversation choice `choice` answered. A completions prompt is text a model continued; as training
        data it becomes one user message, as tunelab's prompt/completion rows do."""
        prompt = json.loads(self.prompt)
        if self.endpoint.endswith("/chat/completions"):
            return prompt
        per_prompt = max(1, len(self.outputs()) // max(1, len(prompt)))  # the request's n
        return [{"role": "user", "content": prompt[choice // per_prompt]}]


@dataclass(frozen=True)
class FeedbackRecord:
    id: str
    ts: float
    completion_id: str
    choice: int
    model: str | None
    rating: str | None
    correction: str | None
    preferred: str | None
    comment: str | None


@dataclass(frozen=True)
class JudgedAnswer:
    """A feedback and the completion it is about."""

    feedback: FeedbackRecord
    completion: LoggedCompletion

    @property
    def messages(self) -> list[dict[str, str]]:
        return self.completion.prompt_messages(self.feedback.choice)

    @property
    def original(self) -> str:
        return self.completion.outputs()[self.feedback.choice]


COMPLETION_FIELDS = "request_id, endpoint, model, adapter, status, error, prompt, output"


def find_completion(connection: sqlite3.Connection, completion_id: str) -> LoggedCompletion | None:
    row = connection.execute(f"SELECT {COMPLETION_FIELDS} FROM requests WHERE request_id = ? ORDER BY id DESC "
                             "LIMIT 1", (completion_id,)).fetchone()
    return None if row is None else LoggedCompletion(*row)


def logged_models(connection: sqlite3.Connection) -> list[str]:
    """The model ids that answered chat or completions requests, in the order first seen."""
    rows = connection.execute("SELECT model FROM requests WHERE request_id IS NOT NULL AND model IS NOT NULL "
                              "GROUP BY model ORDER BY MIN(id)").fetchall()
    return [row[0] for row in rows]


def judged_answers(connection: sqlite3.Connection, model: str) -> list[JudgedAnswer]:
    """Every feedback on `model`'s logged completions, oldest first, with the completion it judged."""
    columns = ", ".join(f"f.{name}" for name in FEEDBACK_COLUMNS)
    completion = ", ".join(f"r.{name}" for name in COMPLETION_FIELDS.split(", "))
    rows = connection.execute(
        f"SELECT {columns}, {completion} FROM feedback f JOIN requests r ON r.request_id = f.completion_id "
        "WHERE r.model = ? AND r.prompt IS NOT NULL AND r.output IS NOT NULL ORDER BY f.ts, f.seq",
        (model,)).fetchall()
    size = len(FEEDBACK_COLUMNS)
    return [JudgedAnswer(FeedbackRecord(*row[:size]), LoggedCompletion(*row[size:])) for row in rows]

