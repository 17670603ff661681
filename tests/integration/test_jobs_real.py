"""A real fine-tuning job on the built-in model, end to end through the official openai client: upload OpenAI
chat rows, create a supervised job, the worker trains and evaluates it against the base, and the finished model
answers chat completions as the run itself does."""

from __future__ import annotations

import json

import openai
import pytest

from tests.unit.test_jobs_api import wait_for
from tests.unit.test_serve import LiveServer
from tunelab.data.synthetic import generate_rows
from tunelab.models.catalog import DEFAULT_MODEL

pytestmark = pytest.mark.integration
SYSTEM = "You convert order notes to JSON."


def test_a_real_job_trains_is_evaluated_and_answers(real_home, real_model, tmp_path):
    from tunelab.cli.run import reply
    from tunelab.jobs.worker import run_worker
    from tunelab.run.models import open_run_models
    from tunelab.serve.server import build_service
    from tunelab.serve.settings import ServeSettings

    rows = [{"messages": [{"role": "system", "content": SYSTEM}, {"role": "user", "content": row["prompt"]},
                          {"role": "assistant", "content": row["completion"]}]}
            for row in generate_rows("notes-to-json", 80, seed=3)]
    settings = ServeSettings(serve_dir=tmp_path / "serve", fine_tune_keys=frozenset({"sk-test"}), max_tokens=64)
    server = LiveServer(build_service([], DEFAULT_MODEL, settings, real_home, say=lambda _: None))
    try:
        client = server.client("sk-test")
        upload = client.files.create(file=("train.jsonl", "".join(json.dumps(r) + "\n" for r in rows).encode()),
                                     purpose="fine-tune")
        job = client.fine_tuning.jobs.create(
            model=DEFAULT_MODEL, training_file=upload.id, suffix="notes",
            extra_body={"tunelab": {"train": {"max_steps": 4, "lr": 5e-4, "batch_size": 4, "log_every": 2},
                                    "eval": {"max_rows": 4, "max_new_tokens": 48, "bootstrap": 100,
                                             "forgetting": {"enabled": False},
                                             "risks": {"enabled": False}}}})
        run_worker(tmp_path / "serve", real_home, "cpu", say=lambda _: None, once=True)
        job = client.fine_tuning.jobs.retrieve(job.id)
        assert job.status == "succeeded", job.error
        assert job.fine_tuned_model == f"ft:{DEFAULT_MODEL}:notes:{job.id}" and job.trained_tokens > 0
        messages = [event.message for event in client.fine_tuning.jobs.list_events(job.id, limit=100)]
        assert any(message.startswith("Evaluation on 4 held-out rows: ") for message in messages), messages
        prompt = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": rows[0]["messages"][1]["content"]}]
        models = open_run_models(tmp_path / "serve" / "jobs" / job.id / "run", real_home, "cpu")
        expected = reply(models.inference().load_tuned(), models.tokenizer(), prompt, 32, 0.0)
        wait_for(lambda: job.fine_tuned_model in [model.id for model in client.models.list()])
        answer = client.chat.completions.create(model=job.fine_tuned_model, messages=prompt, max_tokens=32,
                                                temperature=0)
        assert answer.choices[0].message.content == expected and expected
    except openai.APIError as error:
        raise AssertionError(f"{error}: {getattr(error, 'body', '')}") from None
    finally:
        server.stop()
