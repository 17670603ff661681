"""Watch scores while serving: a thread in the server computes every model's drift and quality scores each
`every_s` seconds over `window_s`, sets the Prometheus gauges (serve/metrics.py) and says one line when a score
crosses its threshold, and one when it comes back (not at every tick).

Started and stopped with the Service, like serve/finished_jobs.py. It only reads the request log (a read-only
connection per tick, WAL lets the writer go on), so a request never waits on it, and an error in a tick is said
and the next tick tries again: the thread never stops the server.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

from tunelab.monitor.scores import Score
from tunelab.poller import Poller


class Watch:
    def __init__(self, serve_dir: Path, metrics: Any, window_s: float, every_s: float, thresholds: Any = None,
                 embedder: Any = None, say: Callable[[str], None] = print):
        self.serve_dir, self.metrics, self.window_s, self.every_s = serve_dir, metrics, window_s, every_s
        self.thresholds, self.embedder, self.say = thresholds, embedder, say
        self.flagged: set[tuple[str, str | None, str]] = set()  # (model, version, score) past its threshold now
        self.last: list[Score] = []  # the last tick's scores (for the dashboard)
        self.poller = Poller("tunelab-monitor", every_s, self.tick, say, "monitor")

    def start(self) -> "Watch":
        self.poller.start()
        return self

    def close(self) -> None:
        self.poller.close(timeout=30)

    def tick(self, now: float | None = None) -> list[Score]:
        from tunelab.monitor.history import record
        from tunelab.monitor.report import all_scores

        scores = all_scores(self.serve_dir, self.window_s, self.thresholds, now=now, embedder=self.embedder)
        self.metrics.set_scores(scores)
        record(self.serve_dir, scores, now)
        self.announce(scores)
        self.last = scores
        return scores

    def announce(self, scores: list[Score]) -> None:
        now_flagged = {(s.model, s.version, s.name): s for s in scores if s.flagged}
        for key, score in now_flagged.items():
            if key not in self.flagged:
                self.say(f"monitor: {score.model} ({version_name(score.version)}): {score.name} {score.value:.3f} "
                         f"{'over' if score.flag_when == 'above' else 'under'} its threshold {score.threshold:g}")
        measured = {(s.model, s.version, s.name): s for s in scores}
        for key in self.flagged - set(now_flagged):
            score = measured.get(key)
            state = "no longer measured" if score is None or score.value is None else f"{score.value:.3f}"
            self.say(f"monitor: {key[0]} ({version_name(key[1])}): {key[2]} back within its threshold ({state})")
        self.flagged = set(now_flagged)


def version_name(version: str | None) -> str:
    return "base" if version is None else Path(version).name
