"""Names in service: versions recorded, promoted and rolled back (deploy/versions.py) from the CLI and the admin API,
applied by a live server with no restart (serve/deployments.py), while requests keep coming."""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from pathlib import Path

import openai
import pytest

from tests.unit.test_cli import invoke
from tests.unit.test_serve import ADMIN, KEY, LiveServer, reference, train_run
from tunelab.deploy import versions
from tunelab.errors import TunelabError
from tunelab.serve.settings import ServeSettings

HELLO = [{"role": "user", "content": "abcd"}]
NAME = "support-bot"


def fake_runs(tmp_path: Path, count: int) -> list[Path]:
    runs = [tmp_path / f"run-{index}" for index in range(1, count + 1)]
    for run in runs:
        run.mkdir()
    return runs


def test_versions_are_numbered_promoted_and_rolled_back_to_what_served_before(tmp_path):
    serve = tmp_path / "serve"
    one, two, three = fake_runs(tmp_path, 3)
    for run in (one, two, three):
        versions.promote(serve, NAME, versions.record(serve, NAME, run).number, by="alice")
    assert [(v.number, v.status) for v in versions.versions(serve, NAME)] == [
        (3, "serving"), (2, "retired"), (1, "retired")]
    assert versions.record(serve, NAME, two).number == 2  # a run is one version of a name
    assert versions.rollback(serve, NAME, by="bob", reason="complaints").number == 2
    assert versions.rollback(serve, NAME, by="bob").number == 1  # back again: v1, never v3
    statuses = {v.number: (v.status, v.reason) for v in versions.versions(serve, NAME)}
    assert statuses[3] == ("rolled_back", "rolled back by bob: complaints")
    assert statuses[2][0] == "rolled_back" and statuses[1][0] == "serving"
    with pytest.raises(TunelabError, match="nothing to roll back to"):
        versions.rollback(serve, NAME, by="bob")
    assert [(p.number, p.action, p.by) for p in versions.history(serve, NAME)] == [
        (1, "promote", "alice"), (2, "promote", "alice"), (3, "promote", "alice"), (2, "rollback", "bob"),
        (1, "rollback", "bob")]
    versions.promote(serve, NAME, 3, by="carol")  # a rolled-back version may be promoted again on purpose
    assert versions.current(serve, NAME).number == 3
    with pytest.raises(TunelabError, match="already in service"):
        versions.promote(serve, NAME, 3, by="carol")
    with pytest.raises(TunelabError, match="no version v9"):
        versions.find(serve, NAME, "v9")
    with pytest.raises(TunelabError, match="not a name in service"):
        versions.rollback(serve, "nobody", by="bob")


@pytest.fixture(scope="module")
def runs(tmp_path_factory, tiny_checkpoint) -> dict[str, Path]:
    tmp = tmp_path_factory.mktemp("deploy-runs")
    return {name: train_run(tmp, tiny_checkpoint, f"run-{name}", seed=seed) for name, seed in (("a", 1), ("b", 2))}


@pytest.fixture(scope="module")
def expected(runs) -> dict[str, str]:
    texts = {name: reference(run, HELLO, 12) for name, run in runs.items()}
    assert texts["a"] != texts["b"], "the two versions must answer differently for this test to tell them apart"
    return texts


@pytest.fixture(scope="module")
def live(runs, tmp_path_factory):
    from tunelab.serve.server import build_service

    serve_dir = tmp_path_factory.mktemp("deploy-serve")
    versions.promote(serve_dir, NAME, versions.record(serve_dir, NAME, runs["a"]).number, by="setup")
    settings = ServeSettings(serve_dir=serve_dir, api_keys=frozenset({KEY}), admin_key=ADMIN, max_tokens=64,
                             batch_wait=0.002, runs_roots=(runs["a"].parent,), log_content=True)
    # no RUN and no --base: the base is the recorded versions' base, and the name serves its version from the start
    service = build_service([], None, settings, runs["a"].parent / "home", say=lambda _: None)
    server = LiveServer(service)
    yield server
    server.stop()


def ask(client: openai.OpenAI, stream: bool = False) -> str:
    if stream:
        return "".join(chunk.choices[0].delta.content or "" for chunk in client.chat.completions.create(
            model=NAME, messages=HELLO, temperature=0, max_tokens=12, stream=True) if chunk.choices)
    return client.chat.completions.create(model=NAME, messages=HELLO, temperature=0,
                                          max_tokens=12).choices[0].message.content


def admin_post(live, path: str, body: dict, key: str = ADMIN) -> tuple[int, dict]:
    status, _, answer = live.raw("POST", path, json.dumps(body).encode(), key=key)
    return status, answer


def wait_for(condition, seconds: float = 10) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def test_promote_and_rollback_switch_the_name_with_no_restart(live, runs, expected, capsys):
    client = live.client()
    assert ask(client) == expected["a"]
    status, promoted = admin_post(live, f"/v1/deployments/{NAME}/promote", {"version": str(runs["b"]), "by": "ops"})
    assert status == 200 and promoted["number"] == 2 and promoted["status"] == "serving"
    assert ask(client) == expected["b"]  # switched before the answer came back
    status, back = admin_post(live, f"/v1/deployments/{NAME}/rollback", {"reason": "test"})
    assert status == 200 and back["number"] == 1
    assert ask(client) == expected["a"]
    # the CLI writes the record; the running server follows within a second
    code, out, err = invoke(capsys, "promote", NAME, "v2", "--serve-dir", str(live.service.settings.serve_dir))
    assert code == 0, err
    assert f"{NAME} v2" in out
    wait_for(lambda: live.service.registry.get(NAME).version == 2)
    assert ask(client) == expected["b"]
    code, out, err = invoke(capsys, "rollback", NAME, "--serve-dir", str(live.service.settings.serve_dir))
    assert code == 0, err
    wait_for(lambda: live.service.registry.get(NAME).version == 1)
    assert ask(client) == expected["a"]
    status, _, listing = live.raw("GET", f"/v1/deployments/{NAME}", key=ADMIN)
    assert status == 200 and listing["serving"]["number"] == 1
    assert [entry["action"] for entry in listing["history"]] == ["promote", "promote", "rollback", "promote",
                                                                   "rollback"]
    # the request log says which version (run folder) answered each request
    database = Path(live.service.settings.serve_dir) / "requests.sqlite"
    wait_for(lambda: sqlite3.connect(database).execute(
        "SELECT COUNT(DISTINCT adapter) FROM requests WHERE model = ?", (NAME,)).fetchone()[0] == 2)


def test_a_request_in_flight_finishes_on_the_version_it_started_on(live, runs, expected):
    client = live.client()
    if live.service.registry.get(NAME).version != 1:
        admin_post(live, f"/v1/deployments/{NAME}/promote", {"version": "1"})
    assert ask(client) == expected["a"]
    engine = live.service.engine
    gate = threading.Event()
    engine.call(gate.wait)  # the engine is busy: the next request waits in its queue
    answers: dict[str, str] = {}
    first = threading.Thread(target=lambda: answers.update(old=ask(client, stream=True)))
    first.start()
    wait_for(lambda: engine.queue_depth() == 1)
    status, _ = admin_post(live, f"/v1/deployments/{NAME}/promote", {"version": "v2"})  # loaded already: no wait
    assert status == 200
    second = threading.Thread(target=lambda: answers.update(new=ask(client)))
    second.start()
    wait_for(lambda: engine.queue_depth() == 2)
    gate.set()
    first.join(30), second.join(30)
    assert answers == {"old": expected["a"], "new": expected["b"]}


def test_switching_under_concurrent_requests_fails_none_and_mixes_no_versions(live, runs, expected):
    client = live.client()
    stop = threading.Event()
    answers: list[str] = []
    failures: list[str] = []

    def keep_asking(stream: bool) -> None:
        while not stop.is_set():
            try:
                answers.append(ask(client, stream))
            except Exception as error:  # any failure is the test's failure
                failures.append(f"{type(error).__name__}: {error}")

    threads = [threading.Thread(target=keep_asking, args=(index % 2 == 0,)) for index in range(6)]
    for thread in threads:
        thread.start()
    for round_ in range(6):
        current = live.service.registry.get(NAME).version
        status, body = (admin_post(live, f"/v1/deployments/{NAME}/rollback", {}) if round_ % 2
                        else admin_post(live, f"/v1/deployments/{NAME}/promote", {"version": str(3 - current)}))
        assert status == 200, body
        time.sleep(0.3)
    stop.set()
    for thread in threads:
        thread.join(60)
    assert failures == []
    assert len(answers) >= 12
    assert set(answers) == {expected["a"], expected["b"]}  # both versions answered, each answer one whole version


def test_deployment_endpoints_refuse_what_they_cannot_do(live, runs, tmp_path):
    assert admin_post(live, f"/v1/deployments/{NAME}/rollback", {}, key=KEY)[0] == 401
    status, body = admin_post(live, "/v1/deployments/nobody/rollback", {})
    assert status == 404 and "not a name in service" in body["error"]["message"]
    status, body = admin_post(live, f"/v1/deployments/{NAME}/promote", {"version": "v9"})
    assert status == 404 and "no version v9" in body["error"]["message"]
    status, body = admin_post(live, f"/v1/deployments/{NAME}/promote", {"version": str(tmp_path)})
    assert status == 400  # outside --runs-root
    current = live.service.registry.get(NAME).version
    status, body = admin_post(live, f"/v1/deployments/{NAME}/promote", {"version": f"v{current}"})
    assert status == 409 and "already in service" in body["error"]["message"]
    status, _, body = live.raw("DELETE", f"/v1/adapters/{NAME}", key=ADMIN)
    assert status == 409 and "rolled back" not in body["error"]["message"] and "promote" in body["error"]["message"]


def test_a_name_in_service_on_the_serve_command_line_is_refused(live, runs):
    from tunelab.serve.server import build_service

    settings = ServeSettings(serve_dir=live.service.settings.serve_dir)
    with pytest.raises(TunelabError, match="is a name in service"):
        build_service([f"{NAME}={runs['b']}"], None, settings, runs["a"].parent / "home", say=lambda _: None)


def test_promote_refuses_a_run_with_no_adapter_before_recording_it(capsys, tmp_path):
    code, _, err = invoke(capsys, "promote", NAME, str(tmp_path), "--serve-dir", str(tmp_path / "serve"))
    assert code == 2 and "not a tunelab run folder" in err
    assert versions.names(tmp_path / "serve") == []
