"""The loop after deployment on a tiny model, through the project's own commands and a real server on a loopback
port: a name in service, in-distribution then shifted traffic with feedback, drift and quality flagged by `tunelab
monitor`, a retrain with the feedback promoted by the gate (the name then answers with it), and a rollback.
(examples/service_loop.py is the same scenario on the quick-start model, run by tests/integration.)"""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest

from tests.conftest import reverse_rows, tiny_recipe, train_recipe, unique_words, write_jsonl
from tests.unit.test_cli import invoke
from tests.unit.test_serve import ADMIN, KEY, LiveServer
from tunelab.deploy import versions
from tunelab.serve.settings import ServeSettings

NAME = "support-bot"
# Short French phrases (the tiny recipe's rows are at most 64 characters, prompt and answer together)
FRENCH = ["bonjour", "merci", "colis", "commande", "compte", "demain", "soir", "avec", "pour", "dans", "vous",
          "nous", "chez", "rouge", "livre", "porte", "ville", "jour", "carte", "prix"]


@pytest.fixture(scope="module")
def loop(tmp_path_factory, tiny_checkpoint):
    root = tmp_path_factory.mktemp("loop")
    home = root / "home"
    data = write_jsonl(root / "reverse.jsonl", reverse_rows(60))
    weak = tiny_recipe(root / "v1", tiny_checkpoint, data, train={"max_steps": 1, "lr": 1e-3},
                       eval={"bootstrap": 300})
    weak["objective"] = {"metric": "loss", "max": 100.0}
    run = train_recipe(weak, home).root
    strong = {**weak, "train": {**weak["train"], "max_steps": 60, "lr": 3e-2}}
    strong.pop("output")
    recipe = root / "strong.json"
    recipe.write_text(json.dumps(strong))
    return {"root": root, "home": home, "run": run, "recipe": recipe}


def test_shifted_traffic_is_flagged_retrained_promoted_and_rolled_back(loop, capsys, monkeypatch):
    from tunelab.jobs.worker import run_worker
    from tunelab.serve.server import build_service

    monkeypatch.setenv("TUNELAB_HOME", str(loop["home"]))
    serve = loop["root"] / "serve"
    code, out, err = invoke(capsys, "promote", NAME, str(loop["run"]), "--serve-dir", str(serve), "--by", "test")
    assert code == 0, err
    settings = ServeSettings(serve_dir=serve, api_keys=frozenset({KEY}), admin_key=ADMIN, max_tokens=16,
                             batch_wait=0.002, log_content=True, monitor_every=0)
    live = LiveServer(build_service([], None, settings, loop["home"], say=lambda _: None))
    try:
        client = live.client()
        rng = random.Random(5)
        normal = unique_words(25, "abcdefgh", seed=99)
        shifted = [" ".join(rng.sample(FRENCH, 3)) for _ in range(25)]
        for prompt, happy in [(word, True) for word in normal] + [(text, False) for text in shifted]:
            answer = client.chat.completions.create(model=NAME, messages=[{"role": "user", "content": prompt}],
                                                    temperature=0, max_tokens=16)
            body = {"completion_id": answer.id, "rating": "up" if happy else "down"}
            if not happy:
                body["correction"] = prompt[::-1]  # what the model was meant to do: write it backwards
            client.post("/feedback", body=body, cast_to=object)

        code, out, err = invoke(capsys, "monitor", str(serve), "--since", "1h", "--json", "--no-embeddings")
        assert code == 0, err
        flagged = {(score["kind"], score["name"]) for score in json.loads(out)["scores"] if score["flagged"]}
        # random letter strings have no language and no n-gram profile a shift could move away from: the length of
        # the French sentences is the drift this data can show (tests/unit/test_drift.py covers the other scores)
        assert {("drift", "length_distance"), ("quality", "thumbs_up_rate"), ("quality", "correction_rate")} \
            <= flagged, flagged

        from tunelab.cli.deploy import flag_reader

        # what `tunelab retrain --on-flag` reads: the same flags, named
        assert {"drift length_distance", "quality thumbs_up_rate"} <= set(flag_reader(serve, NAME, 3600)())
        status, _, page = live.raw("GET", "/ui/monitor?since=1h", headers={"Accept": "text/html"})
        assert status == 200 and "FLAGGED" in page["text"] and "length_distance" in page["text"]

        code, out, err = invoke(capsys, "retrain", str(serve), "--model", NAME, "--with-feedback",
                                "--recipe", str(loop["recipe"]))
        assert code == 0, err
        job_id = out.split()[0]
        run_worker(serve, loop["home"], "cpu", say=lambda _: None, once=True)
        jobs = live.client(ADMIN).fine_tuning.jobs
        job = jobs.retrieve(job_id)  # every retrain is a job of the job service
        assert job.status == "succeeded" and job.model == NAME
        promotion = job.model_extra["tunelab"]["verdict"]["promotion"]
        assert promotion["promoted"], promotion
        events = [event.message for event in jobs.list_events(job_id, limit=100)]
        assert any(message.startswith("Promoted: support-bot v2") for message in events), events
        live.service.deployments.sync()  # what its thread does every second
        assert live.service.registry.get(NAME).version == 2
        answer = client.chat.completions.create(model=NAME, messages=[{"role": "user", "content": "abc"}],
                                                temperature=0, max_tokens=4)
        assert answer.model == NAME

        code, out, err = invoke(capsys, "rollback", NAME, "--serve-dir", str(serve), "--reason", "test")
        assert code == 0, err
        live.service.deployments.sync()
        assert live.service.registry.get(NAME).version == 1
        states = {version.number: version.status for version in versions.versions(serve, NAME)}
        assert states == {1: "serving", 2: "rolled_back"}
        code, out, err = invoke(capsys, "versions", NAME, "--serve-dir", str(serve))
        assert code == 0 and "rolled_back" in out and "serving" in out
    finally:
        live.stop()
    assert Path(versions.find(serve, NAME, "v2").run_dir).is_dir()
