"""Model ids are checked wherever they enter the server: the admin's `name`, a request's `model`, DELETE's id and
`tunelab serve NAME=RUN`. An invalid id (a '/', 300 characters, a space, a leading dot) is a 400 naming the field,
is never served, never echoed back whole and never becomes a Prometheus label; ids made from folder names are
cleaned into valid ones.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.unit.test_serve import ADMIN, HELLO, KEY, LiveServer, train_run
from tunelab.errors import TunelabError
from tunelab.serve.registry import base_id, check_id, derived_id, is_valid_id
from tunelab.serve.settings import ServeSettings

BAD_IDS = ["bad/name", "x" * 300, "has space", ".hidden", "-dash", "", "a\nb", "ünï"]


@pytest.fixture(scope="module")
def server(tmp_path_factory, tiny_checkpoint):
    from tunelab.serve.server import build_service

    tmp = tmp_path_factory.mktemp("ids")
    run = train_run(tmp, tiny_checkpoint, "run-i", seed=4)
    settings = ServeSettings(serve_dir=tmp / "serve", api_keys=frozenset({KEY}), admin_key=ADMIN,
                             runs_roots=(tmp,), max_tokens=16)
    live = LiveServer(build_service([], str(tiny_checkpoint), settings, tmp / "home", say=lambda _: None))
    live.run = run
    yield live
    live.stop()


def test_the_id_rule():
    for good in ("rev-a", "run_2.1", "A", "x" * 160, "SmolLM2-135M", "ft:tiny-llama:rev:ftjob-abc123"):
        assert is_valid_id(good) and check_id(good, "name") == good
    for bad in BAD_IDS + ["x" * 161]:
        assert not is_valid_id(bad)
        with pytest.raises(TunelabError, match=r"^name: .* is not a valid model id"):
            check_id(bad, "name")


def test_ids_made_from_folder_names_are_valid():
    for name in ("my run (2)", "../..", "résumé", "x" * 200, "-lead", "a/b"):
        assert is_valid_id(derived_id(name)), name
    assert derived_id("my run (2)") == "my-run-2"
    assert base_id("tiny-llama") == "tiny-llama"
    assert is_valid_id(base_id("/tmp/some folder/model weights"))


def test_an_invalid_admin_name_is_400_naming_name_and_loads_nothing(server):
    for bad in BAD_IDS:
        status, _, body = server.raw("POST", "/v1/adapters", json.dumps({"run": str(server.run), "name": bad}).encode(),
                                     key=ADMIN)
        assert status == 400 and body["error"]["param"] == "name", (bad, body)
        assert "is not a valid model id" in body["error"]["message"]
        assert len(body["error"]["message"]) < 200  # the 300 characters are not echoed back
    assert server.service.registry.ids() == [server.service.registry.base.id]


def test_an_invalid_request_model_is_400_naming_model_and_no_metrics_label(server):
    for bad in BAD_IDS:
        body = json.dumps({"model": bad, "messages": HELLO, "max_tokens": 2}).encode()
        status, _, answer = server.raw("POST", "/v1/chat/completions", body)
        assert status == 400 and answer["error"]["param"] == "model", (bad, answer)
        status, _, answer = server.raw("POST", "/v1/completions",
                                       json.dumps({"model": bad, "prompt": "ab", "max_tokens": 2}).encode())
        assert status == 400 and answer["error"]["param"] == "model", (bad, answer)
    status, _, answer = server.raw("DELETE", "/v1/adapters/has%20space", key=ADMIN)
    assert status == 400 and answer["error"]["param"] == "model"
    metrics = server.raw("GET", "/metrics")[2]["text"]
    assert "xxxxxxxxxx" not in metrics and "bad/name" not in metrics and "has space" not in metrics


def test_a_valid_name_loads_and_unloads(server):
    status, _, card = server.raw("POST", "/v1/adapters", json.dumps({"run": str(server.run), "name": "ok.1"}).encode(),
                                 key=ADMIN)
    assert status == 200 and card["id"] == "ok.1"
    status, _, deleted = server.raw("DELETE", "/v1/adapters/ok.1", key=ADMIN)
    assert status == 200 and deleted["deleted"] is True


def test_a_bad_name_on_the_command_line_is_one_line(tmp_path: Path):
    from tunelab.serve.server import parse_run_specs

    run = tmp_path / "run"
    with pytest.raises(TunelabError, match=r"^'bad name=.*': NAME: 'bad name' is not a valid model id"):
        parse_run_specs([f"bad name={run}"])
    assert parse_run_specs([f"good={run}"]) == [("good", str(run))]
