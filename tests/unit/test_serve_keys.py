"""`tunelab serve` really requires the API key it was given through `$TUNELAB_API_KEY` or `--api-keys-file`.

The servers are real `tunelab serve` processes started as users start them (so the CLI's own option parsing and
key-file reading are what is tested): no key or a wrong key is 401 in OpenAI's error shape, the right key gets a
chat completion. A keys file that is missing or holds no key is one `error:` line, exit code 2, and the port is
left free.
"""

from __future__ import annotations

import http.client
import json
import os
import socket
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import pytest

from tests.unit.test_cli import invoke, one_error_line

TUNELAB = Path(sys.executable).with_name("tunelab")
CHAT = {"model": "tiny-llama", "messages": [{"role": "user", "content": "abcd"}], "max_tokens": 4,
        "temperature": 0}
REFUSED = {"error": {"message": "Missing or wrong API key (Authorization: Bearer <key>)",
                     "type": "authentication_error", "param": None, "code": None}}
KEYS_FILE = ("# keys of the demo clients\n\n  first-key  \nsecond-key inference\n\n# retired-key\n"
             "tuner-key fine-tuning\nboth-key inference, fine-tuning\n")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def port_is_free(port: int) -> bool:
    with socket.socket() as sock:  # no SO_REUSEADDR: fails while any socket still listens there
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def request(port: int, method: str, path: str, key: str | None, body: dict | None = None) -> tuple[int, dict]:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    headers = {"Content-Type": "application/json", **({"Authorization": f"Bearer {key}"} if key else {})}
    connection.request(method, path, body=json.dumps(body).encode() if body else None, headers=headers)
    response = connection.getresponse()
    status, data = response.status, response.read()
    connection.close()
    return status, json.loads(data)


def chat(port: int, key: str | None) -> tuple[int, dict]:
    return request(port, "POST", "/v1/chat/completions", key, CHAT)


@contextmanager
def serving(checkpoint: Path, tmp: Path, *options: str, env: dict[str, str]):
    """A `tunelab serve` process on a free port; yields the port once GET /health answers."""
    if not TUNELAB.is_file():
        pytest.skip(f"{TUNELAB} is not installed")
    port = free_port()
    clean_env = {k: v for k, v in os.environ.items() if k not in ("TUNELAB_API_KEY", "TUNELAB_ADMIN_KEY")}
    log = (tmp / "serve.log").open("w")
    process = subprocess.Popen(
        [str(TUNELAB), "serve", "--base", str(checkpoint), "--port", str(port), "--serve-dir", str(tmp / "serve"),
         "--threads", "1", *options],
        env={**clean_env, "TUNELAB_HOME": str(tmp / "home"), **env}, stdout=log, stderr=subprocess.STDOUT)
    try:
        wait_for_health(process, port, tmp / "serve.log")
        yield port
    finally:
        stop(process)
        log.close()


def stop(process: subprocess.Popen) -> None:
    """Ask the server to stop (SIGTERM: uvicorn's graceful shutdown); kill it if it has not stopped in 20 s."""
    process.terminate()
    try:
        process.wait(20)
    except subprocess.TimeoutExpired:
        process.kill()


def wait_for_health(process: subprocess.Popen, port: int, log: Path, seconds: float = 120) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        assert process.poll() is None, f"tunelab serve exited with {process.returncode}:\n{log.read_text()}"
        try:
            if request(port, "GET", "/health", None)[0] == 200:
                return
        except OSError:
            pass
        time.sleep(0.2)
    raise AssertionError(f"tunelab serve did not answer /health in {seconds} s:\n{log.read_text()}")


@pytest.fixture(scope="module")
def env_key_server(tiny_checkpoint, tmp_path_factory):
    with serving(tiny_checkpoint, tmp_path_factory.mktemp("env-key"), env={"TUNELAB_API_KEY": "env-key"}) as port:
        yield port


@pytest.fixture(scope="module")
def keys_file_server(tiny_checkpoint, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("keys-file")
    keys = tmp / "keys.txt"
    keys.write_text(KEYS_FILE)
    with serving(tiny_checkpoint, tmp, "--api-keys-file", str(keys), env={}) as port:
        yield port


def assert_answers(status: int, body: dict) -> None:
    assert status == 200, body
    assert body["object"] == "chat.completion" and body["model"] == "tiny-llama"
    assert body["choices"][0]["message"]["role"] == "assistant"
    assert 1 <= body["usage"]["completion_tokens"] <= 4


def test_the_environment_variable_key_is_required(env_key_server):
    assert chat(env_key_server, None) == (401, REFUSED)
    assert chat(env_key_server, "wrong-key") == (401, REFUSED)
    assert request(env_key_server, "GET", "/v1/models", None) == (401, REFUSED)
    assert_answers(*chat(env_key_server, "env-key"))


def test_every_key_of_the_keys_file_works_and_comments_are_not_keys(keys_file_server):
    assert_answers(*chat(keys_file_server, "first-key"))  # written with spaces around it
    assert_answers(*chat(keys_file_server, "second-key"))
    for key in (None, "wrong-key", "# retired-key", "retired-key", "env-key"):
        assert chat(keys_file_server, key) == (401, REFUSED), key


def test_keys_have_scopes_inference_keys_cannot_fine_tune(keys_file_server):
    """An inference key uses the model but gets 403 from the files and fine-tuning API; a fine-tuning key does
    both; no key is 401 everywhere."""
    for key in ("first-key", "second-key"):
        status, body = request(keys_file_server, "GET", "/v1/fine_tuning/jobs", key)
        assert status == 403 and "not the files and fine-tuning API" in body["error"]["message"]
        assert request(keys_file_server, "GET", "/v1/files", key)[0] == 403
    for key in ("tuner-key", "both-key"):
        assert_answers(*chat(keys_file_server, key))
        status, body = request(keys_file_server, "GET", "/v1/fine_tuning/jobs", key)
        assert status == 200 and body["object"] == "list"
        assert request(keys_file_server, "GET", "/v1/files", key)[0] == 200
    assert request(keys_file_server, "GET", "/v1/files", None) == (401, REFUSED)


def test_a_wrong_key_with_a_non_ascii_letter_is_401(keys_file_server):
    assert chat(keys_file_server, "cl\u00e9") == (401, REFUSED)


def test_an_environment_key_with_a_space_is_one_key(tiny_checkpoint, tmp_path):
    with serving(tiny_checkpoint, tmp_path, env={"TUNELAB_API_KEY": "open sesame"}) as port:
        assert chat(port, "open") == (401, REFUSED)
        assert_answers(*chat(port, "open sesame"))


@pytest.mark.parametrize("content, problem", [
    (None, ": file not found"), ("# only a comment\n\n   \n", ": holds no key"),
    ("a-key\nb-key admin\n", ":2: unknown scope 'admin' (scopes: inference, fine-tuning)")])
def test_a_bad_keys_file_is_one_line_exit_2_and_leaves_the_port_free(capsys, tmp_path, home, tiny_checkpoint,
                                                                     content, problem):
    keys = tmp_path / "keys.txt"
    if content is not None:
        keys.write_text(content)
    port = free_port()
    code, _, err = invoke(capsys, "serve", "--base", str(tiny_checkpoint), "--port", str(port),
                          "--serve-dir", str(tmp_path / "serve"), "--api-keys-file", str(keys))
    assert code == 2
    assert one_error_line(err) == f"error: --api-keys-file {keys}{problem}"
    assert port_is_free(port)
    if content is not None:
        assert keys.read_text() == content


def test_a_base_that_fails_to_load_after_the_port_is_bound_frees_it(capsys, tmp_path, home):
    keys = tmp_path / "keys.txt"
    keys.write_text("first-key\n")
    port = free_port()
    code, _, err = invoke(capsys, "serve", "--base", str(tmp_path / "no-model"), "--port", str(port),
                          "--serve-dir", str(tmp_path / "serve"), "--api-keys-file", str(keys))
    assert code == 2
    assert str(tmp_path / "no-model") in one_error_line(err)
    assert port_is_free(port)
