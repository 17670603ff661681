"""POST /v1/adapters loads runs only from inside the server's --runs-root folders (serve/runpaths.py).

Symlinks are resolved before the check, so a run.json linked to a file outside the roots is refused without being
read; a path outside, missing, too long, not a run or without its tokenizer all get the same 400 text (an admin
cannot probe which paths exist), never a 500. A run inside the roots, named directly or through a symlink that stays
inside, loads.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from tests.tiny import save_tiny_checkpoint
from tests.unit.test_serve import ADMIN, HELLO, KEY, LiveServer, train_run
from tunelab.serve.runpaths import REFUSED, RunRefused, confined_run
from tunelab.serve.settings import ServeSettings


@pytest.fixture(scope="module")
def trained(tmp_path_factory, tiny_checkpoint) -> Path:
    return train_run(tmp_path_factory.mktemp("trained"), tiny_checkpoint, "run-t", seed=3)


@pytest.fixture(scope="module")
def layout(tmp_path_factory, trained) -> dict[str, Path]:
    """roots/good (a real run), roots/no-tokenizer, roots/shadow (run.json -> a copy outside the roots),
    roots/linked -> roots/good, roots/escape -> the run outside; outside/run (a real run, outside the roots)."""
    base = tmp_path_factory.mktemp("layout")
    roots, outside = base / "roots", base / "outside"
    roots.mkdir()
    outside.mkdir()
    ignore = shutil.ignore_patterns("checkpoints", "merged", "tensorboard")
    good = Path(shutil.copytree(trained, roots / "good", ignore=ignore))
    far = Path(shutil.copytree(trained, outside / "run", ignore=ignore))
    no_tokenizer = Path(shutil.copytree(good, roots / "no-tokenizer"))
    for name in ("tokenizer.json", "tokenizer_config.json"):
        (no_tokenizer / "model" / name).unlink()
    shadow = Path(shutil.copytree(good, roots / "shadow"))
    (shadow / "run.json").unlink()
    (shadow / "run.json").symlink_to(far / "run.json")  # a valid run.json, but outside: stands for /etc/shadow
    (roots / "linked").symlink_to(good)
    (roots / "escape").symlink_to(far)
    other = Path(shutil.copytree(good, roots / "other-base"))
    record = json.loads((other / "run.json").read_text())
    record["recipe"]["model"]["name"] = str(save_tiny_checkpoint(base / "other-tiny", seed=9))
    (other / "run.json").write_text(json.dumps(record))
    (roots / "linked-other").symlink_to(other)
    corrupt = Path(shutil.copytree(good, roots / "corrupt"))
    (corrupt / "model" / "adapter_model.safetensors").write_bytes(b"\0" * 100)
    return {"roots": roots, "outside": outside, "good": good, "far": far, "no_tokenizer": no_tokenizer,
            "shadow": shadow, "linked": roots / "linked", "escape": roots / "escape", "base": base}


def refused_paths(layout: dict[str, Path]) -> dict[str, str]:
    roots = layout["roots"]
    return {
        "outside": str(layout["far"]),
        "etc": "/etc",
        "shadow file": "/etc/shadow",
        "missing": str(roots / "nothing-here"),
        "dotdot": str(roots / ".." / "outside" / "run"),
        "too long": str(roots / ("x" * 6000)),
        "long component": str(roots / ("y" * 300)),
        "nul": str(roots) + "/\x00good",
        "not a run": str(roots),
        "a file": str(layout["good"] / "run.json"),
        "no tokenizer": str(layout["no_tokenizer"]),
        "symlinked run.json": str(layout["shadow"]),
        "symlink out": str(layout["escape"]),
        "empty": "",
    }


def test_runs_inside_the_roots_resolve_and_everything_else_is_the_same_refusal(layout):
    roots = (layout["roots"],)
    assert confined_run(str(layout["good"]), roots) == layout["good"].resolve()
    assert confined_run(str(layout["linked"]), roots) == layout["good"].resolve()  # a link that stays inside
    for why, path in refused_paths(layout).items():
        with pytest.raises(RunRefused) as refused:
            confined_run(path, roots)
        assert str(refused.value) == REFUSED, why
    with pytest.raises(RunRefused):
        confined_run(str(layout["good"]), ())  # no roots: nothing is loadable


def test_the_admin_endpoint_answers_one_400_for_every_bad_path_and_loads_the_good_one(layout, tiny_checkpoint):
    from tunelab.serve.server import build_service

    settings = ServeSettings(serve_dir=layout["base"] / "serve", api_keys=frozenset({KEY}), admin_key=ADMIN,
                             runs_roots=(layout["roots"],), max_tokens=16)
    service = build_service([], str(tiny_checkpoint), settings, layout["base"] / "home", say=lambda _: None)
    server = LiveServer(service)
    try:
        answers = {why: server.raw("POST", "/v1/adapters", json.dumps({"run": path}).encode(), key=ADMIN)
                   for why, path in refused_paths(layout).items()}
        for why, (status, _, body) in answers.items():
            assert status == 400, (why, body)
            assert body["error"] == {"message": REFUSED, "type": "invalid_request_error", "param": "run",
                                     "code": None}, why
        status, _, body = server.raw("POST", "/v1/adapters", json.dumps({"run": str(layout["roots"] / "corrupt")}
                                                                          ).encode(), key=ADMIN)
        assert status == 400 and body["error"]["message"] == REFUSED  # its weights do not load: invalid too
        # a readable run inside the roots that cannot join this base is told why, named as the admin gave it
        given = str(layout["roots"] / "linked-other")
        status, _, body = server.raw("POST", "/v1/adapters", json.dumps({"run": given}).encode(), key=ADMIN)
        assert status == 400 and body["error"]["message"].startswith(f"{given}: trained on base model"), body
        status, _, card = server.raw("POST", "/v1/adapters", json.dumps({"run": str(layout["linked"]),
                                                                         "name": "good"}).encode(), key=ADMIN)
        assert status == 200 and card["id"] == "good"
        answer = server.client().chat.completions.create(model="good", messages=HELLO, temperature=0, max_tokens=4)
        assert answer.model == "good"
    finally:
        server.stop()


def test_a_run_named_on_the_command_line_is_not_confined(layout, tiny_checkpoint):
    """The operator's own choice: `tunelab serve RUN` loads a run outside every --runs-root."""
    from tunelab.serve.server import build_service

    settings = ServeSettings(serve_dir=layout["base"] / "serve-cli", runs_roots=(layout["roots"],))
    service = build_service([f"far={layout['far']}"], None, settings, layout["base"] / "home", say=lambda _: None)
    try:
        assert service.registry.get("far") is not None
    finally:
        service.close()
