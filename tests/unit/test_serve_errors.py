"""Small error contracts: the 504 names the real option (--timeout); a 405 is the client's error
(invalid_request_error); Retry-After before the engine has timed any batch is --timeout capped at 60 s, not 1; a
client that leaves before its response is sent is logged (status 499, "client disconnected"), never a 500.
"""

from __future__ import annotations

import json
import socket
import sqlite3
import threading
import time

import openai
import pytest

from tests.unit.test_serve import HELLO, LiveServer, wait_for
from tunelab.serve.settings import ServeSettings


def start(tiny_checkpoint, tmp_path, **settings) -> LiveServer:
    from tunelab.serve.server import build_service

    service = build_service([], str(tiny_checkpoint), ServeSettings(serve_dir=tmp_path / "serve", **settings),
                            tmp_path / "home", say=lambda _: None)
    return LiveServer(service)


def logged(server: LiveServer) -> list[tuple]:
    """The request log of a stopped server (stopping closed the log, which writes what it held)."""
    return sqlite3.connect(server.service.request_log.path).execute(
        "SELECT endpoint, status, error FROM requests ORDER BY id").fetchall()


def test_a_405_is_an_invalid_request_error(tiny_checkpoint, tmp_path):
    server = start(tiny_checkpoint, tmp_path)
    try:
        status, headers, body = server.raw("GET", "/v1/chat/completions")
        assert status == 405 and body["error"]["type"] == "invalid_request_error"
        status, _, body = server.raw("PUT", "/v1/models")
        assert status == 405 and body["error"]["type"] == "invalid_request_error"
    finally:
        server.stop()


def test_the_504_names_the_timeout_option(tiny_checkpoint, tmp_path):
    server = start(tiny_checkpoint, tmp_path, request_timeout=0.2)
    try:
        gate = threading.Event()
        server.service.engine.call(lambda: gate.wait(1.0))
        with pytest.raises(openai.APIStatusError) as late:
            server.client().chat.completions.create(model="tiny-llama", messages=HELLO, max_tokens=4)
        assert late.value.status_code == 504
        assert "--timeout" in late.value.body["message"] and "--request-timeout" not in late.value.body["message"]
    finally:
        server.stop()


@pytest.mark.parametrize(("timeout", "expected"), [(30.0, 30), (600.0, 60)])
def test_retry_after_before_any_batch_is_the_timeout_capped_at_a_minute(tiny_checkpoint, tmp_path, timeout, expected):
    server = start(tiny_checkpoint, tmp_path, request_timeout=timeout, max_queue=1)
    engine = server.service.engine
    gate = threading.Event()
    engine.call(gate.wait)  # hold the engine before it has run any batch
    waiting = threading.Thread(target=lambda: server.client().chat.completions.create(
        model="tiny-llama", messages=HELLO, max_tokens=2))
    waiting.start()
    try:
        wait_for(lambda: engine.queue_depth() == 1)
        assert engine.stats.batches == 0
        with pytest.raises(openai.RateLimitError) as refused:
            server.client().chat.completions.create(model="tiny-llama", messages=HELLO, max_tokens=2)
        assert refused.value.response.headers["retry-after"] == str(expected)
        assert f"retry after {expected} s" in refused.value.body["message"]
    finally:
        gate.set()
        waiting.join(30)
        server.stop()


def send_and_leave(port: int, data: bytes, wait: float = 0.2) -> None:
    with socket.create_connection(("127.0.0.1", port)) as connection:
        connection.sendall(data)
        time.sleep(wait)


def test_a_client_that_leaves_before_its_response_is_logged_not_a_500(tiny_checkpoint, tmp_path):
    server = start(tiny_checkpoint, tmp_path, max_tokens=256)
    body = json.dumps({"model": "tiny-llama", "prompt": "hello", "max_tokens": 256, "temperature": 0}).encode()
    head = (f"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\n\r\n").encode()
    chunked = (b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
               b"Transfer-Encoding: chunked\r\n\r\n5\r\n{\"mod\r\n")
    try:
        send_and_leave(server.port, head + body[:10])  # half the body, then gone
        send_and_leave(server.port, chunked)
        assert server.raw("GET", "/health")[0] == 200  # the server carries on
        metrics = server.raw("GET", "/metrics")[2]["text"]
    finally:
        server.stop()
    rows = logged(server)
    assert rows == [("/v1/completions", 499, "client disconnected before the response was sent")] * 2
    assert 'status="500"' not in metrics
