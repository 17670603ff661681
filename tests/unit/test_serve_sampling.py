"""One request never fails another: a row whose sampling breaks (a temperature that overflows the softmax, a
streaming callback that raises, logits that are NaN) fails alone while the rest of its batch completes with the
same tokens as alone; sampling values that would break the sampler are clamped or refused with a 4xx naming them."""

from __future__ import annotations

import json
import threading
import time

import pytest
import torch

from tests.tiny import tiny_llama, tiny_tokenizer
from tests.unit.test_serve import LiveServer
from tunelab.serve.engine import Engine, Job
from tunelab.serve.rows import Row, RowSampler
from tunelab.serve.settings import ServeSettings


@pytest.fixture(scope="module")
def tiny():
    tokenizer = tiny_tokenizer()
    return tiny_llama(tokenizer), tokenizer


@pytest.fixture
def engine(tiny):
    model, tokenizer = tiny
    # a long batch_wait so that jobs submitted together surely share one batch
    engine = Engine(model, tokenizer.pad_token_id, max_batch_rows=8, batch_wait=0.5)
    engine.start()
    yield engine
    engine.stop()


def make_job(tokenizer, prompt: str, temperature: float = 0.0, seed: int = 0, emit=None, max_tokens: int = 12):
    done = threading.Event()
    job = Job(adapter=None, mixable=True, rows=[], on_done=lambda _: done.set(), deadline=time.monotonic() + 60)
    job.rows = [Row(index=0, prompt_ids=tokenizer(prompt)["input_ids"], max_tokens=max_tokens,
                    temperature=temperature, top_p=1.0, stop=[], stop_ids={tokenizer.eos_token_id},
                    tokenizer=tokenizer, generator=torch.Generator().manual_seed(seed), emit=emit,
                    is_cancelled=lambda: job.cancelled, deadline=job.deadline)]
    job.done = done
    return job


def run_together(engine: Engine, jobs: list[Job]) -> None:
    batches = engine.stats.batches
    for job in jobs:
        engine.submit(job)
    for job in jobs:
        assert job.done.wait(60)
    assert engine.stats.batches == batches + 1  # they did share one batch


def good_jobs(tokenizer) -> list[Job]:
    return [make_job(tokenizer, "abcd"), make_job(tokenizer, "hello", temperature=0.9, seed=3)]


def raising_emit(index: int, text: str, scores: list) -> None:
    raise RuntimeError("this client's stream broke")


@pytest.mark.parametrize("poison", [
    {"temperature": 1e-40},  # logits / 1e-40 overflow: softmax gives NaN and torch.multinomial raises
    {"emit": raising_emit},  # a hook that raises for one request only
])
def test_a_poisoned_request_fails_alone_and_its_batch_mates_answer_as_alone(engine, tiny, poison):
    _, tokenizer = tiny
    alone = good_jobs(tokenizer)
    for job in alone:
        run_together(engine, [job])
    together = good_jobs(tokenizer)
    poisoned = make_job(tokenizer, "xyz", **poison)
    run_together(engine, [together[0], poisoned, together[1]])

    assert poisoned.error is not None and poisoned.rows[0].finish_reason == "error"
    for mine, reference in zip(together, alone):
        assert mine.error is None and reference.error is None
        assert mine.rows[0].ids == reference.rows[0].ids and len(mine.rows[0].ids) == 12
        assert mine.rows[0].text == reference.rows[0].text
    assert engine.stats.failed_rows == 1


def test_a_row_with_nan_logits_fails_and_the_others_are_untouched(tiny):
    _, tokenizer = tiny
    rows = [make_job(tokenizer, "ab").rows[0], make_job(tokenizer, "cd", temperature=1.0).rows[0],
            make_job(tokenizer, "ef").rows[0]]
    scores = torch.randn(3, 20)
    scores[1, 4] = float("nan")
    before = scores.clone()
    after = RowSampler(rows)(torch.zeros(3, 2, dtype=torch.long), scores)
    assert rows[1].finish_reason == "error" and "not finite" in rows[1].failure
    assert rows[0].live and rows[2].live
    assert torch.equal(after[0], before[0]) and torch.equal(after[2], before[2])
    assert torch.isfinite(after[1]).any()  # generate still gets a valid next token for the failed row


@pytest.fixture(scope="module")
def server(tiny_checkpoint, tmp_path_factory):
    from tunelab.serve.server import build_service

    tmp = tmp_path_factory.mktemp("serve-sampling")
    service = build_service([], str(tiny_checkpoint), ServeSettings(serve_dir=tmp, max_tokens=32), tmp / "home",
                            say=lambda _: None)
    live = LiveServer(service)
    yield live
    live.stop()


def complete(server, **body) -> tuple[int, dict]:
    body = {"model": server.service.registry.base.id, "prompt": "hello", "max_tokens": 10, **body}
    status, _, answer = server.raw("POST", "/v1/completions", json.dumps(body).encode(), key=None)
    return status, answer


def test_a_tiny_temperature_is_greedy_not_a_500(server):
    status, greedy = complete(server, temperature=0)
    assert status == 200
    for tiny_temperature in (1e-40, 1e-7):
        status, answer = complete(server, temperature=tiny_temperature, seed=1)
        assert status == 200 and answer["choices"][0]["text"] == greedy["choices"][0]["text"]
    status, near = complete(server, temperature=1e-3, seed=1)  # raised to 0.01: still sampled, never NaN
    assert status == 200 and near["choices"][0]["finish_reason"] in ("length", "stop")
    status, top1 = complete(server, temperature=1.5, top_k=1, seed=5)
    assert status == 200 and top1["choices"][0]["text"] == greedy["choices"][0]["text"]


@pytest.mark.parametrize("field, value", [
    ("seed", 2**63), ("seed", 2**64 + 1), ("seed", -1),
    ("temperature", 2.5), ("temperature", -0.1), ("top_p", 0), ("top_k", -1),
    ("n", 0), ("n", 17), ("max_tokens", -1), ("frequency_penalty", 2.5),
])
def test_out_of_range_sampling_values_are_refused_naming_the_field(server, field, value):
    status, answer = complete(server, **{field: value})
    assert status == 422 and answer["error"]["param"] == field, answer


@pytest.mark.parametrize("field", ["temperature", "top_p"])
def test_nan_and_infinity_are_refused_naming_the_field(server, field):
    for literal in ("NaN", "Infinity"):
        body = f'{{"model": "{server.service.registry.base.id}", "prompt": "hi", "{field}": {literal}}}'
        status, _, answer = server.raw("POST", "/v1/completions", body.encode(), key=None)
        assert status == 422 and answer["error"]["param"] == field


def test_the_largest_seed_works_and_repeats(server):
    first = complete(server, seed=2**63 - 1, temperature=1.0)
    again = complete(server, seed=2**63 - 1, temperature=1.0)
    assert first[0] == 200 and first[1]["choices"][0]["text"] == again[1]["choices"][0]["text"]
