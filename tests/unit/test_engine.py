"""Continuous batching in the engine: a request that arrives while a batch decodes joins it at the next step and a
short one finishes long before the long one; a cancelled request leaves at once and the others go on; each request
keeps its own sampling in a shared batch; mixable adapters and the base share a batch (DoRA waits for it to drain);
and greedy answers equal, token for token (fp32), those of the request run alone, whoever joins or leaves meanwhile.

Arrivals and cancels happen at exact steps: a row's `is_cancelled` is asked once per new token on the engine
thread, so the tests hook it to act at a given token of a given request.
"""

from __future__ import annotations

import threading
import time
from typing import Callable

import pytest
import torch

from tests.tiny import tiny_llama, tiny_tokenizer
from tunelab.serve.batch_cache import Decoding, join, keep, prefill_positions
from tunelab.serve.engine import Engine, Job
from tunelab.serve.rows import Row

PROMPTS = ["abcd", "hello there, how are you", "x", "The quick brown fox", "0123456789 abc"]


@pytest.fixture(scope="module")
def tokenizer():
    return tiny_tokenizer()


def varied_llama(tokenizer, seed: int = 1):
    """The tiny Llama with larger random weights, so that greedy answers vary from token to token."""
    model = tiny_llama(tokenizer, hidden_size=64)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter in model.parameters():
            if parameter.dim() == 2:
                parameter.normal_(0, 0.3, generator=generator)
    return model


@pytest.fixture
def engine(tokenizer):
    engine = Engine(varied_llama(tokenizer), tokenizer.pad_token_id, max_batch_rows=8, batch_wait=0.05)
    engine.start()
    yield engine
    engine.stop()


def make_job(tokenizer, prompt: str, max_tokens: int = 24, temperature: float = 0.0, seed: int = 0, n: int = 1,
             top_k: int = 0, top_p: float = 1.0, logprobs: int | None = None, adapter: str | None = None,
             mixable: bool = True, stops: bool = True) -> Job:
    done = threading.Event()

    def finished(job: Job) -> None:
        job.on_finish(job)
        done.set()

    job = Job(adapter=adapter, mixable=mixable, rows=[], on_done=finished, deadline=time.monotonic() + 60)
    generator = torch.Generator().manual_seed(seed)
    job.rows = [Row(index=index, prompt_ids=tokenizer(prompt)["input_ids"], max_tokens=max_tokens,
                    temperature=temperature, top_p=top_p, stop=[], tokenizer=tokenizer, generator=generator,
                    stop_ids={tokenizer.eos_token_id} if stops else set(), emit=None,
                    is_cancelled=lambda: job.cancelled, deadline=job.deadline, top_k=top_k, logprobs=logprobs)
                for index in range(n)]
    job.done = done
    job.on_finish = lambda _: None
    return job


def at_token(job: Job, token: int, action: Callable[[], None]) -> None:
    """Run `action` on the engine thread when `job`'s first row receives its `token`-th new token."""
    row, calls, before = job.rows[0], [0], job.rows[0].is_cancelled

    def is_cancelled() -> bool:
        calls[0] += 1
        if calls[0] == token:
            action()
        return before()

    row.is_cancelled = is_cancelled


def wait(*jobs: Job) -> None:
    for job in jobs:
        assert job.done.wait(60), "the engine did not finish the request"


def answer(job: Job) -> list[tuple[list[int], str | None]]:
    return [(row.ids, row.finish_reason) for row in job.rows]


def alone(engine: Engine, make: Callable[[], Job]) -> Job:
    job = make()
    engine.submit(job)
    wait(job)
    return job


def test_a_short_request_that_arrives_during_a_long_one_joins_it_and_finishes_first(engine, tokenizer):
    long = make_job(tokenizer, PROMPTS[0], max_tokens=300, stops=False)
    short = make_job(tokenizer, PROMPTS[1], max_tokens=5, stops=False)
    long_tokens_when_short_ended = []
    short.on_finish = lambda _: long_tokens_when_short_ended.append(len(long.rows[0].ids))
    at_token(long, 5, lambda: engine.submit(short))
    batches = engine.stats.batches
    engine.submit(long)
    wait(long, short)

    assert len(long.rows[0].ids) == 300 and len(short.rows[0].ids) == 5
    # It joined at the next step and left after its 5 tokens: the long one had ~10 of its 300, not all of them.
    assert long_tokens_when_short_ended[0] <= 5 + 5 + 1
    assert short.finished < long.finished and short.started < long.finished
    assert engine.stats.batches == batches + 1  # one batch, joined, not a second one after the first


def test_a_cancelled_request_leaves_at_once_and_the_others_go_on(engine, tokenizer):
    def pair() -> tuple[Job, Job]:
        return (make_job(tokenizer, PROMPTS[3], max_tokens=200, stops=False),
                make_job(tokenizer, PROMPTS[4], max_tokens=200, stops=False))

    _, reference = pair()
    engine.submit(reference)
    wait(reference)
    gone, kept = pair()
    at_token(gone, 10, gone.cancel)
    kept_tokens_when_gone_ended = []
    gone.on_finish = lambda _: kept_tokens_when_gone_ended.append(len(kept.rows[0].ids))
    cancelled, steps = engine.stats.cancelled, engine.stats.steps
    engine.submit(gone)
    engine.submit(kept)
    wait(gone, kept)

    assert gone.rows[0].finish_reason == "cancelled" and len(gone.rows[0].ids) == 9
    assert gone.error is None and engine.stats.cancelled == cancelled + 1
    assert kept_tokens_when_gone_ended[0] <= 11  # it left at the step it was cancelled, not at the end
    assert answer(kept) == answer(reference) and len(kept.rows[0].ids) == 200
    assert engine.stats.steps - steps == 200  # the batch went on for the kept one only as long as it needed


def test_a_request_past_its_deadline_leaves_with_a_timeout_and_the_others_go_on(engine, tokenizer):
    late = make_job(tokenizer, PROMPTS[0], max_tokens=200, stops=False)
    other = make_job(tokenizer, PROMPTS[1], max_tokens=30, stops=False)
    at_token(late, 5, lambda: setattr(late, "deadline", 0.0))
    engine.submit(late)
    engine.submit(other)
    wait(late, other)
    assert late.rows[0].finish_reason == "timeout" and len(late.rows[0].ids) <= 6
    assert other.rows[0].finish_reason == "length" and len(other.rows[0].ids) == 30


def test_greedy_answers_equal_those_alone_whoever_joins_or_leaves(engine, tokenizer):
    model = engine.model

    def jobs() -> list[Job]:
        return [make_job(tokenizer, PROMPTS[0], max_tokens=60), make_job(tokenizer, PROMPTS[1], max_tokens=20),
                make_job(tokenizer, PROMPTS[2], max_tokens=40), make_job(tokenizer, PROMPTS[3], max_tokens=30),
                make_job(tokenizer, PROMPTS[4], max_tokens=50, n=2)]

    references = [alone(engine, lambda job=job: job) for job in jobs()]
    # The engine's own loop, alone, is HF generate's greedy decoding.
    for job in references[:2]:
        ids = torch.tensor([job.rows[0].prompt_ids])
        generated = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), do_sample=False,
                                   max_new_tokens=job.rows[0].max_tokens, eos_token_id=tokenizer.eos_token_id,
                                   pad_token_id=tokenizer.pad_token_id)[0, ids.shape[1]:].tolist()
        assert job.rows[0].ids == [token for token in generated if token != tokenizer.eos_token_id]
    assert len({tuple(job.rows[0].ids) for job in references}) == len(references)  # the answers differ

    first, second, third, fourth, fifth = jobs()
    at_token(first, 3, lambda: engine.submit(second))  # joins mid-way
    at_token(first, 7, lambda: (engine.submit(third), engine.submit(fourth)))  # two join at once, prefilled together
    at_token(fifth, 12, fifth.cancel)  # leaves mid-way: the others' cache rows are selected and trimmed
    engine.submit(first)
    engine.submit(fifth)
    wait(first, second, third, fourth, fifth)

    for mine, reference in zip([first, second, third, fourth], references):
        assert answer(mine) == answer(reference)
    for row, reference_row in zip(fifth.rows, references[4].rows):
        assert row.finish_reason == "cancelled" and row.ids == reference_row.ids[:len(row.ids)]
    assert second.finished < first.finished and second.started > first.started


def test_each_request_keeps_its_own_sampling_in_a_shared_batch(engine, tokenizer):
    def jobs() -> list[Job]:
        return [make_job(tokenizer, PROMPTS[0]),
                make_job(tokenizer, PROMPTS[0], temperature=0.9, seed=3),
                make_job(tokenizer, PROMPTS[0], temperature=1.5, top_k=1, seed=5),  # top_k 1: greedy
                make_job(tokenizer, PROMPTS[1], temperature=1.0, top_p=0.5, seed=7, n=2),
                make_job(tokenizer, PROMPTS[2], logprobs=2)]

    references = [alone(engine, lambda job=job: job) for job in jobs()]
    together = jobs()
    at_token(together[0], 2, lambda: [engine.submit(job) for job in together[3:]])
    batches = engine.stats.batches
    for job in together[:3]:
        engine.submit(job)
    wait(*together)

    assert engine.stats.batches == batches + 1
    for mine, reference in zip(together, references):
        assert answer(mine) == answer(reference)
    greedy, sampled, top1 = (job.rows[0].ids for job in together[:3])
    assert sampled != greedy and top1 == greedy
    scores = together[4].rows[0].token_logprobs
    assert len(scores) == len(together[4].rows[0].ids) and all(len(score.top) == 2 for score in scores)
    assert [score.logprob for score in scores] == pytest.approx(
        [score.logprob for score in references[4].rows[0].token_logprobs], abs=1e-5)  # other rows, other rounding


def save_adapter(tokenizer, folder, seed: int, dora: bool = False) -> str:
    from peft import LoraConfig, get_peft_model

    model = varied_llama(tokenizer)
    torch.manual_seed(seed)  # the adapter's random init (tiny_llama seeds torch itself)
    config = LoraConfig(r=4, lora_alpha=16, target_modules=["q_proj", "v_proj", "down_proj"],
                        init_lora_weights=False, use_dora=dora)
    get_peft_model(model, config).save_pretrained(str(folder))
    return str(folder)


def test_mixed_adapters_share_a_batch_and_dora_waits_for_it_to_drain(tokenizer, tmp_path):
    engine = Engine(varied_llama(tokenizer), tokenizer.pad_token_id, max_batch_rows=8, batch_wait=0.05)
    engine.start()
    try:
        for name, seed, dora in (("one", 1, False), ("two", 2, False), ("dora", 3, True)):
            engine.load_adapter(name, save_adapter(tokenizer, tmp_path / name, seed, dora), not dora).result(60)

        def jobs() -> list[Job]:
            return [make_job(tokenizer, PROMPTS[0], max_tokens=40, adapter="one"),
                    make_job(tokenizer, PROMPTS[0], max_tokens=20),
                    make_job(tokenizer, PROMPTS[0], max_tokens=20, adapter="two"),
                    make_job(tokenizer, PROMPTS[0], max_tokens=20, adapter="dora", mixable=False)]

        references = [alone(engine, lambda job=job: job) for job in jobs()]
        assert len({tuple(job.rows[0].ids) for job in references}) == 4  # each adapter answers its own way
        one, base, two, dora = jobs()
        # base joins a batch of adapter one (the plain forward until then, per-row adapter_names after), then two
        at_token(one, 3, lambda: engine.submit(base))
        at_token(one, 6, lambda: (engine.submit(dora), engine.submit(two)))
        engine.submit(one)
        wait(one, base, two, dora)

        for mine, reference in zip((one, base, two, dora), references):
            assert answer(mine) == answer(reference)
        # DoRA (unmixable) waited for the mixed batch to drain, and two, queued after it, waited for DoRA
        assert dora.started >= max(one.finished, base.finished)
        assert two.started >= dora.started
    finally:
        engine.stop()


def test_joined_caches_decode_as_the_rows_alone(tokenizer):
    """batch_cache on its own: rows prefilled apart and joined (left-padded along time) give the logits each row
    gives alone; dropping a row trims the columns that were padding for every row left."""
    from transformers import DynamicCache

    from tunelab.evaluate.generation import left_pad

    model = varied_llama(tokenizer)

    def prefill(prompts: list[list[int]]) -> tuple[Decoding, torch.Tensor]:
        inputs = left_pad(prompts, tokenizer.pad_token_id)
        cache = DynamicCache(config=model.config)
        logits = model(**inputs, position_ids=prefill_positions(inputs["attention_mask"]), past_key_values=cache,
                       use_cache=True).logits[:, -1]
        return Decoding(cache, inputs["attention_mask"], logits.argmax(-1)), logits

    def step(decoding: Decoding) -> torch.Tensor:
        logits = model(**decoding.next_inputs(), past_key_values=decoding.cache, use_cache=True).logits[:, -1]
        decoding.tokens = logits.argmax(-1)
        return logits

    prompts = [tokenizer(prompt)["input_ids"] for prompt in PROMPTS[:3]]
    with torch.no_grad():
        alone = []
        for prompt in prompts:
            decoding, _ = prefill([prompt])
            alone.append([step(decoding)[0] for _ in range(3)])
        long, _ = prefill([prompts[1]])
        short, _ = prefill([prompts[0], prompts[2]])
        joined = join(long, short)
        assert joined.mask.shape == (3, len(prompts[1]))
        assert joined.mask[1].sum() == len(prompts[0]) and joined.mask[2].sum() == len(prompts[2])
        first = step(joined)
        for row, index in ((0, 1), (1, 0), (2, 2)):
            torch.testing.assert_close(first[row], alone[index][0], rtol=0, atol=1e-5)
        kept = keep(joined, [1, 2])  # the long row leaves
        assert kept.mask.shape == (2, len(prompts[0]) + 1)  # its extra columns, padding for both, are gone
        assert kept.cache.layers[0].keys.shape[2] == kept.mask.shape[1]
        second = step(kept)
        torch.testing.assert_close(second[0], alone[0][1], rtol=0, atol=1e-5)
        torch.testing.assert_close(second[1], alone[2][1], rtol=0, atol=1e-5)
