"""Live quality scores: planted feedback and answers give the rates the formulas say, and a drop is flagged."""

import json
import math
import time

import pytest

from tunelab.monitor.quality import is_refusal, quality_scores, quality_series, wilson
from tunelab.monitor.requestlog import RequestLog

RUN = "/runs/support-v1"


def answer(log, i, ts, *, status=200, tokens=40, text="Here is how to do it.", version=RUN, model="bot"):
    log.append({"ts": ts, "request_id": f"chatcmpl-{i}", "endpoint": "/v1/chat/completions", "model": model,
                "adapter": version, "status": status, "latency_ms": 5.0, "completion_tokens": tokens,
                "error": None if status == 200 else "failed", "prompt": json.dumps([{"role": "user", "content": "q"}]),
                "output": json.dumps([text]) if status == 200 else None})


def judge(log, i, ts, rating, correction=None):
    log.add_feedback({"id": f"fb-{i}", "ts": ts, "completion_id": f"chatcmpl-{i}", "choice": 0, "model": "bot",
                      "rating": rating, "correction": correction})


@pytest.fixture(scope="module")
def serve_dir(tmp_path_factory):
    """The last hour: 50 rated answers (40 up, 10 down, 5 of the downs corrected), 5 errors, 6 refusals, answers
    of 10 tokens; the hour before: 30 answers of 40 tokens, all thumbs up."""
    now = time.time()
    folder = tmp_path_factory.mktemp("quality")
    log = RequestLog(folder)
    for i in range(30):
        answer(log, 1000 + i, now - 5400)
        judge(log, 1000 + i, now - 5300, "up")
    for i in range(50):
        refusal = i < 6
        answer(log, i, now - 1800, tokens=10, text="I'm sorry, but I can't help with that." if refusal else "Done.")
        judge(log, i, now - 1700, "up" if i >= 10 else "down", correction="Do this instead." if i < 5 else None)
    for i in range(5):
        answer(log, 100 + i, now - 1800, status=500)
    log.close()
    return folder, now


def scores_of(serve_dir):
    folder, now = serve_dir
    return {s.name: s for s in quality_scores(folder, "bot", 3600, now=now)}


def test_thumbs_up_rate_and_its_wilson_interval(serve_dir):
    up = scores_of(serve_dir)["thumbs_up_rate"]
    assert (up.value, up.count, up.version, up.kind) == (0.8, 50, RUN, "quality")
    z, n, p = 1.959963984540054, 50, 0.8
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z / (1 + z * z / n) * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    assert (up.low, up.high) == (pytest.approx(centre - half), pytest.approx(centre + half))
    assert up.low == pytest.approx(0.6696, abs=1e-3) and up.high == pytest.approx(0.8876, abs=1e-3)
    assert not up.flagged  # 0.8 is above the default 0.6
    assert wilson(0, 0) == (None, None) and wilson(0, 10)[0] == 0.0


def test_rates_of_corrections_errors_refusals(serve_dir):
    scores = scores_of(serve_dir)
    assert scores["correction_rate"].value == pytest.approx(5 / 50) and not scores["correction_rate"].flagged
    assert scores["error_rate"].value == pytest.approx(5 / 55) and scores["error_rate"].flagged  # over 0.05
    assert scores["refusal_rate"].value == pytest.approx(6 / 50) and scores["refusal_rate"].flagged  # over 0.1
    assert is_refusal(json.dumps(["As an AI, I cannot do that"])) and not is_refusal(json.dumps(["Sure, here."]))


def test_a_drop_between_windows_is_flagged(serve_dir):
    length = scores_of(serve_dir)["answer_length"]
    assert length.value == 10 and length.threshold == pytest.approx(0.5 * 40) and length.flagged
    folder, now = serve_dir
    earlier = {s.name: s for s in quality_scores(folder, "bot", 3600, now=now - 3600)}
    assert earlier["thumbs_up_rate"].value == 1.0 and not earlier["thumbs_up_rate"].flagged
    strict = {s.name: s for s in quality_scores(folder, "bot", 3600, {"thumbs_up_rate": 0.9}, now=now)}
    assert strict["thumbs_up_rate"].flagged  # 0.8 after 1.0: under a 0.9 floor


def test_few_rows_are_not_flagged(tmp_path):
    now = time.time()
    log = RequestLog(tmp_path)
    for i in range(5):
        answer(log, i, now - 60)
        judge(log, i, now - 50, "down")
    log.close()
    up = {s.name: s for s in quality_scores(tmp_path, "bot", 3600, now=now)}["thumbs_up_rate"]
    assert up.value == 0.0 and up.threshold is None and not up.flagged and "too few" in up.detail


def test_series_per_bucket(serve_dir):
    folder, now = serve_dir
    series = {s.name: s for s in quality_series(folder, "bot", 7200, buckets=4, now=now)}
    up = series["thumbs_up_rate"]
    assert [point.value for point in up.points] == [None, 1.0, None, 0.8] and up.threshold == 0.6
    assert [point.count for point in up.points] == [0, 30, 0, 50]
    assert [point.value for point in series["answer_length"].points][1::2] == [40, 10]
