"""The scores the server's monitor computed, tick after tick: `monitor.sqlite` in the serve folder, so the dashboard
plots drift over time (and it outlives a restart). Written by the monitor thread only (monitor/watch.py); read by
the dashboard (serve/ui/data.py)."""

from __future__ import annotations

import sqlite3
import time
from contextlib import closing
from pathlib import Path

from tunelab.monitor.scores import Point, Score, Series

DATABASE = "monitor.sqlite"
COLUMNS = ("ts", "model", "version", "kind", "name", "value", "low", "high", "threshold", "flag_when", "count")
SCHEMA = ("CREATE TABLE IF NOT EXISTS scores (ts REAL NOT NULL, model TEXT NOT NULL, version TEXT, kind TEXT NOT "
          "NULL, name TEXT NOT NULL, value REAL, low REAL, high REAL, threshold REAL, flag_when TEXT, count INTEGER)")


def database_path(serve_dir: Path) -> Path:
    return Path(serve_dir) / DATABASE


def record(serve_dir: Path, scores: list[Score], ts: float | None = None) -> None:
    ts = time.time() if ts is None else ts
    with closing(sqlite3.connect(str(database_path(serve_dir)), timeout=30)) as connection:
        connection.execute("PRAGMA journal_mode=WAL")
        connection.execute(SCHEMA)
        connection.execute("CREATE INDEX IF NOT EXISTS scores_ts ON scores (ts)")
        connection.executemany(f"INSERT INTO scores ({', '.join(COLUMNS)}) VALUES ({', '.join('?' * len(COLUMNS))})",
                               [(ts, score.model, score.version, score.kind, score.name, score.value, score.low,
                                 score.high, score.threshold, score.flag_when, score.count) for score in scores])
        connection.commit()


def series(serve_dir: Path, since_s: float, now: float | None = None, kind: str = "drift") -> list[Series]:
    """Each (model, version, score) of `kind` over the window, one point per tick that measured it."""
    path = database_path(serve_dir)
    if not path.is_file():
        return []
    start = (time.time() if now is None else now) - since_s
    with closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True)) as connection:
        rows = connection.execute(f"SELECT {', '.join(COLUMNS)} FROM scores WHERE ts >= ? AND kind = ? AND value IS "
                                  "NOT NULL ORDER BY ts", (start, kind)).fetchall()
    found: dict[tuple, Series] = {}
    for ts, model, version, kind_, name, value, low, high, threshold, _, count in rows:
        key = (model, version, name)
        if key not in found:
            found[key] = Series(model=model, name=name, kind=kind_, points=[], threshold=threshold, version=version)
        found[key].points.append(Point(ts, value, low, high, count or 0))
    return list(found.values())
