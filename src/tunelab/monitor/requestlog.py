"""The request log: one row per API request in an SQLite database in the serve folder.

Writes go through one writer thread (SQLite allows one writer at a time; the server's threads never wait on the
disk), in WAL mode so `tunelab monitor` can read while the server writes.
"""

from __future__ import annotations

import queue
import sqlite3
import threading
from pathlib import Path
from typing import Any

DATABASE = "requests.sqlite"
COLUMNS = {
    "ts": "REAL NOT NULL",  # unix time the request arrived
    "request_id": "TEXT",
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
    "prompt": "TEXT",  # only with --log-content
    "output": "TEXT",  # only with --log-content
}
SCHEMA = (f"CREATE TABLE IF NOT EXISTS requests (id INTEGER PRIMARY KEY, "
          f"{', '.join(f'{name} {kind}' for name, kind in COLUMNS.items())})")


def database_path(serve_dir: Path) -> Path:
    return Path(serve_dir) / DATABASE


def connect(path: Path) -> sqlite3.Connection:
    connection = sqlite3.connect(str(path), check_same_thread=False)
    connection.execute("PRAGMA journal_mode=WAL")
    connection.execute(SCHEMA)
    connection.execute("CREATE INDEX IF NOT EXISTS requests_ts ON requests (ts)")
    connection.commit()
    return connection


class RequestLog:
    def __init__(self, serve_dir: Path):
        Path(serve_dir).mkdir(parents=True, exist_ok=True)
        self.path = database_path(serve_dir)
        connect(self.path).close()  # create it now, so a bad folder fails at start, not at the first request
        self._queue: queue.SimpleQueue = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._write, name="tunelab-request-log", daemon=True)
        self._thread.start()

    def append(self, entry: dict[str, Any]) -> None:
        self._queue.put({name: entry.get(name) for name in COLUMNS})

    def close(self) -> None:
        """Write what is queued, then stop."""
        self._queue.put(None)
        self._thread.join()

    def _write(self) -> None:
        connection = connect(self.path)
        insert = f"INSERT INTO requests ({', '.join(COLUMNS)}) VALUES ({', '.join('?' for _ in COLUMNS)})"
        while True:
            entry = self._queue.get()
            batch = [entry]
            while entry is not None and not self._queue.empty():
                entry = self._queue.get()
                batch.append(entry)
            rows = [tuple(item[name] for name in COLUMNS) for item in batch if item is not None]
            if rows:
                connection.executemany(insert, rows)
                connection.commit()
            if batch[-1] is None:
                connection.close()
                return
