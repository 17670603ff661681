"""The generation engine: one thread owns the model; requests queue up and are decoded in a continuous batch.

Everything that touches the model runs on this thread: decoding steps and, between them, control work (loading an
adapter). So an adapter is never added or removed under a forward pass, and a request already queued or running
keeps its adapter until it finishes: an adapter being deleted is only unloaded once no queued or running request
uses it (`retire`).

Batching: when a request arrives at an idle engine, it waits up to `batch_wait` seconds for others, then takes up
to `max_batch_rows` rows (a request with n choices is n rows). The batch then decodes one token for every row per
step (one forward pass); a request that arrives meanwhile joins at the next step (prefilled apart, then its cache
rows are joined to the running ones: batch_cache.py), a row that ended leaves at once, so a short request never
waits for a long one. Rows of LoRA adapters that peft can mix in one forward (`adapter_names`) and of the base share
a batch; other adapters (DoRA) batch only with their own requests: a request of another key waits for the running
batch to drain (and stops newer requests from joining it, first come first served). The queue is bounded: past
`max_queue` waiting requests `submit` raises QueueFull with a Retry-After estimate.

Why a decoding loop of its own rather than HF `generate` (a batch fixed for its whole run) or transformers'
continuous batching (`generate_batch` / `init_continuous_batching`, transformers 5.23): that one swaps the model's
attention for a paged one (the whole model, for every other caller too), its per-request logits processing covers
temperature/top_k/top_p as tensors but no per-request seeded generator, top-k logprobs or stop strings, and it has
no way to pass peft's per-row `adapter_names`. The loop here is a few dozen lines over DynamicCache.

Failures and cancels are per request: a row whose sampling fails ends alone (rows.py) and fails only its own
request; a cancelled request (its client went away) or one past its deadline leaves at the next step, whether it
is queued or running, while the rest of its batch goes on. Completions' echo scores prompts with one forward pass
before their prefill.
"""

from __future__ import annotations

import math
import threading
import time
from collections import Counter, deque
from concurrent.futures import Future
from contextlib import nullcontext
from dataclasses import dataclass, field
from typing import Any, Callable

from tunelab.device import Placement
from tunelab.serve.rows import Row

MIXED = object()  # batch key of base rows and mixable adapters


class QueueFull(Exception):
    def __init__(self, retry_after: int):
        super().__init__(f"queue full, retry after {retry_after} s")
        self.retry_after = retry_after


@dataclass
class Job:
    """One request: its rows (choices) and where to report when all of them have ended."""

    adapter: str | None  # the peft adapter name; None: the base model
    mixable: bool
    rows: list[Row]
    on_done: Callable[["Job"], None]
    deadline: float
    submitted: float = field(default_factory=time.monotonic)
    started: float | None = None
    finished: float | None = None
    cancelled: bool = False
    error: str | None = None

    def cancel(self) -> None:
        self.cancelled = True

    @property
    def key(self) -> Any:
        return MIXED if self.mixable else self.adapter


@dataclass
class EngineStats:
    batches: int = 0  # batches started (a batch runs until its last row ends; requests join it meanwhile)
    requests: int = 0  # requests that ran (started and ended)
    rows: int = 0
    request_seconds: float = 0.0  # moving average of a request's time from its start to its end
    steps: int = 0  # decoding steps (one new token for every row of a batch)
    tokens: int = 0  # tokens generated for requests
    cancelled: int = 0  # requests dropped because they were cancelled (their client went away)
    failed_rows: int = 0  # rows that failed alone (their request got the error, their batch went on)

    def add(self, rows: int, seconds: float) -> None:
        self.requests += 1
        self.rows += rows
        self.request_seconds = seconds if self.requests == 1 else 0.8 * self.request_seconds + 0.2 * seconds

    def step(self) -> None:
        self.steps += 1


class Engine:
    def __init__(self, model: Any, pad_id: int, max_batch_rows: int = 8, max_queue: int = 64,
                 batch_wait: float = 0.01, placement: Placement = Placement("cpu", "fp32"),
                 on_batch: Callable[[int, float], None] | None = None):
        self.model = model
        self.pad_id = pad_id
        self.max_batch_rows = max_batch_rows
        self.max_queue = max_queue
        self.batch_wait = batch_wait
        self.placement = placement
        self.on_batch = on_batch
        self.stats = EngineStats()
        self._pending: deque[Job] = deque()
        self._controls: deque[tuple[Callable[[], Any], Future]] = deque()
        self._retiring: dict[str, Future] = {}
        self._in_use: Counter = Counter()
        self._mixable: dict[str, bool] = {}
        self._lock = threading.Condition()
        self._running = False
        self._thread: threading.Thread | None = None

    # ---- called from any thread -------------------------------------------------------------------------
    def submit(self, job: Job) -> None:
        with self._lock:
            if not self._running:
                raise RuntimeError("the engine is not running")
            if len(self._pending) >= self.max_queue:
                raise QueueFull(self.retry_after())
            self._pending.append(job)
            self._in_use[job.adapter] += 1
            self._lock.notify_all()

    def call(self, work: Callable[[], Any]) -> Future:
        """Run `work` on the engine thread between batches; its result (or exception) arrives in the Future."""
        future: Future = Future()
        with self._lock:
            self._controls.append((work, future))
            self._lock.notify_all()
        return future

    def load_adapter(self, name: str, folder: str, mixable: bool) -> Future:
        return self.call(lambda: self._load_adapter(name, folder, mixable))

    def retire(self, name: str) -> tuple[Future, int]:
        """Unload adapter `name` once no queued or running request uses it; returns (done, requests in flight)."""
        future: Future = Future()
        with self._lock:
            self._retiring[name] = future
            in_flight = self._in_use[name]
            self._lock.notify_all()
        return future, in_flight

    def queue_depth(self) -> int:
        return len(self._pending)

    def retry_after(self) -> int:
        # Rows leave and join one at a time: a waiting request starts about when that many running requests end.
        waves = len(self._pending) / max(1, self.max_batch_rows) + 1
        return max(1, min(60, math.ceil(self.stats.request_seconds * waves)))

    def start(self) -> None:
        with self._lock:
            if self._running:
                return
            self._running = True
        self._thread = threading.Thread(target=self._loop, name="tunelab-engine", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        with self._lock:
            self._running = False
            self._lock.notify_all()
        if self._thread is not None:
            self._thread.join()
        while self._pending:
            job = self._pending.popleft()
            job.error = "the server is shutting down"
            job.on_done(job)

    # ---- the engine thread ------------------------------------------------------------------------------
    def _loop(self) -> None:
        while True:
            with self._lock:
                while self._running and not (self._pending or self._controls or self._retire_ready()):
                    self._lock.wait()
                if not self._running:
                    return
            self._run_controls()
            jobs = self._next_batch()
            if jobs:
                self._run(jobs)

    def _run_controls(self) -> None:
        """Control work (adapter loads, unloads) between decoding steps: each step picks its adapters afresh and
        the cache holds no adapter state, so a running batch never waits for it nor sees it half done."""
        with self._lock:
            controls = list(self._controls)
            self._controls.clear()
        for work, future in controls:
            run_into(future, work)
        self._unload_retired()

    def _retire_ready(self) -> list[str]:
        return [name for name in self._retiring if self._in_use[name] == 0]

    def _unload_retired(self) -> None:
        with self._lock:
            ready = [(name, self._retiring.pop(name)) for name in self._retire_ready()]
        for name, future in ready:
            run_into(future, lambda: self._unload_adapter(name))

    def _next_batch(self) -> list[Job]:
        with self._lock:
            if not self._pending:
                return []
            wait_until = self._pending[0].submitted + self.batch_wait
            while self._running and self._pending_rows() < self.max_batch_rows and time.monotonic() < wait_until:
                self._lock.wait(max(0.0, wait_until - time.monotonic()))
            key = self._pending[0].key if self._pending else None
            batch, rows = [], 0
            for job in list(self._pending):
                if job.key != key or (batch and rows + len(job.rows) > self.max_batch_rows):
                    continue
                self._pending.remove(job)
                batch.append(job)
                rows += len(job.rows)
        return [job for job in batch if self._still_wanted(job)]

    def _joiners(self, batch: "Running") -> list[Job]:
        """Queued requests that join the running batch at this step: in arrival order, while they have its key and
        fit in max_batch_rows. The first that does not stops the joining (first come, first served), so the batch
        drains and that request starts the next one instead of waiting behind ever newer requests."""
        from tunelab.serve.batch_cache import can_join

        with self._lock:
            if not self._running or not self._pending or (batch.decoding is not None
                                                          and not can_join(batch.decoding.cache)):
                return []
            room = self.max_batch_rows - len(batch.rows)
            taken = []
            for job in list(self._pending):
                if job.key != batch.key or len(job.rows) > room:
                    break
                self._pending.remove(job)
                taken.append(job)
                room -= len(job.rows)
        return [job for job in taken if self._still_wanted(job)]

    def _pending_rows(self) -> int:
        return sum(len(job.rows) for job in self._pending)

    def _still_wanted(self, job: Job) -> bool:
        if job.cancelled or time.monotonic() > job.deadline:
            job.error = None if job.cancelled else "timeout"
            self._done(job)
            return False
        return True

    def _run(self, jobs: list[Job]) -> None:
        """Decode until no row is left: one forward pass a step for every live row; queued requests join at the
        next step, rows that ended (or were cancelled, or timed out) leave."""
        batch = Running(key=jobs[0].key)
        self.stats.batches += 1
        while jobs or batch.rows:
            if jobs:
                self._admit(batch, jobs)
            self._leave(batch)
            if batch.rows:
                self._step(batch)
                self._leave(batch)
            self._run_controls()
            jobs = self._joiners(batch)

    def _admit(self, batch: "Running", jobs: list[Job]) -> None:
        """Score the newcomers' prompts if asked (echo), prefill the rows that decode in one forward pass (left
        padded) and pick their first tokens, then join them to the running rows."""
        import torch

        from tunelab.serve.batch_cache import join
        from tunelab.serve.rows import end

        started = time.monotonic()
        for job in jobs:
            job.started = started
        batch.jobs += jobs
        owners = [job for job in jobs for _ in job.rows]
        rows = [row for job in jobs for row in job.rows]
        try:
            with torch.inference_mode(), self.placement.autocast():
                scored = [index for index, row in enumerate(rows) if row.prompt_logprobs]
                if scored:
                    self._score([rows[index] for index in scored], [owners[index] for index in scored])
                decoded = [index for index, row in enumerate(rows) if row.max_tokens > 0 and row.live]
                if decoded:
                    joining = self._prefill([rows[index] for index in decoded], [owners[index] for index in decoded])
                    batch.decoding = join(batch.decoding, joining)
                    batch.rows += [rows[index] for index in decoded]
                    batch.owners += [owners[index] for index in decoded]
        except Exception as error:  # a failed prefill fails the newcomers, never the rows already running
            for job in jobs:
                job.error = f"generation failed: {type(error).__name__}: {error}"
        for row in rows:
            if row.live and row.max_tokens == 0:  # the prompt only
                end(row, "length", 0)
        if self.on_batch is not None:
            self.on_batch(len(batch.rows), time.monotonic() - started)

    def _prefill(self, rows: list[Row], owners: list[Job]) -> Any:
        from transformers import DynamicCache

        from tunelab.evaluate.generation import left_pad
        from tunelab.serve.batch_cache import Decoding, prefill_positions

        inputs = {key: value.to(self.placement.device)
                  for key, value in left_pad([row.prompt_ids for row in rows], self.pad_id).items()}
        cache = DynamicCache(config=self.model.config)
        logits = self._forward(owners, **inputs, position_ids=prefill_positions(inputs["attention_mask"]),
                               past_key_values=cache, use_cache=True, logits_to_keep=1)
        return Decoding(cache, inputs["attention_mask"], self._pick(rows, logits[:, -1]))

    def _step(self, batch: "Running") -> None:
        import torch

        try:
            with torch.inference_mode(), self.placement.autocast():
                inputs = batch.decoding.next_inputs()
                logits = self._forward(batch.owners, **inputs, past_key_values=batch.decoding.cache, use_cache=True)
                batch.decoding.tokens = self._pick(batch.rows, logits[:, -1])
        except Exception as error:  # a failed forward pass fails its batch's requests, never the server
            for job in batch.jobs:
                job.error = f"generation failed: {type(error).__name__}: {error}"

    def _pick(self, rows: list[Row], logits: Any) -> Any:
        """Each row's next token: its own sampling (RowSampler), then its stops, streaming and logprobs."""
        import torch

        from tunelab.serve.rows import RowSampler, advance

        scores = logits.to(dtype=torch.float32, copy=True)  # as generate does: sampling in fp32
        RowSampler(rows)(None, scores)
        tokens = scores.argmax(-1)
        self.stats.step()
        advance(rows, tokens.tolist(), time.monotonic())
        return tokens

    def _forward(self, owners: list[Job], **inputs: Any) -> Any:
        context, names = self._adapter_context(owners)
        with context:
            return self.model(**inputs, **({"adapter_names": names} if names else {})).logits

    def _leave(self, batch: "Running") -> None:
        """Rows that ended leave the batch; so do the rows of a request that was cancelled, timed out or failed,
        at once. A request is done when all its rows have ended."""
        import torch

        from tunelab.serve.batch_cache import keep

        now = time.monotonic()
        for job in batch.jobs:
            reason = ("cancelled" if job.cancelled else "timeout" if now > job.deadline
                      else "error" if job.error is not None else None)
            for row in job.rows:
                if row.live and reason is not None:
                    row.finish_reason = reason
        staying = [index for index, row in enumerate(batch.rows) if row.live]
        if len(staying) < len(batch.rows):
            with torch.inference_mode():  # the cache's tensors were made in it
                batch.decoding = keep(batch.decoding, staying) if staying else None
            batch.rows = [batch.rows[index] for index in staying]
            batch.owners = [batch.owners[index] for index in staying]
        for job in [job for job in batch.jobs if not any(row.live for row in job.rows)]:
            batch.jobs.remove(job)
            self._finish(job)

    def _finish(self, job: Job) -> None:
        failed = [row.failure for row in job.rows if row.failure is not None]
        self.stats.failed_rows += len(failed)
        if failed and job.error is None:
            job.error = f"generation failed: {failed[0]}"
        self.stats.tokens += sum(len(row.ids) for row in job.rows)
        self.stats.add(len(job.rows), time.monotonic() - (job.started or job.submitted))
        self._done(job)

    def _done(self, job: Job) -> None:
        job.finished = time.monotonic()
        if job.cancelled:
            self.stats.cancelled += 1
        with self._lock:
            self._in_use[job.adapter] -= 1
            self._lock.notify_all()
        job.on_done(job)

    def _score(self, rows: list[Row], owners: list[Job]) -> None:
        """Each prompt token's logprob, from one forward pass over the (right-padded) prompts."""
        import torch

        from tunelab.evaluate.generation import right_pad
        from tunelab.serve.rows import fail, score_prompt

        inputs = {key: value.to(self.placement.device)
                  for key, value in right_pad([row.prompt_ids for row in rows], self.pad_id).items()}
        logits = self._forward(owners, **inputs)
        for position, row in enumerate(rows):
            try:
                logprobs = torch.log_softmax(logits[position, :len(row.prompt_ids)].float(), dim=-1)
                if torch.isnan(logprobs).any():
                    fail(row, "the model's logits for this prompt are not finite (NaN or inf)")
                    continue
                row.prompt_scores = score_prompt(logprobs, row.prompt_ids, row.logprobs or 0)
            except Exception as error:  # this row's failure, never its batch's
                fail(row, f"scoring the prompt failed: {type(error).__name__}: {error}")
                continue
            if row.max_tokens == 1:  # lm-eval's loglikelihood requests: the one new token is in this pass already
                self._pick([row], logits[position, len(row.prompt_ids) - 1][None])

    def _adapter_context(self, owners: list[Job]) -> tuple[Any, list[str] | None]:
        """Which adapter each row (of request `owners[i]`) uses: peft's per-row `adapter_names` (one name a row,
        returned), or the one adapter all rows use (set on the model; the context it runs in). Decided at every
        forward pass, since rows join and leave between them."""
        if not self._mixable:  # no adapter loaded: the model is the plain base
            return nullcontext(), None
        adapters = {job.adapter for job in owners}
        if len(adapters) > 1:  # mixable adapters and base rows in one batch
            return nullcontext(), [job.adapter or "__base__" for job in owners]
        # One adapter for the whole batch: peft's plain forward, faster than its per-row path (which splits every
        # LoRA layer's input by adapter; measured 0.85x the plain forward for one request).
        adapter = adapters.pop()
        if adapter is None:
            return self.model.disable_adapter(), None
        if self.model.active_adapter != adapter:  # peft's set_adapter walks every layer: not at every step
            self.model.set_adapter(adapter)
        return nullcontext(), None

    def _load_adapter(self, name: str, folder: str, mixable: bool) -> None:
        from peft import PeftModel

        if isinstance(self.model, PeftModel):
            self.model.load_adapter(folder, adapter_name=name, is_trainable=False)
        else:
            self.model = PeftModel.from_pretrained(self.model, folder, adapter_name=name, is_trainable=False)
        self.model.eval()
        self._mixable[name] = mixable

    def _unload_adapter(self, name: str) -> None:
        if name not in self._mixable:
            return
        del self._mixable[name]
        if self._mixable:
            self.model.delete_adapter(name)
        else:  # the last adapter: back to the plain base model (peft removes its layers, nothing is merged)
            self.model = self.model.unload()


@dataclass
class Running:
    """The batch being decoded: its key (MIXED or one unmixable adapter), the requests in it, and its decoding rows
    with the request each belongs to (rows that only score their prompt are in `jobs`, not in `rows`)."""

    key: Any
    jobs: list[Job] = field(default_factory=list)
    rows: list[Row] = field(default_factory=list)
    owners: list[Job] = field(default_factory=list)
    decoding: Any = None  # batch_cache.Decoding of `rows`; None while there are none


def run_into(future: Future, work: Callable[[], Any]) -> None:
    try:
        future.set_result(work())
    except BaseException as error:  # reported to whoever waits on the future
        future.set_exception(error)
