"""The request log and `tunelab monitor`: percentiles as numpy computes them, error rate, window, one-line errors."""

import time

import numpy as np
import pytest

from tunelab.cli import main
from tunelab.errors import TunelabError
from tunelab.monitor.report import parse_window, summarize
from tunelab.monitor.requestlog import RequestLog


def fill(serve_dir, now):
    log = RequestLog(serve_dir)
    latencies = [12.0, 30.0, 18.0, 250.0, 40.0, 22.0, 35.0]
    for latency in latencies:
        log.append({"ts": now - 60, "endpoint": "/v1/chat/completions", "model": "a", "status": 200,
                    "latency_ms": latency, "prompt_tokens": 10, "completion_tokens": 5})
    log.append({"ts": now - 30, "endpoint": "/v1/chat/completions", "model": "a", "status": 429, "latency_ms": 1.0})
    log.append({"ts": now - 30, "endpoint": "/v1/completions", "model": "b", "status": 200, "latency_ms": 100.0,
                "prompt_tokens": 3, "completion_tokens": 20})
    log.append({"ts": now - 7200, "endpoint": "/v1/completions", "model": "old", "status": 200, "latency_ms": 5.0})
    log.append({"ts": now - 10, "endpoint": "/v1/models", "status": 200, "latency_ms": 1.0})
    log.close()
    return latencies


def test_summary_per_model_over_a_window(tmp_path):
    now = time.time()
    latencies = fill(tmp_path, now)
    stats = {item.model: item for item in summarize(tmp_path, 3600, now=now)}
    assert set(stats) == {"a", "b"}  # 'old' is outside the hour; /v1/models is not a generation request
    a = stats["a"]
    assert (a.requests, a.errors) == (8, 1) and a.error_rate == pytest.approx(1 / 8)
    for value, q in ((a.p50_ms, 50), (a.p95_ms, 95), (a.p99_ms, 99)):
        assert value == pytest.approx(np.percentile(latencies, q))
    assert (a.prompt_tokens, a.completion_tokens) == (70, 35)
    assert stats["b"].tokens_per_second == pytest.approx(20 / 0.1)
    assert {item.model for item in summarize(tmp_path, 3 * 3600, now=now)} == {"a", "b", "old"}


def test_monitor_command(tmp_path, capsys):
    fill(tmp_path, time.time())
    with pytest.raises(SystemExit) as exit:
        main(["monitor", str(tmp_path), "--since", "1h"])
    assert exit.value.code == 0
    out = capsys.readouterr().out
    models = {line.strip("│ ").split()[0] for line in out.splitlines() if line.strip("│ ")}
    assert "12.5%" in out and {"a", "b"} <= models and "old" not in models  # (the word "threshold" holds "old")


def test_bad_window_and_missing_log():
    with pytest.raises(TunelabError, match="give a number above 0 and a unit"):
        parse_window("soon")
    assert parse_window("15m") == 900 and parse_window("2d") == 172800
    with pytest.raises(TunelabError, match="no request log here"):
        summarize("/nonexistent-serve-dir", 60)
