"""The generation engine: one thread owns the model; requests queue up and run in dynamic batches.

Everything that touches the model runs on this thread: generation batches and, between batches, control work
(loading an adapter). So an adapter is never added or removed under a running `generate`, and a request already
queued or running keeps its adapter until it finishes: an adapter being deleted is only unloaded once no queued or
running request uses it (`retire`).

Batching: when a request arrives at an idle engine, it waits up to `batch_wait` seconds for others, then takes up
to `max_batch_rows` rows (a request with n choices is n rows). Rows of LoRA adapters that peft can mix in one
forward (`adapter_names`) and of the base share a batch; other adapters (DoRA) batch only with their own requests.
The queue is bounded: past `max_queue` waiting requests `submit` raises QueueFull with a Retry-After estimate.

Failures and cancels are per request: a row whose sampling fails ends alone (rows.py) and fails only its own
request; a cancelled request (its client went away) stops at the next decoding step, whether it is queued or
running, while the rest of its batch goes on. Completions' echo scores prompts with one forward pass before decoding.
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
    batches: int = 0
    rows: int = 0
    batch_seconds: float = 0.0  # moving average
    steps: int = 0  # decoding steps (one new token for every row of a batch)
    tokens: int = 0  # tokens generated for requests
    cancelled: int = 0  # requests dropped because they were cancelled (their client went away)
    failed_rows: int = 0  # rows that failed alone (their request got the error, their batch went on)

    def add(self, rows: int, seconds: float) -> None:
        self.batches += 1
        self.rows += rows
        self.batch_seconds = seconds if self.batches == 1 else 0.8 * self.batch_seconds + 0.2 * seconds

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
        waves = len(self._pending) / max(1, self.max_batch_rows) + 1
        return max(1, min(60, math.ceil(self.stats.batch_seconds * waves)))

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
                controls = list(self._controls)
                self._controls.clear()
            for work, future in controls:
                run_into(future, work)
            self._unload_retired()
            batch = self._next_batch()
            if batch:
                self._run(batch)

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

    def _pending_rows(self) -> int:
        return sum(len(job.rows) for job in self._pending)

    def _still_wanted(self, job: Job) -> bool:
        if job.cancelled or time.monotonic() > job.deadline:
            job.error = None if job.cancelled else "timeout"
            self._done(job)
            return False
        return True

    def _run(self, batch: list[Job]) -> None:
        started = time.monotonic()
        for job in batch:
            job.started = started
        rows = [row for job in batch for row in job.rows]
        try:
            self._generate(batch, rows)
        except Exception as error:  # a failed forward pass fails its batch's requests, never the server
            for job in batch:
                job.error = f"generation failed: {type(error).__name__}: {error}"
        for job in batch:
            failed = [row.failure for row in job.rows if row.failure is not None]
            self.stats.failed_rows += len(failed)
            if failed and job.error is None:
                job.error = f"generation failed: {failed[0]}"
        seconds = time.monotonic() - started
        self.stats.add(len(rows), seconds)
        if self.on_batch is not None:
            self.on_batch(len(rows), seconds)
        for job in batch:
            self._done(job)

    def _done(self, job: Job) -> None:
        job.finished = time.monotonic()
        if job.cancelled:
            self.stats.cancelled += 1
        with self._lock:
            self._in_use[job.adapter] -= 1
            self._lock.notify_all()
        job.on_done(job)

    def _generate(self, batch: list[Job], rows: list[Row]) -> None:
        import torch

        from tunelab.serve.rows import end

        context, names = self._adapter_context(batch)
        with context, torch.no_grad(), self.placement.autocast():
            scored = [index for index, row in enumerate(rows) if row.prompt_logprobs]
            if scored:
                self._score([rows[index] for index in scored], pick(names, scored))
            decoded = [index for index, row in enumerate(rows) if row.max_tokens > 0 and row.live]
            if decoded:
                self._decode([rows[index] for index in decoded], pick(names, decoded))
        for row in rows:
            if row.live:  # max_tokens 0: the prompt only
                end(row, "length", 0)

    def _score(self, rows: list[Row], names: list[str] | None) -> None:
        """Each prompt token's logprob, from one forward pass over the (right-padded) prompts."""
        import torch

        from tunelab.evaluate.generation import right_pad
        from tunelab.serve.rows import fail, score_prompt

        inputs = {key: value.to(self.placement.device)
                  for key, value in right_pad([row.prompt_ids for row in rows], self.pad_id).items()}
        logits = self.model(**inputs, **({"adapter_names": names} if names else {})).logits
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
                self._first_token(row, logits[position, len(row.prompt_ids) - 1])

    def _first_token(self, row: Row, logits: Any) -> None:
        """Pick and record a row's next token from its last prompt position's logits, as a decoding step would."""
        from tunelab.serve.rows import RowSampler, RowTracker

        scores = logits.float()[None].clone()
        RowSampler([row])(None, scores)
        if row.live:
            RowTracker([row], on_step=self.stats.step)(scores.argmax(-1, keepdim=True), scores)
            self.stats.tokens += len(row.ids)

    def _decode(self, rows: list[Row], names: list[str] | None) -> None:
        from transformers import LogitsProcessorList, StoppingCriteriaList

        from tunelab.evaluate.generation import left_pad
        from tunelab.serve.rows import RowSampler, RowTracker

        inputs = {key: value.to(self.placement.device)
                  for key, value in left_pad([row.prompt_ids for row in rows], self.pad_id).items()}
        tracker = RowTracker(rows, on_step=self.stats.step)
        common_stops = set.intersection(*(row.stop_ids for row in rows))
        options = {
            "max_new_tokens": max(row.max_tokens for row in rows),
            "do_sample": False, "temperature": None, "top_p": None, "top_k": None,
            "pad_token_id": self.pad_id,
            "eos_token_id": sorted(common_stops) or None,
            "logits_processor": LogitsProcessorList([RowSampler(rows)]),
            "stopping_criteria": StoppingCriteriaList([tracker]),
        }
        if names:
            options["adapter_names"] = names
        try:
            self.model.generate(**inputs, **options)
        finally:
            self.stats.tokens += sum(len(row.ids) for row in rows)
        tracker.finish()

    def _adapter_context(self, batch: list[Job]) -> tuple[Any, list[str] | None]:
        """Which adapter each row uses: peft's per-row `adapter_names` (one name a row, returned), or the one
        adapter of an unmixable batch (set on the model; the context it runs in)."""
        if not self._mixable:  # no adapter loaded: the model is the plain base
            return nullcontext(), None
        adapters = {job.adapter for job in batch}
        if len(adapters) > 1:  # mixable adapters and base rows in one batch
            return nullcontext(), [job.adapter or "__base__" for job in batch for _ in job.rows]
        # One adapter for the whole batch: peft's plain forward, faster than its per-row path (which splits every
        # LoRA layer's input by adapter; measured 0.85x the plain forward for one request).
        adapter = adapters.pop()
        if adapter is None:
            return self.model.disable_adapter(), None
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


def pick(names: list[str] | None, indices: list[int]) -> list[str] | None:
    return None if names is None else [names[index] for index in indices]


def run_into(future: Future, work: Callable[[], Any]) -> None:
    try:
        future.set_result(work())
    except BaseException as error:  # reported to whoever waits on the future
        future.set_exception(error)
