"""The real 135M model: a short LoRA run exports to GGUF that transformers reads back with the merged model's greedy
answers, and the server answers the openai client (chat and stream) with the run's adapter."""

import json
import threading
import time

import pytest
from rich.console import Console

from tunelab.config.load import load_recipe
from tunelab.train.lifecycle import run_recipe

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def real_run(real_home, real_model, tmp_path_factory):
    folder = tmp_path_factory.mktemp("deploy") / "run"
    recipe = load_recipe("recipes/quickstart.yaml", [
        f"output.dir={folder}", "train.max_steps=2", "train.batch_size=2", "train.eval_every=2",
        "train.save_every=2", "data.generate.rows=40", "eval.after_train=false",
    ])
    return run_recipe(recipe, real_home, Console(quiet=True), evaluate=False).run.root


def test_gguf_export_round_trips_with_the_merged_models_answers(real_run, real_home, tmp_path):
    from gguf import GGUFReader

    from tunelab.export.exporter import ExportOptions, export_run

    exported = export_run(real_run, ExportOptions(format="gguf", out=tmp_path / "gguf"), real_home, say=print)
    check = json.loads((exported.folder / "export.json").read_text())["verification"]
    assert check["same_greedy_answers"] == check["same_prompt_tokens"] == check["prompts"] == 3
    assert all(example["expected"] for example in check["examples"])  # real answers, not empty strings
    fields = GGUFReader(exported.folder / check_file(exported)).fields
    assert fields["tokenizer.ggml.pre"].contents() == "smollm"  # carried over from the built-in model's GGUF
    assert fields["tokenizer.ggml.padding_token_id"].contents() != fields["tokenizer.ggml.eos_token_id"].contents()


def check_file(exported):
    return json.loads((exported.folder / "export.json").read_text())["file"]


def test_server_answers_the_openai_client_with_the_runs_adapter(real_run, real_home, tmp_path):
    import openai
    import uvicorn

    from tunelab.cli.run import reply
    from tunelab.run.models import open_run_models
    from tunelab.serve.app import create_app
    from tunelab.serve.server import bind, build_service
    from tunelab.serve.settings import ServeSettings

    messages = [{"role": "system", "content": "You convert order notes to JSON."},
                {"role": "user", "content": "Note: Ana Silva needs 3 red mugs in Porto on Friday."}]
    models = open_run_models(real_run, real_home, "cpu")
    # the server's default on a CPU is float32, as is this reference answer
    expected = reply(models.inference().load_tuned(), models.tokenizer(), messages, 24, 0.0)
    service = build_service([f"quick={real_run}"], None, ServeSettings(serve_dir=tmp_path), real_home,
                            say=lambda _: None)
    sock = bind("127.0.0.1", 0)
    server = uvicorn.Server(uvicorn.Config(create_app(service), log_level="warning"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.01)
    try:
        client = openai.OpenAI(base_url=f"http://127.0.0.1:{sock.getsockname()[1]}/v1", api_key="x", max_retries=0)
        assert [m.id for m in client.models.list().data] == ["smollm2-135m-instruct", "quick"]
        answer = client.chat.completions.create(model="quick", messages=messages, temperature=0, max_tokens=24)
        assert answer.choices[0].message.content == expected and expected
        streamed = "".join(chunk.choices[0].delta.content or "" for chunk in client.chat.completions.create(
            model="quick", messages=messages, temperature=0, max_tokens=24, stream=True))
        assert streamed == expected
    finally:
        server.should_exit = True
        thread.join(30)
