"""Serving throughput and latency of `tunelab serve` against a naive server and llama.cpp, measured in the same run.

Every server answers OpenAI chat requests for the same run's model on a loopback port, and the same clients (the
official `openai` package, one thread per client) send the same prompts with greedy decoding:
  naive           one HF `generate` per request, one request at a time on one worker thread (no batching)
  tunelab         tunelab's server: continuous batching (engine.py: requests join and leave the running batch at
                  every decoding step), the run's LoRA adapter unmerged on the base (peft); fp32, its CPU default
  tunelab-bf16    the same with bf16 autocast (--precision bf16 applies it to naive and tunelab instead)
  llama.cpp-f32   the run exported to GGUF by tunelab's own exporter (merged, f32), served by llama-cpp-python's
  llama.cpp-q8_0  `Llama` (the same, q8_0 weight matrices) behind the same tiny OpenAI-style app as the naive one:
                  one request at a time (llama-cpp-python's `Llama` decodes one sequence), the same prompt token ids
Prints, per server and number of concurrent clients, completion tokens/s and p50/p95 request latency, the ratios of
tunelab's tokens/s to the naive server's and to llama.cpp's at the same concurrency, and a scenario: a short request
sent 2 s into a long one, and its latency on each server (a fixed batch, like a one-at-a-time server, makes it wait
for the long one's end; continuous batching lets it join).

    python bench/serve.py --run runs/quickstart [--clients 1,4,8,32] [--requests 12,16,32,32] [--max-tokens 64]
                          [--servers naive,tunelab,tunelab-bf16,llama.cpp-f32,llama.cpp-q8_0] [--precision fp32|bf16]
                          [--threads N] [--gguf-dir DIR]

llama.cpp needs `llama-cpp-python` (bench only: `pip install --no-deps llama-cpp-python diskcache`; it compiles
llama.cpp with cmake); without it those servers are skipped with a line saying so.
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
SERVERS = ("naive", "tunelab", "llama.cpp-f32", "llama.cpp-q8_0")  # and tunelab-bf16 on request (--servers)


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


def one_at_a_time(answer):
    """An OpenAI-style chat endpoint whose requests `answer` runs one at a time on one worker thread. (A lock in
    FastAPI's thread pool would also serialize them, but then each request may run on another OS thread with its own
    OpenMP team, and the idle teams spinning made that baseline twice as slow at 4 clients: too easy to beat.)"""
    from fastapi import FastAPI

    worker = ThreadPoolExecutor(1)
    app = FastAPI()

    @app.post("/v1/chat/completions")
    def chat(body: dict) -> dict:
        return worker.submit(answer, body).result()

    return app


def naive_app(run: Path, home: Path, bf16: bool):
    """The baseline: the run's tuned model, one `generate` per request, requests served one at a time."""
    import torch

    from tunelab.data.templates import encode_prompt, stop_token_ids
    from tunelab.models.load import model_stop_ids
    from tunelab.run.models import open_run_models

    models = open_run_models(run, home, "cpu")
    model, tokenizer = models.inference().load_tuned(), models.tokenizer()
    stops = sorted(stop_token_ids(tokenizer, model_stop_ids(model)))
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

    return one_at_a_time(answer)


def llama_cpp_app(gguf: Path, run: Path, home: Path, threads: int):
    """llama.cpp on the run's GGUF export, one request at a time on one worker thread (as the naive server), fed the
    token ids tunelab's chat template gives, so every server decodes the same prompts."""
    from llama_cpp import Llama

    from tunelab.data.templates import encode_prompt
    from tunelab.run.models import open_run_models

    tokenizer = open_run_models(run, home, "cpu").tokenizer()
    # use_mmap=False: the weights in process memory, as torch's are; a memory-mapped file's pages were reclaimed
    # between requests here and read back from disk (a 128-token answer took 18 s instead of 3.6 s).
    llm = Llama(model_path=str(gguf), n_ctx=2048, n_batch=512, n_threads=threads, n_threads_batch=threads,
                verbose=False, use_mmap=False)
    def answer(body: dict) -> dict:
        ids = encode_prompt(tokenizer, body["messages"])
        out = llm.create_completion(prompt=ids, max_tokens=body["max_tokens"], temperature=0.0, top_k=1,
                                    top_p=1.0, min_p=0.0, repeat_penalty=1.0)
        return {"id": "llama.cpp", "object": "chat.completion", "created": int(time.time()), "model": body["model"],
                "choices": [{"index": 0, "message": {"role": "assistant", "content": out["choices"][0]["text"]},
                             "finish_reason": out["choices"][0]["finish_reason"] or "stop"}],
                "usage": out["usage"]}

    return one_at_a_time(answer)


def export_ggufs(run: Path, folder: Path, quants: list[str]) -> dict[str, Path]:
    """The run exported with tunelab's exporter (`tunelab export --format gguf`), once per quantization; reused
    from `folder` when already there."""
    from tunelab.export.exporter import ExportOptions, export_run
    from tunelab.paths import tunelab_home

    files = {}
    for quant in quants:
        dest = folder / f"{run.resolve().name}-{quant}"
        if not (dest / "export.json").is_file():
            print(f"exporting {run} to GGUF {quant} in {dest}", flush=True)
            export_run(run, ExportOptions(format="gguf", quant=None if quant == "f32" else quant, out=dest,
                                          overwrite=True, verify=False), tunelab_home(), say=lambda _: None,
                       device="cpu")
        files[quant] = next(dest.glob("*.gguf"))
    return files


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
    return summary(results, time.perf_counter() - started)


def summary(results: list[tuple[float, int, str]], wall: float) -> dict:
    latencies = sorted(seconds for seconds, _, _ in results)
    tokens = sum(count for _, count, _ in results)
    return {"tokens": tokens, "wall": wall, "tokens_per_second": tokens / wall,
            "p50": statistics.quantiles(latencies, n=100, method="inclusive")[49],
            "p95": statistics.quantiles(latencies, n=100, method="inclusive")[94],
            "texts": [text for _, _, text in results]}


LONG_PROMPT = [{"role": "user", "content": "Write the numbers from 1 to 300 in words, one per line, and nothing else."}]


def late_short(url: str, model: str, short_prompt: list[dict], long_tokens: int, delay: float) -> dict:
    """A long request, then 2 s later a short one: the short one's latency (and the long one's, for scale)."""
    import openai

    client = openai.OpenAI(base_url=url, api_key="bench", max_retries=0, timeout=600)

    def one(messages, max_tokens):
        started = time.perf_counter()
        answer = client.chat.completions.create(model=model, messages=messages, temperature=0, max_tokens=max_tokens)
        return time.perf_counter() - started, answer.usage.completion_tokens

    with ThreadPoolExecutor(2) as pool:
        long = pool.submit(one, LONG_PROMPT, long_tokens)
        time.sleep(delay)
        short = pool.submit(one, short_prompt, 16)
        (long_seconds, long_count), (short_seconds, short_count) = long.result(), short.result()
    return {"long_seconds": long_seconds, "long_tokens": long_count, "short_seconds": short_seconds,
            "short_tokens": short_count}


def server_app(mode: str, args: argparse.Namespace, home: Path, serve_dir: str, bf16: bool):
    from tunelab.device import Placement
    from tunelab.serve.app import create_app
    from tunelab.serve.server import build_service
    from tunelab.serve.settings import ServeSettings

    if mode == "naive":
        return naive_app(args.run, home, bf16)
    if mode.startswith("llama.cpp-"):
        return llama_cpp_app(args.ggufs[mode.split("-", 1)[1]], args.run, home, args.threads or os.cpu_count())
    settings = ServeSettings(serve_dir=Path(serve_dir), max_batch_rows=args.max_batch, max_queue=256,
                             max_tokens=max(args.max_tokens, args.long_tokens), request_timeout=3600,
                             placement=Placement("cpu", "bf16" if bf16 else "fp32"))
    return create_app(build_service([f"bench={args.run}"], None, settings, home, say=lambda _: None))


def measure(mode: str, args: argparse.Namespace, levels: list[int]) -> list[tuple[str, int, dict]]:
    import torch

    from tunelab.paths import tunelab_home
    from tunelab.quiet import quiet_libraries

    quiet_libraries()
    if args.threads:
        torch.set_num_threads(args.threads)
    home = tunelab_home()
    bf16 = mode == "tunelab-bf16" or (args.precision == "bf16" and not mode.startswith("llama.cpp"))
    print(f"{mode}: run {args.run}  max_tokens {args.max_tokens}  greedy  "
          f"{'gguf' if mode.startswith('llama.cpp') else 'bf16 autocast' if bf16 else 'fp32'}  "
          f"cpus {os.cpu_count()}  torch threads {torch.get_num_threads()}", flush=True)
    rows = []
    with tempfile.TemporaryDirectory() as serve_dir:
        server = Loopback(server_app(mode, args, home, serve_dir, bf16))
        drive(server.url, "bench", prompts_of(args.run, 2), 1, 8)  # warm-up
        for clients in levels:
            result = drive(server.url, "bench", prompts_of(args.run, requests_at(args, clients)), clients,
                           args.max_tokens)
            rows.append((mode, clients, result))
            print(f"  {mode:14s} {clients:2d} clients: {result['tokens_per_second']:.1f} tokens/s  "
                  f"p50 {result['p50']:.2f} s  p95 {result['p95']:.2f} s", flush=True)
        if args.late_delay > 0:
            late = late_short(server.url, "bench", prompts_of(args.run, 1)[0], args.long_tokens, args.late_delay)
            rows.append((mode, 0, late))
            print(f"  {mode:14s} short request {args.late_delay:.0f} s into a long one: {late['short_seconds']:.2f} s "
                  f"(the long one: {late['long_tokens']} tokens in {late['long_seconds']:.2f} s)", flush=True)
        server.stop()
    return rows


def requests_at(args: argparse.Namespace, clients: int) -> int:
    counts = [int(part) for part in str(args.requests).split(",")]
    levels = [int(part) for part in args.clients.split(",")]
    count = counts[levels.index(clients)] if len(counts) == len(levels) else counts[0]
    return max(count, clients)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", type=Path, required=True, help="A finished run with a LoRA adapter.")
    parser.add_argument("--clients", default="1,4,8,32", help="Concurrent clients to measure, comma-separated.")
    parser.add_argument("--requests", default="12,16,32,32",
                        help="Requests per measurement, one number or one per --clients entry (at least clients). "
                             "A few per client, so the batch's ramp-up and drain are not most of the run.")
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--max-batch", type=int, default=32, help="tunelab serve --max-batch.")
    parser.add_argument("--servers", default=",".join(SERVERS), help="Servers to measure, comma-separated.")
    parser.add_argument("--late-delay", type=float, default=2.0,
                        help="Seconds into a long request that a short one is sent (0: no such scenario).")
    parser.add_argument("--long-tokens", type=int, default=256, help="The long request's max_tokens.")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch intra-op threads for the torch servers and llama.cpp's threads (default: "
                             "torch's own choice; all CPUs for llama.cpp).")
    parser.add_argument("--precision", choices=("fp32", "bf16"), default="fp32",
                        help="bf16 autocast for the torch servers, or fp32 (tunelab serve's default).")
    parser.add_argument("--gguf-dir", type=Path, default=Path(tempfile.gettempdir()) / "tunelab-bench-gguf",
                        help="Where the run's GGUF exports are written (and reused from).")
    args = parser.parse_args()

    levels = [int(part) for part in args.clients.split(",")]
    servers = [name for name in args.servers.split(",") if name]
    llama = [name for name in servers if name.startswith("llama.cpp-")]
    if llama:
        try:
            import llama_cpp  # noqa: F401
        except ImportError:
            print("llama-cpp-python is not installed: llama.cpp is not measured", flush=True)
            servers = [name for name in servers if name not in llama]
        else:
            args.ggufs = export_ggufs(args.run, args.gguf_dir, [name.split("-", 1)[1] for name in llama])
    rows = []
    # Each server is measured in a process of its own, so neither's threads or memory can slow the other.
    with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn"), max_tasks_per_child=1) as pool:
        for mode in servers:
            rows += pool.submit(measure, mode, args, levels).result()
    report(rows, levels, servers, args)


def report(rows: list[tuple[str, int, dict]], levels: list[int], servers: list[str], args: argparse.Namespace) -> None:
    found = {(mode, clients): result for mode, clients, result in rows}
    baselines = [name for name in servers if not name.startswith("tunelab")]
    print()
    print(f"{'server':14s} {'clients':>7s} {'requests':>8s} {'tokens':>7s} {'tokens/s':>9s} {'p50 s':>7s} "
          f"{'p95 s':>7s}" + "".join(f" {'tunelab/' + name:>22s}" for name in baselines))
    for mode in servers:
        for clients in levels:
            result = found[(mode, clients)]
            ratios = "".join(f" {result_ratio(found, clients, mode, name):>21.2f}x" if mode.startswith("tunelab")
                             else f" {'':>22s}" for name in baselines)
            print(f"{mode:14s} {clients:7d} {len(result['texts']):8d} {result['tokens']:7d} "
                  f"{result['tokens_per_second']:9.1f} {result['p50']:7.2f} {result['p95']:7.2f}{ratios}")
    if "naive" in servers and "tunelab" in servers:
        same = sum(a == b for clients in levels for a, b in zip(found[("naive", clients)]["texts"],
                                                                found[("tunelab", clients)]["texts"]))
        total = sum(len(found[("naive", clients)]["texts"]) for clients in levels)
        print(f"\nidentical answers (tunelab vs naive, greedy): {same} of {total}")
    if args.late_delay > 0:
        print(f"\na short request (16 tokens) sent {args.late_delay:.0f} s into a long one ({args.long_tokens} "
              f"max tokens):")
        for mode in servers:
            late = found[(mode, 0)]
            print(f"  {mode:14s} short {late['short_seconds']:6.2f} s   long {late['long_seconds']:6.2f} s "
                  f"({late['long_tokens']} tokens)")


def result_ratio(found: dict, clients: int, mode: str, baseline: str) -> float:
    return found[(mode, clients)]["tokens_per_second"] / found[(baseline, clients)]["tokens_per_second"]


if __name__ == "__main__":
    main()
