"""Loglikelihood evaluation through the server, as lm-eval's `local-completions` does it: logprobs equal to a direct
forward pass of the model (log_softmax) within 1e-4, in OpenAI's exact shapes for completions (echo, token-id
prompts, max_tokens 0 or 1) and chat; and /tokenize, /detokenize, /tokenizer_info in the shapes lm-eval's remote
tokenizer reads."""

from __future__ import annotations

import json
import threading
import time

import openai
import pytest
import torch

from tests.unit.test_serve import LiveServer
from tunelab.serve.settings import ServeSettings

TOLERANCE = 1e-4


@pytest.fixture(scope="module")
def server(tiny_checkpoint, tmp_path_factory):
    from tunelab.serve.server import build_service

    tmp = tmp_path_factory.mktemp("serve-logprobs")
    settings = ServeSettings(serve_dir=tmp, max_tokens=32, batch_wait=0.3)  # concurrent requests share a batch
    live = LiveServer(build_service([], str(tiny_checkpoint), settings, tmp / "home", say=lambda _: None))
    yield live
    live.stop()


@pytest.fixture(scope="module")
def reference(tiny_checkpoint):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(str(tiny_checkpoint), dtype=torch.float32).eval()


def direct_logprobs(model, ids: list[int]) -> torch.Tensor:
    """log_softmax of one unpadded forward pass: row i is the distribution of the token after ids[:i+1]."""
    with torch.no_grad():
        return torch.log_softmax(model(torch.tensor([ids])).logits[0].float(), dim=-1)


def base(server) -> str:
    return server.service.registry.base.id


def tokenizer(server):
    return server.service.registry.base.tokenizer


def post(server, path: str, body: dict) -> tuple[int, dict]:
    status, _, answer = server.raw("POST", path, json.dumps(body).encode(), key=None)
    return status, answer


def test_echo_scores_every_prompt_token_like_a_forward_pass(server, reference):
    prompt = "the cat sat on the mat"
    status, answer = post(server, "/v1/completions", {"model": base(server), "prompt": prompt, "echo": True,
                                                      "max_tokens": 0, "logprobs": 3, "temperature": 0})
    assert status == 200, answer
    choice = answer["choices"][0]
    logprobs = choice["logprobs"]
    assert choice["text"] == prompt and set(logprobs) == {"tokens", "token_logprobs", "top_logprobs", "text_offset"}
    ids = tokenizer(server)(prompt)["input_ids"]
    expected = direct_logprobs(reference, ids)
    assert "".join(logprobs["tokens"]) == prompt and len(logprobs["tokens"]) == len(ids)
    assert logprobs["token_logprobs"][0] is None and logprobs["top_logprobs"][0] is None  # no context for it
    tokens = logprobs["tokens"]
    assert logprobs["text_offset"] == [len("".join(tokens[:i])) for i in range(len(tokens))]
    for position in range(1, len(ids)):
        assert logprobs["token_logprobs"][position] == pytest.approx(
            float(expected[position - 1, ids[position]]), abs=TOLERANCE)
        top = logprobs["top_logprobs"][position]
        best = torch.topk(expected[position - 1], 3)
        assert len(top) == 3 and sorted(top.values(), reverse=True) == pytest.approx(best.values.tolist(),
                                                                                     abs=TOLERANCE)
    assert answer["usage"]["completion_tokens"] == 0


def lm_eval_loglikelihood(choice: dict, context_length: int) -> tuple[float, bool]:
    """What lm-eval's LocalCompletionsAPI.parse_logprobs reads from a choice (the last token is the generated one)."""
    token_logprobs = choice["logprobs"]["token_logprobs"][context_length:-1]
    top = choice["logprobs"]["top_logprobs"][context_length:-1]
    return sum(token_logprobs), all(mine == max(best.values()) for mine, best in zip(token_logprobs, top))


def test_lm_eval_style_token_id_requests_in_one_batch(server, reference):
    """prompt: a list of token-id lists of different lengths (padding must not change a score), echo, max_tokens 1,
    logprobs 1, as lm-eval sends a batch of loglikelihood requests."""
    encode = tokenizer(server)
    pairs = [("Question: 2+2? Answer:", " four"), ("Q: sky colour? A:", " blue and wide")]
    prompts = [encode(context)["input_ids"] + encode(continuation)["input_ids"] for context, continuation in pairs]
    status, answer = post(server, "/v1/completions", {"model": base(server), "prompt": prompts, "echo": True,
                                                      "max_tokens": 1, "logprobs": 1, "temperature": 0,
                                                      "seed": 1234})
    assert status == 200, answer
    choices = sorted(answer["choices"], key=lambda choice: choice["index"])
    for (context, continuation), ids, choice in zip(pairs, prompts, choices):
        expected = direct_logprobs(reference, ids)
        context_length = len(encode(context)["input_ids"])
        targets = range(context_length, len(ids))
        total, greedy = lm_eval_loglikelihood(choice, context_length)
        assert total == pytest.approx(sum(float(expected[i - 1, ids[i]]) for i in targets), abs=TOLERANCE)
        assert greedy == all(int(expected[i - 1].argmax()) == ids[i] for i in targets)
        generated = choice["logprobs"]["token_logprobs"][-1]  # greedy: the most likely token after the prompt
        assert generated == pytest.approx(float(expected[-1].max()), abs=TOLERANCE)
        assert len(choice["logprobs"]["tokens"]) == len(ids) + 1


def test_echo_and_logprobs_of_concurrent_requests_in_one_batch_match_alone(server):
    body = {"model": base(server), "echo": True, "max_tokens": 4, "logprobs": 2, "temperature": 0}
    prompts = ["a short one", "a much longer prompt than the other"]
    alone = [post(server, "/v1/completions", {**body, "prompt": prompt})[1] for prompt in prompts]
    together: list = [None, None]

    def ask(index: int) -> None:
        together[index] = post(server, "/v1/completions", {**body, "prompt": prompts[index]})[1]

    # they must share one batch (the second joins the first's); on a loaded machine the first may have finished
    # before the second arrived, so a few tries
    for _ in range(5):
        batches = server.service.engine.stats.batches
        threads = [threading.Thread(target=ask, args=(index,)) for index in range(2)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(60)
        if server.service.engine.stats.batches == batches + 1:
            break
    assert server.service.engine.stats.batches == batches + 1  # they shared one batch
    for mine, reference_answer in zip(together, alone):
        assert mine["choices"][0]["text"] == reference_answer["choices"][0]["text"]
        assert mine["choices"][0]["logprobs"]["token_logprobs"][1:] == pytest.approx(
            reference_answer["choices"][0]["logprobs"]["token_logprobs"][1:], abs=TOLERANCE)


def test_completion_logprobs_without_echo_cover_the_new_tokens(server, reference):
    client = server.client(key=None)
    answer = client.completions.create(model=base(server), prompt="hello", max_tokens=6, logprobs=2, temperature=0)
    logprobs = answer.choices[0].logprobs  # parsed by the official client into its own types
    ids = tokenizer(server)("hello")["input_ids"]
    new = tokenizer(server)(answer.choices[0].text)["input_ids"]
    assert len(logprobs.tokens) == len(new) == answer.usage.completion_tokens
    assert logprobs.text_offset[0] == len("hello")
    expected = direct_logprobs(reference, ids + new)
    for step, token in enumerate(new):
        assert logprobs.token_logprobs[step] == pytest.approx(float(expected[len(ids) + step - 1, token]),
                                                              abs=TOLERANCE)


def test_chat_logprobs_in_openai_shape_equal_a_forward_pass(server, reference):
    from tunelab.data.templates import encode_prompt

    client = server.client(key=None)
    messages = [{"role": "user", "content": "abcd"}]
    answer = client.chat.completions.create(model=base(server), messages=messages, max_tokens=8, temperature=0,
                                            logprobs=True, top_logprobs=3)
    content = answer.choices[0].logprobs.content
    assert len(content) == answer.usage.completion_tokens == 8
    prompt = encode_prompt(tokenizer(server), messages)
    new = [tokenizer(server).convert_tokens_to_ids(entry.token) for entry in content]
    expected = direct_logprobs(reference, prompt + new)
    for step, entry in enumerate(content):
        row = expected[len(prompt) + step - 1]
        assert entry.logprob == pytest.approx(float(row[new[step]]), abs=TOLERANCE)
        assert entry.bytes == list(entry.token.encode("utf-8"))
        assert len(entry.top_logprobs) == 3 and entry.top_logprobs[0].token == entry.token  # greedy: the top one
        assert [top.logprob for top in entry.top_logprobs] == pytest.approx(torch.topk(row, 3).values.tolist(),
                                                                            abs=TOLERANCE)
    assert "".join(entry.token for entry in content) == answer.choices[0].message.content
    plain = client.chat.completions.create(model=base(server), messages=messages, max_tokens=8, temperature=0)
    assert plain.choices[0].logprobs is None


@pytest.mark.parametrize("body, param", [
    ({"messages": [{"role": "user", "content": "hi"}], "top_logprobs": 2}, "top_logprobs"),
    ({"prompt": "hi", "logprobs": 1, "stream": True, "echo": True}, "logprobs"),
    ({"prompt": [5, 100000]}, "prompt"),
])
def test_logprob_requests_the_server_cannot_answer_get_a_400_naming_the_field(server, body, param):
    path = "/v1/chat/completions" if "messages" in body else "/v1/completions"
    status, answer = post(server, path, {"model": base(server), **body})
    assert status == 400 and answer["error"]["param"] == param, answer


def test_too_many_alternatives_are_refused(server):
    with pytest.raises(openai.UnprocessableEntityError):
        server.client(key=None).completions.create(model=base(server), prompt="hi", logprobs=21)


def test_tokenize_detokenize_round_trip_and_tokenizer_info(server):
    text = "Hello, world: 42!"
    status, tokens = post(server, "/tokenize", {"prompt": text, "add_special_tokens": False})
    assert status == 200 and tokens["tokens"] == tokenizer(server)(text, add_special_tokens=False)["input_ids"]
    assert tokens["count"] == len(tokens["tokens"]) and tokens["max_model_len"] == server.service.context_length
    status, back = post(server, "/detokenize", {"tokens": tokens["tokens"]})
    assert status == 200 and back == {"prompt": text}
    status, _, info = server.raw("GET", "/tokenizer_info", key=None)
    assert status == 200 and info["eos_token"] == "<|im_end|>" and "im_start" in info["chat_template"]
    eos = post(server, "/tokenize", {"prompt": info["eos_token"], "add_special_tokens": False})[1]["tokens"]
    assert eos == [tokenizer(server).eos_token_id]  # how lm-eval's remote tokenizer finds eos_token_id
    status, strings = post(server, "/tokenize", {"prompt": "ab", "return_token_strs": True})
    assert strings["token_strs"] == ["a", "b"]
    status, missing = post(server, "/tokenize", {"prompt": "ab", "model": "nope"})
    assert status == 404 and missing["error"]["param"] == "model"


def test_scores_of_an_adapter_and_the_base_in_one_batch_are_each_models_own(tiny_checkpoint, tmp_path):
    """A mixed batch scores each row with its own model (peft's per-row adapter_names in the forward pass)."""
    from tests.unit.test_serve import train_run
    from tunelab.run.models import open_run_models
    from tunelab.serve.server import build_service

    run = train_run(tmp_path, tiny_checkpoint, "run-tuned", seed=3)
    settings = ServeSettings(serve_dir=tmp_path / "serve", max_tokens=8, batch_wait=0.3)
    live = LiveServer(build_service([f"tuned={run}"], None, settings, tmp_path / "home", say=lambda _: None))
    try:
        prompt = "abcdefg"
        answers: dict = {}

        def ask(model: str) -> None:
            answers[model] = post(live, "/v1/completions", {"model": model, "prompt": prompt, "echo": True,
                                                            "max_tokens": 0, "logprobs": 0})[1]

        batches = live.service.engine.stats.batches
        threads = [threading.Thread(target=ask, args=(model,)) for model in ("tuned", base(live))]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(60)
        assert live.service.engine.stats.batches == batches + 1
    finally:
        live.stop()
    inference = open_run_models(run, tmp_path / "home").inference()
    ids = tokenizer(live)(prompt)["input_ids"]
    for model_id, model in (("tuned", inference.load_tuned()), (base(live), inference.load_base())):
        expected = direct_logprobs(model.eval(), ids)
        got = answers[model_id]["choices"][0]["logprobs"]["token_logprobs"]
        assert got[1:] == pytest.approx([float(expected[i - 1, ids[i]]) for i in range(1, len(ids))],
                                        abs=TOLERANCE)
    tuned, plain = (answers[name]["choices"][0]["logprobs"]["token_logprobs"][1:] for name in ("tuned", base(live)))
    assert max(abs(a - b) for a, b in zip(tuned, plain)) > 10 * TOLERANCE  # the check above tells them apart


def test_a_choice_ended_by_eos_still_lists_that_token_as_lm_eval_expects(server, reference):
    """lm-eval drops the last logprob of an echo + max_tokens 1 answer as the generated token's: when the model's
    next token is EOS (a stop token, left out of the text) it must still be listed, or the continuation's own last
    token would be dropped instead. The test makes the greedy next token a stop token."""
    from tunelab.serve import protocol as api
    from tunelab.serve.engine import Engine, Job
    from tunelab.serve.rows import Row
    from tunelab.serve.service import Prepared, completion_choice

    encode = tokenizer(server)
    context, ids = encode("Question: 1+1? Answer:")["input_ids"], encode("Question: 1+1? Answer: two")["input_ids"]
    expected = direct_logprobs(reference, ids)
    eos = int(expected[-1].argmax())
    engine = Engine(reference, encode.pad_token_id)
    engine.start()
    try:
        done = threading.Event()
        job = Job(adapter=None, mixable=True, rows=[], on_done=lambda _: done.set(), deadline=time.monotonic() + 60)
        job.rows = [Row(index=0, prompt_ids=ids, max_tokens=1, temperature=0.0, top_p=1.0, stop=[], stop_ids={eos},
                        tokenizer=encode, generator=None, emit=None, is_cancelled=lambda: False,
                        deadline=job.deadline, logprobs=1, prompt_logprobs=True)]
        engine.submit(job)
        assert done.wait(60) and job.error is None
    finally:
        engine.stop()
    body = api.CompletionRequest(model="m", prompt=ids, echo=True, max_tokens=1, logprobs=1, temperature=0)
    choice = completion_choice(job.rows[0], body, Prepared(server.service.registry.base, [ids], 1,
                                                           texts=[encode.decode(ids)])).model_dump()
    assert choice["finish_reason"] == "stop" and len(choice["logprobs"]["tokens"]) == len(ids) + 1
    total, _ = lm_eval_loglikelihood(choice, len(context))
    assert total == pytest.approx(sum(float(expected[i - 1, ids[i]]) for i in range(len(context), len(ids))),
                                  abs=TOLERANCE)


def test_a_streamed_echo_sends_the_prompt_first(server):
    client = server.client(key=None)
    whole = client.completions.create(model=base(server), prompt="hello", max_tokens=6, temperature=0, echo=True)
    assert whole.choices[0].text.startswith("hello")
    pieces = [chunk.choices[0].text for chunk in client.completions.create(
        model=base(server), prompt="hello", max_tokens=6, temperature=0, echo=True, stream=True) if chunk.choices]
    assert pieces[0] == "hello" and "".join(pieces) == whole.choices[0].text


def test_streamed_logprobs_are_the_same_as_in_one_answer(server):
    client = server.client(key=None)
    messages = [{"role": "user", "content": "abcd"}]
    options = {"model": base(server), "max_tokens": 8, "temperature": 0}
    whole = client.chat.completions.create(messages=messages, logprobs=True, top_logprobs=2, **options)
    streamed = [entry for chunk in client.chat.completions.create(messages=messages, logprobs=True, top_logprobs=2,
                                                                  stream=True, **options)
                if chunk.choices and chunk.choices[0].logprobs for entry in chunk.choices[0].logprobs.content]
    assert [entry.model_dump() for entry in streamed] == [entry.model_dump()
                                                          for entry in whole.choices[0].logprobs.content]

    whole = client.completions.create(prompt="hello", logprobs=2, **options).choices[0].logprobs
    chunks = [chunk.choices[0].logprobs for chunk in client.completions.create(prompt="hello", logprobs=2,
                                                                               stream=True, **options)
              if chunk.choices and chunk.choices[0].logprobs]
    for field in ("tokens", "token_logprobs", "top_logprobs", "text_offset"):
        assert [value for chunk in chunks for value in getattr(chunk, field)] == getattr(whole, field)
