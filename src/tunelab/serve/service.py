"""The work behind the OpenAI routes: check a request, turn it into engine rows, await them, shape the answer.

One Service lives on `app.state.service`. The engine runs on its own thread; results come back to the event loop
through `loop.call_soon_threadsafe` (Pending). What each request was (model, adapter, tokens, queue time, error) is
left on `request.state.log` for the accounting middleware, which writes the request log and the metrics.

A client that goes away is noticed while its request waits (`disconnected`, polled every DISCONNECT_POLL seconds;
a stream notices when Starlette cancels it) and its request is cancelled, so the engine stops working for nobody.
"""

from __future__ import annotations

import asyncio
import json
import math
import random
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, AsyncIterator, Awaitable, Callable

from tunelab.errors import TunelabError
from tunelab.models.load import ModelRef
from tunelab.monitor.requestlog import RequestLog
from tunelab.serve import protocol as api
from tunelab.serve.engine import Engine, Job, QueueFull
from tunelab.serve.errors import CLIENT_LEFT, APIError, model_not_found
from tunelab.serve.logprobs import chat_logprobs, completion_logprobs
from tunelab.serve.metrics import Metrics
from tunelab.serve.registry import Registry, ServedModel, check_id
from tunelab.serve.rows import Row, TokenLogprob
from tunelab.serve.settings import ServeSettings

if TYPE_CHECKING:
    from tunelab.jobs.queue import JobsConfig

MAX_STOP_STRINGS = 4
DISCONNECT_POLL = 0.1  # seconds between checks that a waiting client is still there
# OpenAI parameters this server does not implement: accepted only at these neutral values.
NEUTRAL = {
    "frequency_penalty": (None, 0, 0.0),
    "presence_penalty": (None, 0, 0.0),
    "logit_bias": (None, {}),
    "tools": (None, []),
    "tool_choice": (None, "none"),
    "suffix": (None, ""),
    "best_of": (None, 1),
}


class Pending:
    """The event-loop side of a job: streamed text arrives in `events`, the finished job in `done`."""

    def __init__(self, loop: asyncio.AbstractEventLoop):
        self.loop = loop
        self.events: asyncio.Queue = asyncio.Queue()
        self.done: asyncio.Future = loop.create_future()

    def emit(self, index: int, text: str, scores: list[TokenLogprob]) -> None:  # engine thread
        self._call(self.events.put_nowait, (index, text, scores))

    def finished(self, job: Job) -> None:  # engine thread
        self._call(self._finish, job)

    def _finish(self, job: Job) -> None:
        self.events.put_nowait(None)
        if not self.done.done():
            self.done.set_result(job)

    def _call(self, function: Any, *args: Any) -> None:
        try:
            self.loop.call_soon_threadsafe(function, *args)
        except RuntimeError:  # the loop is closed: the server is gone, nobody waits
            pass


Disconnected = Callable[[], Awaitable[bool]]  # Starlette's request.is_disconnected


@dataclass
class Prepared:
    served: ServedModel
    prompts: list[list[int]]
    max_tokens: int
    texts: list[str] | None = None  # completions: each prompt's text (echo puts it before the completion)


class Service:
    def __init__(self, engine: Engine, registry: Registry, base_ref: ModelRef, settings: ServeSettings,
                 metrics: Metrics, request_log: RequestLog, home: Path, context_length: int):
        self.engine = engine
        self.registry = registry
        self.base_ref = base_ref
        self.settings = settings
        self.metrics = metrics
        self.request_log = request_log
        self.home = home
        self.context_length = context_length
        self._swap = threading.Lock()  # a request's lookup+submit and an adapter's removal never interleave
        self._admin = asyncio.Lock()
        self.jobs: JobsConfig | None = None  # the fine-tuning API's settings (jobs/queue.py); None: it is off
        self.finished_jobs: Any = None  # serve/finished_jobs.py: serves succeeded jobs' models as they finish
        self.worker: Any = None  # serve/worker_process.py: the job worker `serve --jobs` runs, stopped on close
        self.deployments: Any = None  # serve/deployments.py: names in service and their versions

    def close(self) -> None:
        if self.worker is not None:
            self.worker.close()
        if self.finished_jobs is not None:
            self.finished_jobs.close()
        if self.deployments is not None:
            self.deployments.close()
        self.engine.stop()
        self.request_log.close()

    # ---- models -----------------------------------------------------------------------------------------
    def list_models(self) -> api.ModelList:
        return api.ModelList(data=[card(model) for model in self.registry.all()])

    async def finished_job(self, model_id: str) -> None:
        """A fine-tuning job's model (ft:...) that finished a moment ago is loaded before the lookup."""
        if self.finished_jobs is not None and model_id.startswith("ft:") and self.registry.get(model_id) is None:
            from starlette.concurrency import run_in_threadpool

            await run_in_threadpool(self.finished_jobs.serve_now, model_id)

    def served(self, model_id: str, log: dict[str, Any]) -> ServedModel:
        valid_id(model_id, "model")  # before it reaches the log and the metrics' labels
        log["model"] = model_id
        served = self.registry.get(model_id)
        if served is None:
            raise model_not_found(model_id, self.registry.ids())
        log["adapter"] = None if served.adapter is None else served.root
        return served

    # ---- chat and completions ---------------------------------------------------------------------------
    async def chat(self, body: api.ChatCompletionRequest, log: dict[str, Any],
                   disconnected: Disconnected | None = None) -> Any:
        from tunelab.data.templates import encode_prompt

        check_request(body, self.settings)
        await self.finished_job(body.model)
        served = self.served(body.model, log)
        messages = [{"role": "system" if m.role == "developer" else m.role, "content": m.text()}
                    for m in body.messages]
        try:
            prompt = encode_prompt(served.tokenizer, messages)
        except TunelabError as error:
            raise APIError(400, f"model '{served.id}': {error}", param="messages") from None
        if self.settings.log_content:
            log["prompt"] = json.dumps(messages, ensure_ascii=False)
        prepared = self.prepare(served, [prompt], body, log)
        request_id = self.completion_id("chatcmpl", log)
        if body.stream:
            return self.stream_chat(request_id, body, prepared, log)
        job = await self.run(prepared, body, log, stream=False, disconnected=disconnected)
        tokenizer = served.tokenizer
        choices = [api.ChatChoice(index=row.index, message=api.AssistantMessage(content=row.text),
                                  logprobs=chat_logprobs(tokenizer, row.token_logprobs) if body.logprobs else None,
                                  finish_reason=row.finish_reason) for row in job.rows]
        return api.ChatCompletion(id=request_id, model=served.id, choices=choices, usage=usage(prepared, job))

    async def complete(self, body: api.CompletionRequest, log: dict[str, Any],
                       disconnected: Disconnected | None = None) -> Any:
        check_request(body, self.settings)
        await self.finished_job(body.model)
        served = self.served(body.model, log)
        prompts, texts = completion_prompts(body.prompt, served.tokenizer)
        if self.settings.log_content:
            log["prompt"] = json.dumps(texts, ensure_ascii=False)
        prepared = self.prepare(served, prompts, body, log)
        prepared.texts = texts
        request_id = self.completion_id("cmpl", log)
        if body.stream:
            return self.stream_completion(request_id, body, prepared, log)
        job = await self.run(prepared, body, log, stream=False, disconnected=disconnected)
        choices = [completion_choice(row, body, prepared) for row in job.rows]
        return api.Completion(id=request_id, created=int(time.time()), model=served.id, choices=choices,
                              usage=usage(prepared, job))

    def completion_id(self, prefix: str, log: dict[str, Any]) -> str:
        """A new answer's id, in its log entry (feedback finds the answer by it) and announced to the request log,
        so a feedback that arrives before the entry is written waits for it (serve/feedback.py)."""
        request_id = f"{prefix}-{uuid.uuid4().hex}"
        log["request_id"] = request_id
        self.request_log.expect(request_id)
        return request_id

    def prepare(self, served: ServedModel, prompts: list[list[int]], body: api.SamplingFields,
                log: dict[str, Any]) -> Prepared:
        """Check the request against the limits; the number of new tokens it may have."""
        log["prompt_tokens"] = sum(len(ids) for ids in prompts)
        asked = getattr(body, "max_completion_tokens", None)
        asked = body.max_tokens if asked is None else asked
        if asked is not None and asked > self.settings.max_tokens:
            raise APIError(400, f"max_tokens={asked} exceeds this server's limit of {self.settings.max_tokens}",
                           param="max_tokens")
        if len(prompts) * body.n > self.settings.max_batch_rows:
            raise APIError(400, f"n x prompts = {len(prompts) * body.n} exceeds this server's "
                                f"{self.settings.max_batch_rows} rows per batch", param="n")
        longest = max(len(ids) for ids in prompts)
        room = self.context_length - longest
        max_tokens = min(self.settings.max_tokens, room) if asked is None else asked
        if longest + max(max_tokens, 0 if asked == 0 else 1) > self.context_length:
            raise APIError(400, f"This model's maximum context length is {self.context_length} tokens; the prompt "
                                f"has {longest} and max_tokens asks for {max_tokens} more",
                           param="messages" if isinstance(body, api.ChatCompletionRequest) else "prompt")
        return Prepared(served, prompts, max_tokens)

    def job(self, prepared: Prepared, body: api.SamplingFields, pending: Pending, stream: bool) -> Job:
        import torch

        deadline = time.monotonic() + self.settings.request_timeout
        generator = torch.Generator().manual_seed(body.seed if body.seed is not None else random.getrandbits(62))
        job = Job(adapter=prepared.served.adapter, mixable=prepared.served.mixable, rows=[],
                  on_done=pending.finished, deadline=deadline)
        logprobs, prompt_logprobs = logprob_options(body)
        job.rows = [
            Row(index=prompt_index * body.n + choice, prompt_ids=ids, max_tokens=prepared.max_tokens,
                temperature=body.temperature, top_p=body.top_p, stop=body.stop_strings(),
                stop_ids=prepared.served.stop_ids, tokenizer=prepared.served.tokenizer, generator=generator,
                emit=pending.emit if stream else None, is_cancelled=lambda: job.cancelled, deadline=deadline,
                top_k=body.top_k, logprobs=logprobs, prompt_logprobs=prompt_logprobs)
            for prompt_index, ids in enumerate(prepared.prompts) for choice in range(body.n)
        ]
        return job

    def submit(self, prepared: Prepared, body: api.SamplingFields, stream: bool) -> tuple[Job, Pending]:
        pending = Pending(asyncio.get_running_loop())
        job = self.job(prepared, body, pending, stream)
        with self._swap:
            if not self.registry.is_live(prepared.served):  # unloaded meanwhile
                raise model_not_found(prepared.served.id, self.registry.ids())
            try:
                self.engine.submit(job)
            except QueueFull as full:
                wait = retry_after(self.engine, self.settings, full.retry_after)
                raise APIError(429, f"The server is busy ({self.settings.max_queue} requests waiting); retry after "
                                    f"{wait} s", headers={"Retry-After": str(wait)}) from None
        return job, pending

    async def run(self, prepared: Prepared, body: api.SamplingFields, log: dict[str, Any], stream: bool,
                  disconnected: Disconnected | None = None) -> Job:
        job, pending = self.submit(prepared, body, stream)
        try:
            await until_done(pending.done, disconnected)
        except asyncio.CancelledError:
            job.cancel()  # the engine drops it at its next step
            raise
        except ClientGone:
            job.cancel()
            raise APIError(CLIENT_LEFT, "client disconnected") from None
        account(job, log, self.settings.log_content)
        error = failure(job)
        if error is not None:
            raise error
        return job

    def stream_chat(self, request_id: str, body: api.ChatCompletionRequest, prepared: Prepared,
                          log: dict[str, Any]) -> AsyncIterator[str]:
        created = int(time.time())

        def chunk(choices: list[api.ChunkChoice], usage_: api.Usage | None = None) -> str:
            return sse(api.ChatCompletionChunk(id=request_id, created=created, model=prepared.served.id,
                                               choices=choices, usage=usage_))

        def piece(index: int, text: str, scores: list[TokenLogprob]) -> list[api.ChunkChoice]:
            logprobs = chat_logprobs(prepared.served.tokenizer, scores) if body.logprobs else None
            return [api.ChunkChoice(index=index, delta=api.Delta(content=text), logprobs=logprobs)]

        job, pending = self.submit(prepared, body, stream=True)
        return self.events(job, pending, body, prepared, log, chunk, opening=[
            chunk([api.ChunkChoice(index=row.index, delta=api.Delta(role="assistant", content=""))])
            for row in job.rows
        ], piece=piece,
            ending=lambda row: [api.ChunkChoice(index=row.index, delta=api.Delta(), finish_reason=row.finish_reason)])

    def stream_completion(self, request_id: str, body: api.CompletionRequest, prepared: Prepared,
                                log: dict[str, Any]) -> AsyncIterator[str]:
        created = int(time.time())

        def chunk(choices: list[api.CompletionChoice], usage_: api.Usage | None = None) -> str:
            return sse(api.Completion(id=request_id, created=created, model=prepared.served.id, choices=choices,
                                      usage=usage_))

        tokenizer = prepared.served.tokenizer
        offsets: dict[int, int] = {}  # each choice's text so far, prompt included (text_offset counts from it)

        def logprobs(index: int, scores: list[TokenLogprob]) -> api.CompletionLogprobs | None:
            if body.logprobs is None or not scores:
                return None
            shaped = completion_logprobs(tokenizer, [score.token for score in scores], scores, offsets[index])
            offsets[index] += sum(len(token) for token in shaped.tokens)
            return shaped

        def piece(index: int, text: str, scores: list[TokenLogprob]) -> list[api.CompletionChoice]:
            return [api.CompletionChoice(index=index, text=text, logprobs=logprobs(index, scores))]

        def ending(row: Row) -> list[api.CompletionChoice]:
            stop = [row.stop_score] if row.stop_score is not None else []
            return [api.CompletionChoice(index=row.index, text="", logprobs=logprobs(row.index, stop),
                                         finish_reason=row.finish_reason)]

        job, pending = self.submit(prepared, body, stream=True)
        for row in job.rows:
            offsets[row.index] = len(prepared.texts[row.index // body.n])
        echoed = [chunk([api.CompletionChoice(index=row.index, text=prepared.texts[row.index // body.n])])
                  for row in job.rows] if body.echo else []
        return self.events(job, pending, body, prepared, log, chunk, opening=echoed, piece=piece, ending=ending)

    async def events(self, job: Job, pending: Pending, body: api.SamplingFields, prepared: Prepared,
                     log: dict[str, Any], chunk: Any, opening: list[str], piece: Any,
                     ending: Any) -> AsyncIterator[str]:
        """Server-sent events: text as it is generated, then each choice's finish_reason, usage, [DONE]."""
        try:
            for line in opening:
                yield line
            while (event := await pending.events.get()) is not None:
                yield chunk(piece(*event))
            account(job, log, self.settings.log_content)
            error = failure(job)
            if error is not None:
                log["error"] = error.message
                log["status"] = error.status
                yield sse_data(error.body())
            else:
                for row in job.rows:
                    yield chunk(ending(row))
                if body.stream_options and body.stream_options.include_usage:
                    yield chunk([], usage(prepared, job))
            yield "data: [DONE]\n\n"
        finally:
            if not pending.done.done():  # the client went away: stop generating for it
                job.cancel()
                log["error"] = "client disconnected"

    # ---- adapters ---------------------------------------------------------------------------------------
    async def load_adapter(self, body: api.LoadAdapterRequest, log: dict[str, Any]) -> api.ModelCard:
        from starlette.concurrency import run_in_threadpool

        from tunelab.serve.runpaths import REFUSED

        async with self._admin:
            if body.name is not None:
                valid_id(body.name, "name")
                if self.registry.get(body.name):
                    raise APIError(409, f"model id '{body.name}' is already served; DELETE it first", param="name")
            served = await run_in_threadpool(self.open_confined, body)
            log.update(model=served.id, adapter=served.root)
            if self.registry.get(served.id):
                raise APIError(409, f"model id '{served.id}' is already served; DELETE it first or give a name",
                               param="name")
            try:
                await asyncio.wrap_future(self.engine.load_adapter(served.adapter, served.folder, served.mixable))
            except Exception:  # its weights would not load (truncated, corrupt): invalid, like any other bad run
                raise APIError(400, REFUSED, param="run") from None
            self.registry.add(served)
            return card(served)

    def open_confined(self, body: api.LoadAdapterRequest) -> ServedModel:
        """The adapter of a run inside the --runs-root folders (runpaths.py). A readable run that cannot join this
        base is refused saying why; anything else, whatever went wrong, with runpaths' one text."""
        from tunelab.serve.registry import Incompatible, open_adapter
        from tunelab.serve.runpaths import REFUSED, confined_run

        try:
            folder = confined_run(body.run, self.settings.runs_roots)
            return open_adapter(folder, body.name, self.registry.base, self.base_ref, self.registry.adapter_name(),
                                self.home, given_as=body.run)
        except Incompatible as error:
            raise APIError(400, str(error), param="run") from None
        except Exception:  # not a run, unreadable, no tokenizer, ...: the same answer as a path outside the roots
            raise APIError(400, REFUSED, param="run") from None

    async def unload_adapter(self, model_id: str, log: dict[str, Any]) -> api.DeletedModel:
        valid_id(model_id, "model")  # before it reaches the log and the metrics' labels
        log["model"] = model_id
        async with self._admin:
            with self._swap:
                if self.deployments is not None and self.deployments.is_versioned(model_id):
                    raise APIError(409, f"'{model_id}' is a name in service with versions; roll it back or promote "
                                        "another version (/v1/deployments) instead of unloading it", param="model")
                try:
                    served = self.registry.remove(model_id)
                except TunelabError as error:
                    raise APIError(400, str(error), param="model") from None
                if served is None:
                    raise model_not_found(model_id, self.registry.ids())
                _, in_flight = self.engine.retire(served.adapter)
            return api.DeletedModel(id=model_id, in_flight=in_flight)


def check_request(body: api.SamplingFields, settings: ServeSettings) -> None:
    for name, neutral in NEUTRAL.items():
        if name in type(body).model_fields and getattr(body, name) not in neutral:
            raise APIError(400, f"'{name}' is not supported by this server", param=name)
    response_format = getattr(body, "response_format", None)
    if response_format is not None and response_format.type != "text":
        raise APIError(400, f"response_format '{response_format.type}' is not supported by this server",
                       param="response_format")
    if len(body.stop_strings()) > MAX_STOP_STRINGS or any(not stop for stop in body.stop_strings()):
        raise APIError(400, f"stop: at most {MAX_STOP_STRINGS} non-empty strings", param="stop")
    if body.stream_options is not None and not body.stream:
        raise APIError(400, "stream_options is only allowed when stream is true", param="stream_options")
    check_logprobs(body)


def check_logprobs(body: api.SamplingFields) -> None:
    chat = isinstance(body, api.ChatCompletionRequest)
    if chat and body.top_logprobs is not None and not body.logprobs:
        raise APIError(400, "top_logprobs needs logprobs: true", param="top_logprobs")
    if body.stream and not chat and body.echo and body.logprobs is not None:
        raise APIError(400, "echo with logprobs and stream is not supported by this server; ask without stream",
                       param="logprobs")


def logprob_options(body: api.SamplingFields) -> tuple[int | None, bool]:
    """(alternatives per new token, or None for no logprobs; whether to score the prompt too)."""
    if isinstance(body, api.ChatCompletionRequest):
        return ((body.top_logprobs or 0) if body.logprobs else None), False
    return body.logprobs, body.logprobs is not None and body.echo


def completion_prompts(prompt: Any, tokenizer: Any) -> tuple[list[list[int]], list[str]]:
    """The prompts' token ids and texts, from a text, texts, token ids or lists of token ids."""
    if isinstance(prompt, str):
        prompt = [prompt]
    if not prompt:
        raise APIError(400, "prompt: give a string, a non-empty list of strings or of token ids", param="prompt")
    if isinstance(prompt[0], int):
        prompt = [prompt]
    if isinstance(prompt[0], str):
        texts = list(prompt)
        prompts = [tokenizer(text)["input_ids"] for text in texts]
    else:
        prompts = [list(ids) for ids in prompt]
        size = len(tokenizer)
        bad = next((token for ids in prompts for token in ids if not 0 <= token < size), None)
        if bad is not None:
            raise APIError(400, f"prompt: token id {bad} is outside the vocabulary (0 to {size - 1})",
                           param="prompt")
        texts = [tokenizer.decode(ids) for ids in prompts]
    if any(not ids for ids in prompts):
        raise APIError(400, "prompt: an empty prompt gives the model nothing to continue", param="prompt")
    return prompts, texts


def completion_choice(row: Row, body: api.CompletionRequest, prepared: Prepared) -> api.CompletionChoice:
    prompt_text = prepared.texts[row.index // body.n]
    text = prompt_text + row.text if body.echo else row.text
    logprobs = None
    if body.logprobs is not None:
        tokens, scores = list(row.ids), list(row.token_logprobs)
        if row.stop_score is not None:  # the EOS that ended the choice is a generated token too
            tokens.append(row.stop_score.token)
            scores.append(row.stop_score)
        if body.echo:
            tokens, scores = row.prompt_ids + tokens, row.prompt_scores + scores
        offset = 0 if body.echo else len(prompt_text)
        logprobs = completion_logprobs(prepared.served.tokenizer, tokens, scores, offset)
    return api.CompletionChoice(index=row.index, text=text, logprobs=logprobs, finish_reason=row.finish_reason)


class ClientGone(Exception):
    pass


async def until_done(done: asyncio.Future, disconnected: Disconnected | None) -> None:
    """Wait for `done`; raise ClientGone as soon as `disconnected` says the client left."""
    while not done.done():
        await asyncio.wait([done], timeout=None if disconnected is None else DISCONNECT_POLL)
        if not done.done() and disconnected is not None and await disconnected():
            raise ClientGone


def valid_id(model_id: str, field: str) -> None:
    try:
        check_id(model_id, field)
    except TunelabError as error:
        raise APIError(400, str(error), param=field) from None


def retry_after(engine: Engine, settings: ServeSettings, estimate: int) -> int:
    """Seconds a refused client should wait: the engine's estimate once a batch has been timed. Before that it has
    no measure and says 1 s, which would bring every refused client straight back; --timeout (the longest a
    request may take) is the honest bound, capped at a minute."""
    if engine.stats.batches:
        return estimate
    return max(1, min(60, math.ceil(settings.request_timeout)))


def account(job: Job, log: dict[str, Any], with_content: bool) -> None:
    log["completion_tokens"] = sum(len(row.ids) for row in job.rows)
    if job.started is not None:
        log["queue_ms"] = (job.started - job.submitted) * 1000
    if with_content:
        log["output"] = json.dumps([row.text for row in job.rows], ensure_ascii=False)


def failure(job: Job) -> APIError | None:
    """The error a finished job ends in, if any: timed out (504), shut down (503), generation failed (500)."""
    if job.error == "timeout" or any(row.finish_reason == "timeout" for row in job.rows):
        return APIError(504, "The request timed out (the server's --timeout)", code="timeout")
    if job.error is None:
        return None
    if "shutting down" in job.error:
        return APIError(503, job.error)
    return APIError(500, job.error)


def usage(prepared: Prepared, job: Job) -> api.Usage:
    prompt = sum(len(ids) for ids in prepared.prompts)
    completion = sum(len(row.ids) for row in job.rows)
    return api.Usage(prompt_tokens=prompt, completion_tokens=completion, total_tokens=prompt + completion)


def card(model: ServedModel) -> api.ModelCard:
    return api.ModelCard(id=model.id, created=model.created, parent=model.parent)


def sse(body: Any) -> str:
    return f"data: {body.model_dump_json(exclude_none=False)}\n\n"


def sse_data(value: dict[str, Any]) -> str:
    return f"data: {json.dumps(value)}\n\n"
