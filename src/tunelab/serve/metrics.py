"""Prometheus metrics of one server, in a registry of its own (no process-wide state)."""

from __future__ import annotations

from typing import Any, Callable

LATENCY_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)
ENDPOINTS = ("/v1/models", "/v1/chat/completions", "/v1/completions", "/v1/adapters")


def endpoint_label(path: str) -> str:
    """A route, never the raw path: unknown paths and adapter ids must not grow the label set without bound."""
    if path in ENDPOINTS:
        return path
    return "/v1/adapters/{model}" if path.startswith("/v1/adapters/") else "other"


class Metrics:
    def __init__(self, queue_depth: Callable[[], int]):
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

        self.registry = CollectorRegistry()
        self.requests = Counter("tunelab_requests", "API requests answered", ["endpoint", "model", "status"],
                                registry=self.registry)
        self.errors = Counter("tunelab_errors", "API requests answered with an error status",
                              ["endpoint", "status"], registry=self.registry)
        self.latency = Histogram("tunelab_request_latency_seconds", "Arrival to last byte sent",
                                 ["endpoint", "model"], buckets=LATENCY_BUCKETS, registry=self.registry)
        self.tokens = Counter("tunelab_tokens", "Tokens read (prompt) and written (completion)", ["model", "kind"],
                              registry=self.registry)
        self.queue_depth = Gauge("tunelab_queue_depth", "Requests waiting for the engine", registry=self.registry)
        self.queue_depth.set_function(queue_depth)
        self.batch_rows = Histogram("tunelab_batch_rows", "Rows generated together", buckets=(1, 2, 4, 8, 16, 32),
                                    registry=self.registry)
        # monitor/watch.py sets these each tick; a version that stopped answering is removed, not left at its last
        self.scores = {kind: Gauge(f"tunelab_{kind}_score", f"The {kind} scores of each model over the monitor window",
                                   ["model", "score"], registry=self.registry) for kind in ("drift", "quality")}
        self.flagged = Gauge("tunelab_score_flagged", "1 where a score is past its threshold", ["model", "score"],
                             registry=self.registry)

    def observe(self, entry: dict[str, Any]) -> None:
        """One finished request, as written to the request log."""
        endpoint, status = endpoint_label(entry["endpoint"]), str(entry["status"])
        model = entry.get("model") or "" if entry["status"] != 404 else "(unknown)"
        self.requests.labels(endpoint, model, status).inc()
        if entry["status"] >= 400:
            self.errors.labels(endpoint, status).inc()
        self.latency.labels(endpoint, model).observe(entry["latency_ms"] / 1000)
        for kind in ("prompt", "completion"):
            if entry.get(f"{kind}_tokens"):
                self.tokens.labels(model, kind).inc(entry[f"{kind}_tokens"])

    def set_scores(self, scores: list[Any]) -> None:
        """One tick's monitor scores (monitor/scores.Score). Per model, not per version: a model answered by
        several versions in the window (a promotion) shows the worst of them, so a gauge flags what any flags."""
        for gauge in (*self.scores.values(), self.flagged):
            gauge.clear()
        worst: dict[tuple[str, str], Any] = {}
        for score in scores:
            if score.value is None:
                continue
            key, kept = (score.model, score.name), worst.get((score.model, score.name))
            if kept is None or (score.flagged, badness(score)) > (kept.flagged, badness(kept)):
                worst[key] = score
        for (model, name), score in worst.items():
            self.scores[score.kind].labels(model, name).set(score.value)
            self.flagged.labels(model, name).set(1 if score.flagged else 0)

    def render(self) -> tuple[bytes, str]:
        from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

        return generate_latest(self.registry), CONTENT_TYPE_LATEST


def badness(score: Any) -> float:
    return score.value if score.flag_when == "above" else -score.value
