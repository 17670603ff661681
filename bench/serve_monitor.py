"""What the server's monitor thread costs the requests it serves: the same sequential requests to `tunelab serve`
with the monitor off (`--monitor-every 0`, the baseline) and on (every N seconds, MiniLM included), measured in the
same run, each server a process of its own started by its command, over loopback with the `openai` client.

The request log is seeded with logged traffic first, so every tick has drift and quality to compute (and new
inputs to embed: half the prompts are order notes, half new-shape records, as examples/service_loop.py sends).

    python bench/serve_monitor.py --run runs/quickstart [--every 3] [--requests 24] [--max-tokens 48]
"""

from __future__ import annotations

import argparse
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import openai

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "examples"))
from service_loop import order_note, shifted_note  # noqa: E402  (the scenario's own traffic)

NAME, KEY = "bench-bot", "bench-key"


def prompts(count: int, seed: int) -> list[str]:
    rng = random.Random(seed)
    return [shifted_note(rng)[0] if index % 2 else order_note(rng)[0] for index in range(count)]


def serve(serve_dir: Path, port: int, every: float, max_tokens: int) -> subprocess.Popen:
    server = subprocess.Popen(
        [sys.executable, "-m", "tunelab", "serve", "--serve-dir", str(serve_dir), "--port", str(port), "--log-content",
         "--api-key", KEY, "--monitor-every", str(every), "--max-tokens", str(max_tokens)],
        start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2)
            return server
        except OSError:
            time.sleep(1)
    raise SystemExit("the server did not start")


def ask(port: int, texts: list[str], max_tokens: int) -> tuple[int, float]:
    client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key=KEY, max_retries=0, timeout=600)
    start, tokens = time.perf_counter(), 0
    for text in texts:
        reply = client.chat.completions.create(model=NAME, messages=[{"role": "user", "content": text}],
                                               temperature=0, max_tokens=max_tokens)
        tokens += reply.usage.completion_tokens
    return tokens, time.perf_counter() - start


def measure(run: Path, every: float, requests: int, max_tokens: int, port: int) -> float:
    with tempfile.TemporaryDirectory() as folder:
        serve_dir = Path(folder) / "serve"
        subprocess.run([sys.executable, "-m", "tunelab", "promote", NAME, str(run), "--serve-dir", str(serve_dir)],
                       check=True, capture_output=True)
        server = serve(serve_dir, port, every, max_tokens)
        try:
            ask(port, prompts(24, seed=1), max_tokens)  # logged traffic for the monitor to score
            time.sleep(every + 1)  # the first tick (it loads MiniLM and embeds the reference rows) is behind us
            tokens, seconds = ask(port, prompts(requests, seed=2), max_tokens)
        finally:
            os.killpg(server.pid, signal.SIGINT)
            server.wait(60)
    return tokens / seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", type=Path, required=True, help="A run with a LoRA adapter (runs/quickstart).")
    parser.add_argument("--every", type=float, default=3.0, help="Seconds between the monitor's ticks when on.")
    parser.add_argument("--requests", type=int, default=24)
    parser.add_argument("--max-tokens", type=int, default=48)
    parser.add_argument("--port", type=int, default=8141)
    args = parser.parse_args()
    off = measure(args.run, 0, args.requests, args.max_tokens, args.port)
    on = measure(args.run, args.every, args.requests, args.max_tokens, args.port)
    print(f"monitor off          {off:6.1f} tokens/s  1.00x")
    print(f"monitor every {args.every:g} s   {on:6.1f} tokens/s  {on / off:.2f}x")


if __name__ == "__main__":
    main()
