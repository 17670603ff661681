"""With `--api-key`, /health is the only route open: /metrics, /openapi.json, /docs and unknown paths need a key;
`--metrics-key` opens /metrics (for a Prometheus scraper) and nothing else. /v1/models shows no server path.
Admin loads are confined by default to the working directory and $TUNELAB_HOME.

The server is a real `tunelab serve` process started in a folder of its own, so the CLI's options and defaults are
what is tested.
"""

from __future__ import annotations

import http.client
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.unit.test_serve import ADMIN, KEY, LiveServer, train_run
from tests.unit.test_serve_keys import free_port, stop, wait_for_health
from tunelab.errors import TunelabError
from tunelab.serve.runpaths import REFUSED
from tunelab.serve.settings import ServeSettings

METRICS_KEY = "scrape-key"


def fetch(port: int, method: str, path: str, key: str | None = None, body: dict | None = None) -> tuple[int, str]:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    headers = {"Content-Type": "application/json", **({"Authorization": f"Bearer {key}"} if key else {})}
    connection.request(method, path, body=json.dumps(body).encode() if body else None, headers=headers)
    response = connection.getresponse()
    status, text = response.status, response.read().decode()
    connection.close()
    return status, text


@pytest.fixture(scope="module")
def served(tiny_checkpoint, tmp_path_factory):
    """`tunelab serve --base TINY --api-key --metrics-key --admin-key`, started in work/, TUNELAB_HOME=home/;
    runs: work/runs/inside, home/runs/in-home, elsewhere/outside (all copies of one trained run)."""
    tunelab = Path(sys.executable).with_name("tunelab")
    if not tunelab.is_file():
        pytest.skip(f"{tunelab} is not installed")
    tmp = tmp_path_factory.mktemp("auth")
    (tmp / "train").mkdir()
    trained = train_run(tmp / "train", tiny_checkpoint, "run-x", seed=5)
    ignore = shutil.ignore_patterns("checkpoints", "merged", "tensorboard")
    runs = {where: Path(shutil.copytree(trained, tmp / folder, ignore=ignore))
            for where, folder in (("inside", "work/runs/inside"), ("in-home", "home/runs/in-home"),
                                  ("outside", "elsewhere/outside"))}
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("TUNELAB_")}
    log = (tmp / "serve.log").open("w")
    process = subprocess.Popen(
        [str(tunelab), "serve", "--base", str(tiny_checkpoint), "--port", str(port), "--threads", "1",
         "--api-key", KEY, "--metrics-key", METRICS_KEY, "--admin-key", ADMIN],
        cwd=tmp / "work", env={**env, "TUNELAB_HOME": str(tmp / "home")}, stdout=log, stderr=subprocess.STDOUT)
    try:
        wait_for_health(process, port, tmp / "serve.log")
        yield {"port": port, "runs": runs, "tmp": tmp}
    finally:
        stop(process)
        log.close()


def test_only_health_is_open(served):
    port = served["port"]
    assert fetch(port, "GET", "/health")[0] == 200
    for path in ("/metrics", "/openapi.json", "/docs", "/redoc", "/v1/models", "/tokenizer_info", "/no-such-route",
                 "/health/x"):
        status, text = fetch(port, "GET", path)
        assert status == 401 and json.loads(text)["error"]["type"] == "authentication_error", path
        assert fetch(port, "GET", path, key="wrong")[0] == 401, path


def test_the_api_key_opens_the_api_metrics_and_the_schema(served):
    port = served["port"]
    status, text = fetch(port, "GET", "/metrics", key=KEY)
    assert status == 200 and "tunelab_queue_depth" in text
    status, text = fetch(port, "GET", "/openapi.json", key=KEY)
    assert status == 200 and "/v1/chat/completions" in json.loads(text)["paths"]
    assert fetch(port, "GET", "/v1/models", key=KEY)[0] == 200
    assert fetch(port, "GET", "/tokenizer_info", key=KEY)[0] == 200


def test_the_metrics_key_opens_metrics_only(served):
    port = served["port"]
    status, text = fetch(port, "GET", "/metrics", key=METRICS_KEY)
    assert status == 200 and "tunelab_requests_total" in text
    for method, path in (("GET", "/v1/models"), ("GET", "/openapi.json"), ("POST", "/v1/adapters")):
        assert fetch(port, method, path, key=METRICS_KEY)[0] == 401, path


def test_models_show_no_server_path(served):
    port = served["port"]
    status, text = fetch(port, "POST", "/v1/adapters", key=ADMIN, body={"run": "runs/inside"})
    assert status == 200, text
    status, text = fetch(port, "GET", "/v1/models", key=KEY)
    models = json.loads(text)["data"]
    assert [model["id"] for model in models] == ["tiny-llama", "inside"]
    assert all("root" not in model for model in models)
    assert str(served["tmp"]) not in text and "/tmp" not in text  # no absolute path, of the base or of the run


def test_admin_loads_are_confined_to_the_working_directory_and_home_by_default(served):
    port = served["port"]
    status, text = fetch(port, "POST", "/v1/adapters", key=ADMIN,
                         body={"run": str(served["runs"]["in-home"]), "name": "home-run"})
    assert status == 200, text
    for outside in (str(served["runs"]["outside"]), "../elsewhere/outside", "/etc"):
        status, text = fetch(port, "POST", "/v1/adapters", key=ADMIN, body={"run": outside, "name": "far"})
        assert status == 400 and json.loads(text)["error"]["message"] == REFUSED, outside


def test_runs_roots_default_and_given(tmp_path):
    from tunelab.cli.serve import runs_roots

    assert runs_roots(None, tmp_path / "home") == (Path.cwd(), tmp_path / "home")
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    assert runs_roots([tmp_path / "a", tmp_path / "b"], tmp_path / "home") == (tmp_path / "a", tmp_path / "b")
    with pytest.raises(TunelabError, match=r"^--runs-root .*/typo: not a folder$"):
        runs_roots([tmp_path / "a", tmp_path / "typo"], tmp_path / "home")


def test_without_api_keys_a_metrics_key_still_guards_metrics(tiny_checkpoint, tmp_path):
    from tunelab.serve.server import build_service

    settings = ServeSettings(serve_dir=tmp_path / "serve", metrics_key=METRICS_KEY)
    server = LiveServer(build_service([], str(tiny_checkpoint), settings, tmp_path / "home", say=lambda _: None))
    try:
        assert server.raw("GET", "/metrics", key=None)[0] == 401
        assert server.raw("GET", "/metrics", key=METRICS_KEY)[0] == 200
        assert server.raw("GET", "/v1/models", key=None)[0] == 200  # the API itself is open without --api-key
    finally:
        server.stop()
