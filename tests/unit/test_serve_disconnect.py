"""A client that goes away cancels its request: the engine drops it at its next step instead of generating for
nobody until --timeout, so a request arriving meanwhile is not held behind it. Measured in the engine's own counts
(decoding steps, tokens, cancellations), not in seconds."""

from __future__ import annotations

import http.client
import json

import pytest

from tests.unit.test_serve import LiveServer, wait_for
from tunelab.serve.settings import ServeSettings

BUDGET = 400  # the abandoned request's max_tokens; greedy on "abcd" the tiny model never says EOS before it


@pytest.fixture
def server(tiny_checkpoint, tmp_path):
    from tunelab.serve.server import build_service

    settings = ServeSettings(serve_dir=tmp_path, max_tokens=BUDGET, request_timeout=120, batch_wait=0.002)
    live = LiveServer(build_service([], str(tiny_checkpoint), settings, tmp_path / "home", say=lambda _: None))
    yield live
    live.stop()


def send(server, body: dict) -> http.client.HTTPConnection:
    connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=60)
    connection.request("POST", "/v1/completions", body=json.dumps(body).encode(),
                       headers={"Content-Type": "application/json"})
    return connection


def long_request(server, **extra) -> dict:
    return {"model": server.service.registry.base.id, "prompt": "abcd", "max_tokens": BUDGET, "temperature": 0,
            **extra}


def started_generating(engine) -> None:
    """Wait until the engine is decoding the request."""
    wait_for(lambda: engine.stats.steps >= 3)


def test_a_non_streaming_client_that_leaves_stops_its_generation(server):
    engine = server.service.engine
    abandoned = send(server, long_request(server))
    started_generating(engine)
    abandoned.close()  # the client gives up without reading the answer

    short = server.client(key=None).completions.create(model=server.service.registry.base.id, prompt="hi",
                                                       max_tokens=5, temperature=0)
    assert short.usage.completion_tokens == 5
    # The short request joined the running batch (it need not wait for the abandoned one to be dropped); the
    # abandoned one is dropped once its disconnect is seen, not after its whole budget of steps.
    wait_for(lambda: engine.stats.cancelled == 1, seconds=30)
    assert engine.stats.steps < BUDGET / 2, engine.stats
    assert engine.stats.tokens < BUDGET / 2


def test_a_streaming_client_that_leaves_stops_its_generation(server):
    engine = server.service.engine
    abandoned = send(server, long_request(server, stream=True))
    response = abandoned.getresponse()
    assert response.status == 200
    assert response.readline().startswith(b"data: ")  # text is flowing
    abandoned.close()

    wait_for(lambda: engine.stats.cancelled == 1, seconds=30)
    assert engine.stats.steps < BUDGET / 2, engine.stats


def test_without_a_disconnect_the_long_request_runs_its_whole_budget(server):
    """The control: the same request, kept, really is as long as the tests above assume."""
    answer = server.client(key=None).completions.create(**long_request(server))
    assert answer.usage.completion_tokens == BUDGET and answer.choices[0].finish_reason == "length"
    assert server.service.engine.stats.cancelled == 0
