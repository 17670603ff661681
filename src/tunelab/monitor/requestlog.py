"""The request log: one row per API request in an SQLite database in the serve folder, and the feedback clients
give on the answers (monitor/feedback.py) in a second table of the same database.

Writes go through one writer thread (SQLite allows one writer at a time; the server's threads never wait on the
disk), in WAL mode so `tunelab monitor` can read while the server writes. Because the writes are late (a request
is logged once its last byte is sent, then queued), a reader that must see a row the client already knows about
(feedback naming a completion id it was just given) asks `wait_written`: the service announces each id with
`expect` when it makes it, and the writer marks it written once its row is committed.
"""

from __future__ import annotations

import queue
import sqlite3
import threading
from pathlib import Path
from typing import Any

from tunelab.monitor.feedback import FEEDBACK_COLUMNS, FEEDBACK_SCHEMA

DATABASE = "requests.sqlite"
COLUMNS = {
    "ts": "REAL NOT NULL",  # unix time the request arrived
    "request_id": "TEXT",  # the chat.completion / text_completion id the client got (chatcmpl-..., cmpl-...)
    "endpoint": "TEXT NOT NULL",
    "model": "TEXT",  # the model id asked for
    "adapter": "TEXT",  # the run folder of the adapter that answered; NULL for the base model
    "status": "INTEGER NOT NULL",
    "latency_ms": "REAL NOT NULL",  # arrival to the last byte sent
    "queue_ms": "REAL",  # waiting for the engine
    "prompt_tokens": "INTEGER",
    "completion_tokens": "INTEGER",
    "stream": "INTEGER",
    "error": "TEXT",
    "prompt": "TEXT",  # only with --log-content: chat messages, or completion prompts, as JSON
    "output": "TEXT",  # only with --log-content: each choice's text, as a JSON list
}
SCHEMA = (f"CREATE TABLE IF NOT EXISTS requests (id INTEGER PRIMARY KEY, "
          f"{', '.join(f'{name} {kind}' for name, kind in COLUMNS.items())})")
# table -> (its columns, the column whose value `expect` / `wait_written` track)
TABLES = {"requests": (COLUMNS, "request_id"), "feedback": (FEEDBACK_COLUMNS, "id")}


def database_path(serve_dir: Path) -> Path:
    return Path(serve_dir) / DATABASE


def connect(path: Path) -> sqlite3.Connection:
    connection = sqlite3.connect(str(path), check_same_thread=False)
    connection.execute("PRAGMA journal_mode=WAL")
    connection.execute(SCHEMA)
    connection.execute("CREATE INDEX IF NOT EXISTS requests_ts ON requests (ts)")
    connection.execute("CREATE INDEX IF NOT EXISTS requests_request_id ON requests (request_id)")
    connection.execute(FEEDBACK_SCHEMA)
    connection.execute("CREATE INDEX IF NOT EXISTS feedback_completion ON feedback (completion_id)")
    connection.commit()
    return connection


def open_read_only(path: Path) -> sqlite3.Connection:
    return sqlite3.connect(f"file:{path}?mode=ro", uri=True)


class RequestLog:
    def __init__(self, serve_dir: Path):
        Path(serve_dir).mkdir(parents=True, exist_ok=True)
        self.path = database_path(serve_dir)
        connect(self.path).close()  # create it now, so a bad folder fails at start, not at the first request
        self._queue: queue.SimpleQueue = queue.SimpleQueue()
        self._unwritten: set[str] = set()  # ids announced by `expect` whose rows are not committed yet
        self._written = threading.Condition()
        self._thread = threading.Thread(target=self._write, name="tunelab-request-log", daemon=True)
        self._thread.start()

    def append(self, entry: dict[str, Any]) -> None:
        self._queue.put(("requests", {name: entry.get(name) for name in COLUMNS}))

    def add_feedback(self, row: dict[str, Any]) -> None:
        self._queue.put(("feedback", {name: row.get(name) for name in FEEDBACK_COLUMNS}))

    def expect(self, key: str) -> None:
        """`key` (a request id, a feedback id) will be written: until it is, `wait_written(key)` waits."""
        with self._written:
            self._unwritten.add(key)

    def wait_written(self, key: str, timeout: float) -> bool:
        """Whether `key`'s row is in the database (or was never announced) within `timeout` seconds."""
        with self._written:
            return self._written.wait_for(lambda: key not in self._unwritten, timeout)

    def close(self) -> None:
        """Write what is queued, then stop."""
        self._queue.put(None)
        self._thread.join()

    def _write(self) -> None:
        connection = connect(self.path)
        inserts = {table: f"INSERT INTO {table} ({', '.join(columns)}) VALUES ({', '.join('?' for _ in columns)})"
                   for table, (columns, _) in TABLES.items()}
        while True:
            item = self._queue.get()
            batch = [item]
            while item is not None and not self._queue.empty():
                item = self._queue.get()
                batch.append(item)
            entries = [entry for entry in batch if entry is not None]
            for table, (columns, _) in TABLES.items():
                rows = [tuple(values[name] for name in columns) for name, values in entries if name == table]
                if rows:
                    connection.executemany(inserts[table], rows)
            if entries:
                connection.commit()
                self._mark_written(entries)
            if batch[-1] is None:
                connection.close()
                return

    def _mark_written(self, entries: list[tuple[str, dict[str, Any]]]) -> None:
        with self._written:
            self._unwritten.difference_update(values[TABLES[table][1]] for table, values in entries)
            self._written.notify_all()
