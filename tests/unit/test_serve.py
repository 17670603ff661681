"""tunelab serve on a tiny model, through the official `openai` client over a loopback port: models, chat,
streaming, completions, adapters picked by name and hot-swapped, batching, keys, limits, errors in OpenAI's shape,
metrics and the request log."""

from __future__ import annotations

import http.client
import json
import sqlite3
import threading
import time
from pathlib import Path

import openai
import pytest

from tests.conftest import reverse_rows, tiny_recipe, train_recipe, write_jsonl
from tunelab.errors import TunelabError
from tunelab.serve.settings import ServeSettings

KEY, ADMIN = "test-key", "test-admin"
HELLO = [{"role": "user", "content": "abcd"}]


def train_run(tmp: Path, checkpoint: Path, name: str, seed: int) -> Path:
    data = write_jsonl(tmp / f"{name}.jsonl", reverse_rows(60, seed=seed))
    recipe = tiny_recipe(tmp, checkpoint, data, train={"max_steps": 4, "seed": seed, "lr": 1e-2},
                         output={"dir": str(tmp / name)})
    return train_recipe(recipe, tmp / "home").root


class LiveServer:
    """The app on a real loopback port, in a thread, as `tunelab serve` runs it."""

    def __init__(self, service):
        import uvicorn

        from tunelab.serve.app import create_app
        from tunelab.serve.server import bind

        self.service = service
        self.sock = bind("127.0.0.1", 0)
        self.port = self.sock.getsockname()[1]
        self.server = uvicorn.Server(uvicorn.Config(create_app(service), log_level="warning"))
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.sock]}, daemon=True)
        self.thread.start()
        deadline = time.monotonic() + 20
        while not self.server.started and time.monotonic() < deadline:
            time.sleep(0.01)

    def client(self, key: str | None = KEY) -> openai.OpenAI:
        return openai.OpenAI(base_url=f"http://127.0.0.1:{self.port}/v1", api_key=key or "none", max_retries=0,
                             timeout=30)

    def raw(self, method: str, path: str, body: bytes | None = None, key: str | None = KEY,
            headers: dict | None = None) -> tuple[int, dict, dict]:
        connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
        sent = {"Content-Type": "application/json", **({"Authorization": f"Bearer {key}"} if key else {}),
                **(headers or {})}
        connection.request(method, path, body=body, headers=sent)
        response = connection.getresponse()
        data = response.read()
        connection.close()
        try:
            parsed = json.loads(data)
        except ValueError:
            parsed = {"text": data.decode()}
        return response.status, dict(response.getheaders()), parsed

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=20)


@pytest.fixture(scope="module")
def runs(tmp_path_factory, tiny_checkpoint) -> dict[str, Path]:
    tmp = tmp_path_factory.mktemp("serve-runs")
    return {name: train_run(tmp, tiny_checkpoint, f"run-{name}", seed=seed) for name, seed in (("a", 1), ("b", 2))}


@pytest.fixture(scope="module")
def live(runs, tmp_path_factory):
    from tunelab.serve.server import build_service

    serve_dir = tmp_path_factory.mktemp("serve")
    settings = ServeSettings(serve_dir=serve_dir, api_keys=frozenset({KEY}), admin_key=ADMIN, max_queue=2,
                             max_batch_rows=8, max_tokens=64, max_body_bytes=64 * 1024, batch_wait=0.002,
                             runs_roots=(runs["a"].parent,))
    service = build_service([f"rev-a={runs['a']}"], None, settings, runs["a"].parent / "home", say=lambda _: None)
    server = LiveServer(service)
    yield server
    server.stop()


def reference(run: Path, messages: list[dict], max_tokens: int, base: bool = False) -> str:
    """What `tunelab generate` answers (greedy), computed without the server."""
    from tunelab.cli.run import reply
    from tunelab.run.models import open_run_models

    models = open_run_models(run, run.parent / "home")
    inference = models.inference()
    model = inference.load_base() if base else inference.load_tuned()
    return reply(model, models.tokenizer(), messages, max_tokens, 0.0, models.placement)


def base_id(live) -> str:
    return live.service.registry.base.id


def test_models_are_listed_with_their_parent(live):
    models = {model.id: model for model in live.client().models.list().data}
    assert set(models) == {base_id(live), "rev-a"}
    assert models["rev-a"].model_dump()["parent"] == base_id(live)


def test_chat_picks_the_adapter_or_the_base_by_name_and_matches_generate(live, runs):
    client = live.client()
    assert reference(runs["a"], HELLO, 12) != reference(runs["a"], HELLO, 12, base=True)  # the adapter matters
    for model, expected in (("rev-a", reference(runs["a"], HELLO, 12)),
                            (base_id(live), reference(runs["a"], HELLO, 12, base=True))):
        answer = client.chat.completions.create(model=model, messages=HELLO, temperature=0, max_tokens=12)
        assert answer.choices[0].message.content == expected
        assert answer.model == model and answer.usage.completion_tokens <= 12
        assert answer.choices[0].finish_reason in ("stop", "length")


def test_streaming_sends_the_same_text_in_pieces(live):
    client = live.client()
    whole = client.chat.completions.create(model="rev-a", messages=HELLO, temperature=0, max_tokens=20)
    chunks = list(client.chat.completions.create(model="rev-a", messages=HELLO, temperature=0, max_tokens=20,
                                                 stream=True, stream_options={"include_usage": True}))
    text = "".join(chunk.choices[0].delta.content or "" for chunk in chunks if chunk.choices)
    assert text == whole.choices[0].message.content
    assert chunks[0].choices[0].delta.role == "assistant"
    finish = [chunk.choices[0].finish_reason for chunk in chunks if chunk.choices and chunk.choices[0].finish_reason]
    assert finish == [whole.choices[0].finish_reason]
    assert chunks[-1].usage.completion_tokens == whole.usage.completion_tokens


def test_completions_seed_n_and_stop(live):
    client = live.client()
    first = client.completions.create(model=base_id(live), prompt="hello", max_tokens=8, temperature=1.0, seed=7, n=2)
    again = client.completions.create(model=base_id(live), prompt="hello", max_tokens=8, temperature=1.0, seed=7, n=2)
    assert [c.text for c in first.choices] == [c.text for c in again.choices]
    assert [c.index for c in first.choices] == [0, 1]
    greedy = client.completions.create(model=base_id(live), prompt="hello", max_tokens=16, temperature=0).choices[0]
    stop = greedy.text[3:5]  # a string the greedy answer contains: the answer ends before its first occurrence
    cut = client.completions.create(model=base_id(live), prompt="hello", max_tokens=16, temperature=0, stop=[stop])
    assert cut.choices[0].text == greedy.text[: greedy.text.find(stop)]
    assert cut.choices[0].finish_reason == "stop"


def test_concurrent_requests_on_different_adapters_share_a_batch(live, runs):
    engine = live.service.engine
    gate = threading.Event()
    engine.call(gate.wait)  # hold the engine so the requests queue up together
    batches_before = engine.stats.batches
    results = {}

    def ask(model):
        results[model] = live.client().chat.completions.create(model=model, messages=HELLO, temperature=0,
                                                               max_tokens=12).choices[0].message.content

    threads = [threading.Thread(target=ask, args=(model,)) for model in ("rev-a", base_id(live))]
    for thread in threads:
        thread.start()
    wait_for(lambda: engine.queue_depth() == 2)
    gate.set()
    for thread in threads:
        thread.join(30)
    assert engine.stats.batches == batches_before + 1  # both rows in one mixed-adapter batch
    assert results["rev-a"] == reference(runs["a"], HELLO, 12)
    assert results[base_id(live)] == reference(runs["a"], HELLO, 12, base=True)


def wait_for(condition, seconds: float = 10) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, "timed out waiting"
        time.sleep(0.005)


def test_a_full_queue_answers_429_with_retry_after(live):
    engine = live.service.engine
    gate = threading.Event()
    engine.call(gate.wait)
    threads = [threading.Thread(target=lambda: live.client().chat.completions.create(
        model="rev-a", messages=HELLO, max_tokens=4)) for _ in range(2)]
    for thread in threads:
        thread.start()
    wait_for(lambda: engine.queue_depth() == 2)  # max_queue=2
    try:
        with pytest.raises(openai.RateLimitError) as refused:
            live.client().chat.completions.create(model="rev-a", messages=HELLO, max_tokens=4)
        assert int(refused.value.response.headers["retry-after"]) >= 1
        assert refused.value.body["type"] == "rate_limit_error"
    finally:
        gate.set()
        for thread in threads:
            thread.join(30)


def test_adapters_load_and_unload_live_without_touching_requests_in_flight(live, runs):
    admin = live.client(ADMIN)
    loaded = admin.post("/adapters", body={"run": str(runs["b"]), "name": "rev-b"}, cast_to=object)
    assert loaded["id"] == "rev-b" and loaded["parent"] == base_id(live)
    expected_b = reference(runs["b"], HELLO, 12)
    client = live.client()
    assert client.chat.completions.create(model="rev-b", messages=HELLO, temperature=0,
                                          max_tokens=12).choices[0].message.content == expected_b

    engine = live.service.engine
    gate = threading.Event()
    engine.call(gate.wait)
    in_flight = {}
    thread = threading.Thread(target=lambda: in_flight.update(text="".join(
        chunk.choices[0].delta.content or "" for chunk in client.chat.completions.create(
            model="rev-b", messages=HELLO, temperature=0, max_tokens=12, stream=True) if chunk.choices)))
    thread.start()
    wait_for(lambda: engine.queue_depth() == 1)
    deleted = admin.delete("/adapters/rev-b", cast_to=object)
    assert deleted == {"id": "rev-b", "object": "model", "deleted": True, "in_flight": 1}
    with pytest.raises(openai.NotFoundError):  # new requests no longer see it ...
        client.chat.completions.create(model="rev-b", messages=HELLO, max_tokens=4)
    gate.set()
    thread.join(30)
    assert in_flight["text"] == expected_b  # ... the one in flight finished on it, unchanged
    wait_for(lambda: len(engine.model.peft_config) == 1)  # unloaded once the request in flight was done
    assert [m.id for m in client.models.list().data] == [base_id(live), "rev-a"]


def test_admin_endpoints_need_the_admin_key_and_refuse_bad_runs(live, tmp_path):
    status, _, body = live.raw("POST", "/v1/adapters", json.dumps({"run": "x"}).encode(), key=KEY)
    assert status == 401 and body["error"]["type"] == "authentication_error"
    status, _, body = live.raw("POST", "/v1/adapters", json.dumps({"run": str(tmp_path)}).encode(), key=ADMIN)
    assert status == 400 and "not a loadable run folder" in body["error"]["message"]
    status, _, body = live.raw("DELETE", f"/v1/adapters/{base_id(live)}", key=ADMIN)
    assert status == 400 and "base model" in body["error"]["message"]
    status, _, body = live.raw("DELETE", "/v1/adapters/nothing", key=ADMIN)
    assert status == 404 and body["error"]["code"] == "model_not_found"


def test_keys_and_bad_input_get_openai_shaped_errors(live):
    with pytest.raises(openai.AuthenticationError):
        live.client(key="wrong").models.list()
    status, _, _ = live.raw("GET", "/v1/models", key=None)
    assert status == 401
    with pytest.raises(openai.NotFoundError) as missing:
        live.client().chat.completions.create(model="no-such-model", messages=HELLO)
    assert missing.value.body["code"] == "model_not_found" and "no-such-model" in missing.value.body["message"]

    status, _, body = live.raw("POST", "/v1/chat/completions", b'{"model": "rev-a", "messages": [')
    assert status == 400 and "not valid JSON" in body["error"]["message"]
    wrong = {"model": "rev-a", "messages": HELLO, "max_tokens": "many"}
    status, _, body = live.raw("POST", "/v1/chat/completions", json.dumps(wrong).encode())
    assert status == 422 and body["error"]["param"] == "max_tokens"
    status, _, body = live.raw("POST", "/v1/chat/completions", json.dumps({"model": "rev-a"}).encode())
    assert status == 422 and body["error"]["param"] == "messages"
    huge = {"model": "rev-a", "messages": [{"role": "user", "content": "x" * 70_000}]}
    status, _, body = live.raw("POST", "/v1/chat/completions", json.dumps(huge).encode())
    assert status == 413 and body["error"]["type"] == "invalid_request_error"
    with pytest.raises(openai.BadRequestError, match="exceeds this server's limit of 64"):
        live.client().chat.completions.create(model="rev-a", messages=HELLO, max_tokens=65)
    with pytest.raises(openai.BadRequestError, match="'presence_penalty' is not supported"):
        live.client().chat.completions.create(model="rev-a", messages=HELLO, presence_penalty=1.0)


def test_health_metrics_and_the_request_log(live):
    answer = live.client().chat.completions.create(model="rev-a", messages=HELLO, temperature=0, max_tokens=5)
    status, _, body = live.raw("GET", "/health", key=None)
    assert status == 200 and body["status"] == "ok" and "rev-a" in body["models"]
    status, _, body = live.raw("GET", "/metrics")
    text = body["text"]
    for name in ("tunelab_requests_total", "tunelab_request_latency_seconds_bucket", "tunelab_tokens_total",
                 "tunelab_errors_total", "tunelab_queue_depth"):
        assert name in text
    assert 'tunelab_requests_total{endpoint="/v1/chat/completions",model="rev-a",status="200"}' in text

    database = live.service.request_log.path
    this_request = (f"model = 'rev-a' AND status = 200 AND prompt_tokens = {answer.usage.prompt_tokens} "
                    f"AND completion_tokens = {answer.usage.completion_tokens}")
    wait_for(lambda: count_rows(database, this_request) >= 1)  # written by the log's own thread, soon after
    row = sqlite3.connect(database).execute(
        f"SELECT adapter, latency_ms, prompt FROM requests WHERE {this_request} ORDER BY id DESC").fetchone()
    assert row[0].endswith("run-a") and row[1] > 0
    assert row[2] is None  # prompts are kept only with --log-content


def count_rows(database: Path, where: str) -> int:
    return sqlite3.connect(database).execute(f"SELECT COUNT(*) FROM requests WHERE {where}").fetchone()[0]


def test_a_request_past_its_timeout_gets_504(runs, tmp_path):
    from tunelab.serve.server import build_service

    settings = ServeSettings(serve_dir=tmp_path, request_timeout=0.2, log_content=True)
    server = LiveServer(build_service([str(runs["a"])], None, settings, runs["a"].parent / "home",
                                      say=lambda _: None))
    try:
        gate = threading.Event()
        server.service.engine.call(lambda: gate.wait(1.0))
        with pytest.raises(openai.APIStatusError) as late:
            server.client().chat.completions.create(model="run-a", messages=HELLO, max_tokens=4)
        assert late.value.status_code == 504 and late.value.body["code"] == "timeout"
        answer = server.client().chat.completions.create(model="run-a", messages=HELLO, max_tokens=4)
        assert answer.choices[0].message is not None
    finally:
        server.stop()
    rows = sqlite3.connect(tmp_path / "requests.sqlite").execute(
        "SELECT status, prompt, output FROM requests ORDER BY id").fetchall()
    assert [row[0] for row in rows] == [504, 200]
    assert "abcd" in rows[1][1] and rows[1][2] is not None  # --log-content keeps them


def test_an_adapter_on_another_base_is_refused_naming_both(runs, tmp_path):
    from tests.tiny import save_tiny_checkpoint
    from tunelab.serve.server import build_service

    other = save_tiny_checkpoint(tmp_path / "other-tiny", seed=5)
    both = r"trained on base model '.*tiny-llama', but the server holds '.*other-tiny'"
    with pytest.raises(TunelabError, match=both):
        build_service([str(runs["a"])], str(other), ServeSettings(serve_dir=tmp_path / "s"),
                      runs["a"].parent / "home", say=lambda _: None)


def test_a_taken_port_is_one_line_and_exit_2(capsys, tmp_path):
    from tunelab.cli import main
    from tunelab.serve.server import bind

    taken = bind("127.0.0.1", 0)
    try:
        port = taken.getsockname()[1]
        with pytest.raises(SystemExit) as exit:
            main(["serve", "--base", str(tmp_path), "--port", str(port), "--serve-dir", str(tmp_path / "s")])
        assert exit.value.code == 2
        err = capsys.readouterr().err.strip()
        assert err == f"error: --port {port}: 127.0.0.1:{port} is already in use; pick another port"
    finally:
        taken.close()
