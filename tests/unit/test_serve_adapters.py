"""DoRA and QLoRA runs trained with `tunelab train`, hot-loaded by the server onto the tiny base: greedy answers
equal those of the run's model loaded the way tunelab loads it (the method's `load`), alone and in a mixed batch.

What the server does with a QLoRA run: it loads the run's adapter (an ordinary peft LoRA adapter) onto the base it
holds, which is the full-precision base, not the 4-bit NF4 base the adapter was trained on (the engine calls peft's
`load_adapter` on its one fp32 model). So a served QLoRA adapter is exactly "plain peft on the fp32 base"; the
trained 4-bit model (qlora's `load`) differs from it by the NF4 rounding of the base weights. Both facts are checked.
"""

from __future__ import annotations

import threading
import time
from contextlib import contextmanager
from pathlib import Path

import pytest
import torch
import yaml

from tests.conftest import reverse_rows, tiny_recipe, write_jsonl
from tunelab.methods.registry import get_method
from tunelab.models.load import load_causal_lm
from tunelab.serve.settings import ServeSettings

PROMPTS = ["abcd", "hgfe", "cabbage"]
MAX_TOKENS = 10
METHODS = {"dora": {"name": "dora", "r": 4, "alpha": 8, "dropout": 0.0},
           "qlora": {"name": "qlora", "r": 4, "alpha": 8, "dropout": 0.0, "block_size": 16}}


def cli(*args: str) -> int:
    """`tunelab ARGS` in this process; its exit code."""
    from tunelab.cli import main

    try:
        main(list(args))
    except SystemExit as exit:
        return exit.code or 0
    return 0


def train_with_cli(tmp: Path, checkpoint: Path, name: str) -> Path:
    # Each run learns to open its answer with its own name, so answers tell the adapters and the base apart.
    rows = [{"prompt": row["prompt"], "completion": f"{name} {row['prompt'][0]}"} for row in reverse_rows(60, seed=4)]
    data = write_jsonl(tmp / f"{name}.jsonl", rows)
    recipe = tiny_recipe(tmp, checkpoint, data, method=METHODS[name], output={"dir": str(tmp / name)},
                         train={"max_steps": 40, "lr": 2e-2, "save_every": 40, "eval_every": 40})
    path = tmp / f"{name}.yaml"
    path.write_text(yaml.safe_dump(recipe))
    assert cli("train", str(path), "--no-eval") == 0
    assert (tmp / name / "model" / "adapter_config.json").is_file()
    return tmp / name


@pytest.fixture(scope="module")
def runs(tmp_path_factory, tiny_checkpoint) -> dict[str, Path]:
    tmp = tmp_path_factory.mktemp("adapter-runs")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("TUNELAB_HOME", str(tmp / "home"))
        return {name: train_with_cli(tmp, tiny_checkpoint, name) for name in METHODS}


@contextmanager
def live_server(service):
    """The app on a loopback port, in a thread, as `tunelab serve` runs it; yields an openai client."""
    import openai
    import uvicorn

    from tunelab.serve.app import create_app
    from tunelab.serve.server import bind

    sock = bind("127.0.0.1", 0)
    server = uvicorn.Server(uvicorn.Config(create_app(service), log_level="warning"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    wait_for(lambda: server.started)
    try:
        yield openai.OpenAI(base_url=f"http://127.0.0.1:{sock.getsockname()[1]}/v1", api_key="none",
                            max_retries=0, timeout=60)
    finally:
        server.should_exit = True
        thread.join(20)


@pytest.fixture(scope="module")
def served(runs, tmp_path_factory):
    from tunelab.serve.server import build_service

    settings = ServeSettings(serve_dir=tmp_path_factory.mktemp("serve"), batch_wait=0.002)
    service = build_service([f"{name}={run}" for name, run in runs.items()], None, settings,
                            runs["dora"].parent / "home", say=lambda _: None)
    with live_server(service) as client:
        yield service, client


def wait_for(condition, seconds: float = 20) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, "timed out waiting"
        time.sleep(0.005)


def tuned(run: Path, method: str, checkpoint: Path):
    """The run's model, loaded by the method's own `load` (what tunelab generate and eval use)."""
    return get_method(method).load(lambda: load_causal_lm(checkpoint), run / "model").eval()


def greedy(model, tokenizer, prompt: str) -> str:
    """The greedy answer to one user message, decoded as the server decodes (up to the first stop token)."""
    from tunelab.data.templates import encode_prompt

    ids = encode_prompt(tokenizer, [{"role": "user", "content": prompt}])
    stops = {tokenizer.eos_token_id, model.generation_config.eos_token_id}
    with torch.no_grad():
        out = model.generate(input_ids=torch.tensor([ids]), attention_mask=torch.ones(1, len(ids), dtype=torch.long),
                             max_new_tokens=MAX_TOKENS, do_sample=False, eos_token_id=sorted(stops),
                             pad_token_id=tokenizer.pad_token_id)
    answer = []
    for token in out[0, len(ids):].tolist():
        if token in stops:
            break
        answer.append(token)
    return tokenizer.decode(answer, skip_special_tokens=True)


def ask(client, model: str, prompt: str) -> str:
    answer = client.chat.completions.create(model=model, messages=[{"role": "user", "content": prompt}],
                                            temperature=0, max_tokens=MAX_TOKENS)
    return answer.choices[0].message.content


@pytest.fixture(scope="module")
def expected(runs, tiny_checkpoint) -> dict[str, list[str]]:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(tiny_checkpoint))
    models = {"base": load_causal_lm(tiny_checkpoint).eval(),
              "dora": tuned(runs["dora"], "dora", tiny_checkpoint),
              "qlora-as-lora-on-fp32": tuned(runs["qlora"], "lora", tiny_checkpoint),  # plain peft, fp32 base
              "qlora-4bit": tuned(runs["qlora"], "qlora", tiny_checkpoint)}
    answers = {name: [greedy(model, tokenizer, prompt) for prompt in PROMPTS] for name, model in models.items()}
    assert answers["dora"][0].startswith("dora") and answers["qlora-4bit"][0].startswith("qlora")  # trained
    assert len({tuple(answers[name]) for name in ("base", "dora", "qlora-as-lora-on-fp32")}) == 3
    return answers


def test_a_dora_adapter_served_answers_as_the_trained_model(served, expected):
    service, client = served
    assert service.registry.get("dora").mixable is False  # peft cannot batch DoRA with other adapters
    assert [ask(client, "dora", prompt) for prompt in PROMPTS] == expected["dora"]


def test_a_qlora_adapter_is_served_on_the_full_precision_base(served, expected):
    _, client = served
    answers = [ask(client, "qlora", prompt) for prompt in PROMPTS]
    assert answers == expected["qlora-as-lora-on-fp32"]  # exact: the same computation


def test_the_served_qlora_adapter_is_not_the_4bit_model_it_was_trained_as(served, runs, tiny_checkpoint, expected):
    """The served adapter computes exactly what plain peft computes on the fp32 base; the trained 4-bit model
    differs from that by the NF4 rounding of the base weights: its logits are not equal (only its greedy answers
    agree here, because these answers win by a wide margin)."""
    service, _ = served
    ids = torch.tensor([[5, 17, 33, 42, 8, 9, 60, 61]])
    adapter = service.registry.get("qlora").adapter

    def engine_logits():  # on the engine thread, which owns the model
        service.engine.model.set_adapter(adapter)
        with torch.no_grad():
            return service.engine.model(input_ids=ids).logits

    served_logits = service.engine.call(engine_logits).result(timeout=60)
    with torch.no_grad():
        on_fp32 = tuned(runs["qlora"], "lora", tiny_checkpoint)(input_ids=ids).logits
        four_bit = tuned(runs["qlora"], "qlora", tiny_checkpoint)(input_ids=ids).logits
    assert torch.equal(served_logits, on_fp32)
    assert not torch.allclose(served_logits, four_bit, atol=1e-3)
    assert expected["qlora-4bit"] == expected["qlora-as-lora-on-fp32"]


def test_concurrent_dora_qlora_and_base_requests_get_their_own_answers(served, expected, tiny_checkpoint):
    service, client = served
    engine = service.engine
    gate = threading.Event()
    engine.call(gate.wait)  # hold the engine so that the three requests queue up together
    batches = engine.stats.batches
    models = {"dora": "dora", "qlora": "qlora-as-lora-on-fp32", tiny_checkpoint.name: "base"}
    answers: dict[str, str] = {}
    threads = [threading.Thread(target=lambda m=model: answers.update({m: ask(client, m, PROMPTS[0])}))
               for model in models]
    for thread in threads:
        thread.start()
    wait_for(lambda: engine.queue_depth() == 3)
    gate.set()
    for thread in threads:
        thread.join(60)
    assert engine.stats.batches == batches + 2  # DoRA on its own; the LoRA adapter and the base share a batch
    assert answers == {model: expected[name][0] for model, name in models.items()}
