"""Serving throughput and latency of `tunelab serve` against a naive server measured in the same run.

Both servers answer OpenAI chat requests for the same run's adapter on a loopback port, and the same clients (the
official `openai` package, one thread per client) send the same prompts with greedy decoding:
  naive     one HF `generate` per request, one request at a time on one worker thread (no batching)
  tunelab   tunelab's server: dynamic batching of concurrent requests (engine.py), peft adapter_names
Prints, per number of concurrent clients, completion tokens/s, p50/p95 request latency and tunelab's tokens/s
as a ratio of the naive server's at the same concurrency.

    python bench/serve.py --run runs/deploy-check [--clients 1,4,8] [--requests 16] [--max-tokens 64]
                          [--precision fp32|bf16] [--threads N]
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import statistics
import tempfile
import threading
import time
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from pathlib import Path

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


class Loopback:
    """An ASGI app served by uvicorn on 127.0.0.1 in a thread."""

    def __init__(self, app):
        import uvicorn

        from tunelab.serve.server import bind

        self.sock = bind("127.0.0.1", 0)
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}/v1"
        self.server = uvicorn.Server(uvicorn.Config(app, log_level="warning"))
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.sock]}, daemon=True)
        self.thread.start()
        while not self.server.started:
            time.sleep(0.01)

    def stop(self):
        self.server.should_exit = True
        self.thread.join(30)


def naive_app(run: Path, home: Path, bf16: bool):
    """The baseline: the run's tuned model, one `generate` per request, requests served one at a time."""
    import torch
    from fastapi import FastAPI

    from tunelab.data.templates import encode_prompt, stop_token_ids
    from tunelab.models.load import model_stop_ids
    from tunelab.run.models import open_run_models

    models = open_run_models(run, home, "cpu")
    model, tokenizer = models.inference().load_tuned(), models.tokenizer()
    stops = sorted(stop_token_ids(tokenizer, model_stop_ids(model)))
    # One worker thread runs every generate, one request at a time. (A lock in FastAPI's thread pool would also
    # serialize them, but then each request may run on another OS thread with its own OpenMP team, and the idle
    # teams spinning made that baseline twice as slow at 4 clients: too easy to beat.)
    worker = ThreadPoolExecutor(1)
    app = FastAPI()

    @app.post("/v1/chat/completions")
    def chat(body: dict) -> dict:
        return worker.submit(answer, body).result()

    def answer(body: dict) -> dict:
        ids = torch.tensor([encode_prompt(tokenizer, body["messages"])])
        with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            output = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), do_sample=False,
                                    max_new_tokens=body["max_tokens"], eos_token_id=stops,
                                    pad_token_id=tokenizer.pad_token_id, temperature=None, top_p=None, top_k=None)
        new = output[0, ids.shape[1]:].tolist()
        new = new[: next((i for i, t in enumerate(new) if t in stops), len(new))]
        text = tokenizer.decode(new, skip_special_tokens=True)
        return {"id": "naive", "object": "chat.completion", "created": int(time.time()), "model": body["model"],
                "choices": [{"index": 0, "message": {"role": "assistant", "content": text},
                             "finish_reason": "stop"}],
                "usage": {"prompt_tokens": ids.shape[1], "completion_tokens": len(new),
                          "total_tokens": ids.shape[1] + len(new)}}

    return app


def prompts_of(run: Path, count: int) -> list[list[dict]]:
    from tunelab.data.dataset import read_splits
    from tunelab.data.templates import prompt_and_reference

    splits = read_splits(run / "data")
    rows = [row for row in splits.test + splits.validation if row.kind == "chat"]
    chats = [prompt_and_reference(row.messages)[0] for row in rows] or [[{"role": "user", "content": "Hi"}]]
    return [chats[i % len(chats)] for i in range(count)]


def drive(url: str, model: str, prompts: list[list[dict]], clients: int, max_tokens: int) -> dict:
    import openai

    client = openai.OpenAI(base_url=url, api_key="bench", max_retries=0, timeout=600)

    def one(messages):
        started = time.perf_counter()
        answer = client.chat.completions.create(model=model, messages=messages, temperature=0, max_tokens=max_tokens)
        return time.perf_counter() - started, answer.usage.completion_tokens, answer.choices[0].message.content

    started = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        results = list(pool.map(one, prompts))
    wall = time.perf_counter() - started
    latencies = sorted(seconds for seconds, _, _ in results)
    tokens = sum(count for _, count, _ in results)
    return {"tokens": tokens, "wall": wall, "tokens_per_second": tokens / wall,
            "p50": statistics.quantiles(latencies, n=100, method="inclusive")[49],
            "p95": statistics.quantiles(latencies, n=100, method="inclusive")[94],
            "texts": [text for _, _, text in results]}


def measure(mode: str, args: argparse.Namespace, levels: list[int]) -> list[tuple[str, int, dict]]:
    import torch

    from tunelab.device import Placement
    from tunelab.paths import tunelab_home
    from tunelab.quiet import quiet_libraries
    from tunelab.serve.app import create_app
    from tunelab.serve.server import build_service
    from tunelab.serve.settings import ServeSettings

    quiet_libraries()
    if args.threads:
        torch.set_num_threads(args.threads)
    home, bf16 = tunelab_home(), args.precision == "bf16"
    print(f"{mode}: run {args.run}  max_tokens {args.max_tokens}  greedy  {'bf16 autocast' if bf16 else 'fp32'}  "
          f"cpus {os.cpu_count()}  torch threads {torch.get_num_threads()}", flush=True)
    rows = []
    with tempfile.TemporaryDirectory() as serve_dir:
        if mode == "naive":
            app = naive_app(args.run, home, bf16)
        else:
            settings = ServeSettings(serve_dir=Path(serve_dir), max_batch_rows=args.max_batch, max_queue=256,
                                     max_tokens=args.max_tokens, request_timeout=3600,
                                     placement=Placement("cpu", "bf16" if bf16 else "fp32"))
            app = create_app(build_service([f"bench={args.run}"], None, settings, home, say=lambda _: None))
        server = Loopback(app)
        drive(server.url, "bench", prompts_of(args.run, 2), 1, 8)  # warm-up
        for clients in levels:
            result = drive(server.url, "bench", prompts_of(args.run, max(args.requests, clients)), clients,
                           args.max_tokens)
            rows.append((mode, clients, result))
            print(f"  {mode:8s} {clients} clients: {result['tokens_per_second']:.1f} tokens/s", flush=True)
        server.stop()
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", type=Path, required=True, help="A finished run with a LoRA adapter.")
    parser.add_argument("--clients", default="1,4,8", help="Concurrent clients to measure, comma-separated.")
    parser.add_argument("--requests", type=int, default=16, help="Requests per measurement (at least clients).")
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--max-batch", type=int, default=8)
    parser.add_argument("--threads", type=int, default=None,
                        help="torch intra-op threads for both servers (default: torch's own choice).")
    parser.add_argument("--precision", choices=("fp32", "bf16"), default="fp32",
                        help="bf16 autocast for both servers, or fp32 (tunelab serve's default).")
    args = parser.parse_args()

    levels = [int(part) for part in args.clients.split(",")]
    rows = []
    # Each server is measured in a process of its own, so neither's threads or memory can slow the other.
    with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn"), max_tasks_per_child=1) as pool:
        for mode in ("naive", "tunelab"):
            rows += pool.submit(measure, mode, args, levels).result()
    print()
    print(f"{'server':8s} {'clients':>7s} {'requests':>8s} {'tokens':>7s} {'tokens/s':>9s} {'p50 s':>7s} "
          f"{'p95 s':>7s} {'vs naive':>9s}")
    naive = {clients: result for mode, clients, result in rows if mode == "naive"}
    for mode, clients, result in rows:
        ratio = result["tokens_per_second"] / naive[clients]["tokens_per_second"]
        print(f"{mode:8s} {clients:7d} {len(result['texts']):8d} {result['tokens']:7d} "
              f"{result['tokens_per_second']:9.1f} {result['p50']:7.2f} {result['p95']:7.2f} {ratio:8.2f}x")
    same = sum(a == b for clients in levels for a, b in zip(naive[clients]["texts"],
               next(r for m, c, r in rows if m == "tunelab" and c == clients)["texts"]))
    total = sum(len(naive[clients]["texts"]) for clients in levels)
    print(f"\nidentical answers (tunelab vs naive, greedy): {same} of {total}")


if __name__ == "__main__":
    main()
