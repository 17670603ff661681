"""Names in service in the terminal: `tunelab versions` (one table per name)."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

from rich.markup import escape
from rich.table import Table

from tunelab.present.tables import Column, fitted_table

if TYPE_CHECKING:
    from tunelab.deploy.versions import Version

VERSION_COLUMNS = [
    Column("version"), Column("status"), Column("metric", "right"), Column("vs serving", rank=2),
    Column("gate", words=True, rank=1), Column("promoted", rank=3), Column("run", rank=4),
]
STATUS_STYLE = {"serving": "bold green", "candidate": "yellow", "retired": "dim", "rolled_back": "red"}


def versions_table(name: str, known: list["Version"], width: int = 200) -> Table:
    rows = []
    for version in known:
        style = STATUS_STYLE.get(version.status, "")
        metrics = version.metrics
        metric = "-" if metrics.get("tuned") is None else f"{metrics['metric']} {metrics['tuned']:.4g}"
        change = versus_text(metrics)
        gate = version.reason or (version.verdict or {}).get("summary") or ""
        when = (time.strftime("%Y-%m-%d %H:%M", time.localtime(version.promoted_at)) + f" by {version.promoted_by}"
                if version.promoted_at else "-")
        rows.append([f"v{version.number}", f"[{style}]{version.status}[/{style}]" if style else version.status,
                     metric, change, escape(gate), escape(when), escape(version.run_dir)])
    return fitted_table(f"{name}: versions", VERSION_COLUMNS, rows, width)


def versus_text(metrics: dict) -> str:
    """The change against the version in service on each slice a retrain was judged on: `+0 test, +1 feedback`."""
    by_slice = metrics.get("vs_serving_by_slice") or {}
    parts = [f"{entry['change']:+.3g} {label}" for label, entry in by_slice.items() if entry.get("change") is not None]
    return ", ".join(parts) or "-"
