"""Soak test of `tunelab serve`: many concurrent clients for minutes, good, hostile and abandoned requests mixed.

Starts its own `tunelab serve` on 127.0.0.1 (a free port, a temporary folder, API and admin keys) with the built-in
model or --model, then runs --clients threads until --duration seconds have passed, each picking at random:
  good       greedy (temperature 0) chat or completion, plain or streamed, on one of a few fixed prompts; the answer
             must equal the reference the server gave for that prompt once, alone, before the soak began
  hostile    one of ~45 malformed or malicious requests (bad JSON, wrong types, huge values, bad ids, unknown fields,
             oversized bodies, bad keys, paths outside --runs-root, ...), each with the 4xx it must get
  abandoned  a request whose client goes away: mid-body, while its answer is generated, or mid-stream
and samples the server's RSS from /proc once a second. Prints status counts, correct good answers, p50/p95 latency
per kind, RSS over time and what the server logged; exits 1 on any 5xx (seen by a client or in the server's request
log), a traceback in the server's output, a wrong good answer, a hostile request not refused as it should be, a
request with no answer, or RSS still growing at the end.

    python bench/soak.py [--clients 50] [--duration 300] [--model smollm2-135m-instruct] [--max-tokens 16]
                         [--threads N] [--exclude "seed 2^64"]
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import random
import re
import socket
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path

KEY, ADMIN = "soak-key", "soak-admin"
HOST = "127.0.0.1"
MAX_BODY_KB = 64
PROMPTS = ["Name three colours.", "What is two plus two?", "Write a word that rhymes with cat.",
           "Say hello in French.", "List the days of the week.", "abcd"]


@dataclass
class Case:
    """A hostile request and the statuses it may get."""

    name: str
    method: str
    path: str
    body: bytes | None
    expect: tuple[int, ...]
    headers: dict[str, str] = field(default_factory=dict)
    key: str | None = KEY


def hostile_cases(model: str) -> list[Case]:
    def chat(**fields) -> bytes:
        return json.dumps({"model": model, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2,
                           **fields}).encode()

    def completion(**fields) -> bytes:
        return json.dumps({"model": model, "prompt": "hi", "max_tokens": 2, **fields}).encode()

    def case(name, body, expect, path="/v1/chat/completions", method="POST", **options) -> Case:
        return Case(name, method, path, body, expect if isinstance(expect, tuple) else (expect,), **options)

    nested = ("[" * 20_000 + "]" * 20_000).encode()  # under the body limit: reaches the JSON parser
    return [
        case("malformed JSON", b'{"model": "x", "messages": [', 400),
        case("empty body", b"", (400, 422)),
        case("body is a list", b"[]", 422),
        case("body is null", b"null", 422),
        case("body is a string", b'"hello"', 422),
        case("invalid UTF-8", b'{"model": "\xff\xfe", "messages": []}', (400, 422)),
        case("deeply nested JSON", nested, (400, 413, 422)),
        case("NaN temperature", chat().replace(b'"max_tokens"', b'"temperature": NaN, "max_tokens"'), (400, 422)),
        case("max_tokens a string", chat(max_tokens="many"), 422),
        case("max_tokens 0", chat(max_tokens=0), 422),
        case("max_tokens 10^9", chat(max_tokens=10**9), 400),
        case("max_tokens 10^400", chat().replace(b'"max_tokens": 2', b'"max_tokens": 1' + b"0" * 400), (400, 422)),
        case("temperature a string", chat(temperature="hot"), 422),
        case("temperature -1", chat(temperature=-1), 422),
        case("temperature 1e300", chat(temperature=1e300), 422),
        case("temperature 1e-40", chat(temperature=1e-40), (200, 400, 422)),  # clamped or refused, never a 500
        case("top_p 0", chat(top_p=0), 422),
        case("n 1000", chat(n=1000), 422),
        case("n over the batch", chat(n=16), 400),
        case("seed 2^64", chat(seed=2**64), (400, 422)),
        case("seed -1", chat(seed=-1), (200, 400, 422)),
        case("unknown field", chat(frobnicate=True), 422),
        case("messages empty", chat(messages=[]), 422),
        case("unknown role", chat(messages=[{"role": "wizard", "content": "hi"}]), 422),
        case("content a number", chat(messages=[{"role": "user", "content": 123}]), 422),
        case("ten stop strings", chat(stop=[str(i) for i in range(10)]), 400),
        case("empty stop string", chat(stop=[""]), 400),
        case("presence_penalty", chat(presence_penalty=1.5), 400),
        case("json response_format", chat(response_format={"type": "json_object"}), 400),
        case("stream_options without stream", chat(stream_options={"include_usage": True}), 400),
        case("model with a slash", chat(model="bad/name"), 400),
        case("model 300 characters", chat(model="x" * 300), 400),
        case("unknown model", chat(model="no-such-model"), 404),
        case("model a number", chat(model=7), 422),
        case("completion prompt empty list", completion(prompt=[]), 400, path="/v1/completions"),
        case("completion prompt empty", completion(prompt=""), 400, path="/v1/completions"),
        case("completion prompt a dict", completion(prompt={"a": 1}), 422, path="/v1/completions"),
        case("oversized body", chat(messages=[{"role": "user", "content": "x" * (MAX_BODY_KB * 1024 + 10)}]), 413),
        case("declared length huge", chat(), 413, headers={"Content-Length": str(10**9)}),
        case("no key", chat(), 401, key=None),
        case("wrong key", chat(), 401, key="wrong"),
        case("non-ASCII key", chat(), 401, key="k\u00e9y"),
        case("basic auth", chat(), 401, key=None, headers={"Authorization": "Basic c29hazpzb2Fr"}),
        case("metrics without key", None, 401, path="/metrics", method="GET", key=None),
        case("openapi without key", None, 401, path="/openapi.json", method="GET", key=None),
        case("wrong method", None, 405, method="GET"),
        case("unknown route", None, 404, path="/v1/nothing", method="GET"),
        case("admin with the API key", json.dumps({"run": "."}).encode(), 401, path="/v1/adapters"),
        case("admin run /etc/shadow", json.dumps({"run": "/etc/shadow"}).encode(), 400, path="/v1/adapters",
             key=ADMIN),
        case("admin run 6000 characters", json.dumps({"run": "r" * 6000}).encode(), 400, path="/v1/adapters",
             key=ADMIN),
        case("admin run outside", json.dumps({"run": "/"}).encode(), 400, path="/v1/adapters", key=ADMIN),
        case("admin name with a slash", json.dumps({"run": ".", "name": "bad/name"}).encode(), 400,
             path="/v1/adapters", key=ADMIN),
        case("admin delete the base", None, 400, path=f"/v1/adapters/{model}", method="DELETE", key=ADMIN),
        case("admin delete unknown", None, 404, path="/v1/adapters/nothing", method="DELETE", key=ADMIN),
        case("admin delete a bad id", None, 400, path="/v1/adapters/bad%20id", method="DELETE", key=ADMIN),
    ]


@dataclass
class Result:
    kind: str  # good / hostile / abandoned
    name: str
    status: int | None  # None: no answer (connection refused, reset or timed out)
    seconds: float
    ok: bool
    detail: str = ""


def request(port: int, method: str, path: str, body: bytes | None, key: str | None,
            headers: dict[str, str] | None = None, timeout: float = 300) -> tuple[int, bytes]:
    connection = http.client.HTTPConnection(HOST, port, timeout=timeout)
    try:
        sent = {"Content-Type": "application/json", **({"Authorization": f"Bearer {key}"} if key else {}),
                **(headers or {})}
        connection.putrequest(method, path, skip_accept_encoding=True)
        if body is not None and "Content-Length" not in sent:
            sent["Content-Length"] = str(len(body))
        for name, value in sent.items():
            connection.putheader(name, value.encode("utf-8"))
        connection.endheaders()
        if body is not None and sent["Content-Length"] == str(len(body)):
            connection.send(body)
        response = connection.getresponse()
        return response.status, response.read()
    finally:
        connection.close()


def good_body(model: str, prompt: str, endpoint: str, stream: bool, max_tokens: int) -> bytes:
    fields = {"model": model, "max_tokens": max_tokens, "temperature": 0, "stream": stream}
    if endpoint == "chat":
        fields["messages"] = [{"role": "user", "content": prompt}]
    else:
        fields["prompt"] = prompt
    return json.dumps(fields).encode()


def answer_text(endpoint: str, stream: bool, data: bytes) -> str:
    """The generated text of a 200 answer, streamed (server-sent events) or not."""
    if not stream:
        choice = json.loads(data)["choices"][0]
        return choice["message"]["content"] if endpoint == "chat" else choice["text"]
    pieces = []
    for line in data.decode().splitlines():
        if not line.startswith("data: ") or line == "data: [DONE]":
            continue
        event = json.loads(line[6:])
        if "error" in event:
            raise ValueError(f"error event: {event['error']}")
        for choice in event["choices"]:
            pieces.append((choice.get("delta") or {}).get("content") or "" if endpoint == "chat"
                          else choice.get("text") or "")
    return "".join(pieces)


PATHS = {"chat": "/v1/chat/completions", "completion": "/v1/completions"}


def references(port: int, model: str, max_tokens: int) -> dict[tuple[str, str], str]:
    """Each prompt's greedy answer, asked alone before the soak: what every good request must get again."""
    found = {}
    for prompt in PROMPTS:
        for endpoint in PATHS:
            status, data = request(port, "POST", PATHS[endpoint], good_body(model, prompt, endpoint, False,
                                                                            max_tokens), KEY)
            if status != 200:
                raise SystemExit(f"reference {endpoint} {prompt!r}: status {status}: {data[:300]!r}")
            found[(endpoint, prompt)] = answer_text(endpoint, False, data)
    return found


def good(port: int, model: str, rng: random.Random, expected: dict, max_tokens: int) -> Result:
    endpoint, prompt, stream = rng.choice(list(PATHS)), rng.choice(PROMPTS), rng.random() < 0.3
    name = f"{endpoint}{' stream' if stream else ''}"
    started = time.perf_counter()
    try:
        status, data = request(port, "POST", PATHS[endpoint], good_body(model, prompt, endpoint, stream, max_tokens),
                               KEY)
    except OSError as error:
        return Result("good", name, None, time.perf_counter() - started, False, repr(error))
    seconds = time.perf_counter() - started
    if status != 200:
        return Result("good", name, status, seconds, False, data[:200].decode(errors="replace"))
    try:
        text = answer_text(endpoint, stream, data)
    except (ValueError, KeyError) as error:
        return Result("good", name, status, seconds, False, f"unreadable answer: {error}")
    right = text == expected[(endpoint, prompt)]
    return Result("good", name, status, seconds, right,
                  "" if right else f"{prompt!r}: {text!r} != {expected[(endpoint, prompt)]!r}")


def hostile(port: int, case: Case) -> Result:
    started = time.perf_counter()
    try:
        status, data = request(port, case.method, case.path, case.body, case.key, case.headers)
    except OSError as error:
        return Result("hostile", case.name, None, time.perf_counter() - started, False, repr(error))
    ok = status in case.expect
    return Result("hostile", case.name, status, time.perf_counter() - started, ok,
                  "" if ok else f"{status} (expected {case.expect}): {data[:200].decode(errors='replace')}")


def abandoned(port: int, model: str, rng: random.Random) -> Result:
    """A client that goes away: half its body sent, or while its answer is generated, or after the first bytes
    of a stream."""
    how = rng.choice(["mid-body", "while generating", "mid-stream"])
    body = good_body(model, rng.choice(PROMPTS), "chat", how == "mid-stream", 64)
    head = (f"POST /v1/chat/completions HTTP/1.1\r\nHost: {HOST}\r\nAuthorization: Bearer {KEY}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n").encode()
    started = time.perf_counter()
    try:
        with socket.create_connection((HOST, port), timeout=30) as connection:
            connection.sendall(head + (body[: len(body) // 2] if how == "mid-body" else body))
            if how == "mid-stream":
                connection.recv(64)
            time.sleep(rng.uniform(0.01, 0.5))
    except OSError as error:
        return Result("abandoned", how, None, time.perf_counter() - started, False, repr(error))
    return Result("abandoned", how, None, time.perf_counter() - started, True)


def client(port: int, model: str, seed: int, deadline: float, expected: dict, cases: list[Case], max_tokens: int,
           results: list[Result]) -> None:
    rng = random.Random(seed)
    while time.monotonic() < deadline:
        draw = rng.random()
        if draw < 0.6:
            results.append(good(port, model, rng, expected, max_tokens))
        elif draw < 0.9:
            results.append(hostile(port, rng.choice(cases)))
        else:
            results.append(abandoned(port, model, rng))


def rss_mib(pid: int) -> float | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


def sample_rss(pid: int, stop: threading.Event, samples: list[tuple[float, float]], started: float) -> None:
    while not stop.wait(1.0):
        value = rss_mib(pid)
        if value is not None:
            samples.append((time.monotonic() - started, value))


def start_server(args: argparse.Namespace, folder: Path) -> tuple[subprocess.Popen, int, Path]:
    log = folder / "server.log"
    command = [sys.executable, "-m", "tunelab", "serve", "--base", args.model, "--host", HOST, "--port", "0",
               "--serve-dir", str(folder / "serve"), "--api-key", KEY, "--admin-key", ADMIN,
               "--runs-root", str(folder), "--max-queue", str(max(64, args.clients * 2)),
               "--max-tokens", "64", "--max-body-kb", str(MAX_BODY_KB), "--timeout", str(args.timeout)]
    if args.threads:
        command += ["--threads", str(args.threads)]
    env = {**os.environ, "COLUMNS": "400", "TOKENIZERS_PARALLELISM": "false"}
    process = subprocess.Popen(command, cwd=folder, env=env, stdout=log.open("w"), stderr=subprocess.STDOUT)
    deadline = time.monotonic() + args.start_timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit(f"tunelab serve exited with {process.returncode}:\n{log.read_text()}")
        found = re.search(r"http://127\.0\.0\.1:(\d+)/v1", log.read_text())
        if found:
            port = int(found.group(1))
            try:
                if request(port, "GET", "/health", None, None, timeout=5)[0] == 200:
                    return process, port, log
            except OSError:
                pass
        time.sleep(0.5)
    process.kill()
    raise SystemExit(f"tunelab serve did not start in {args.start_timeout} s:\n{log.read_text()}")


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


def rss_verdict(samples: list[tuple[float, float]]) -> tuple[bool, str]:
    """Bounded: the last fifth of the run holds no more than the second fifth plus max(64 MiB, 20 %). The first fifth
    is warm-up (allocator pools and caches filling)."""
    if len(samples) < 5:
        return True, "too few samples to judge"
    fifth = len(samples) // 5
    settled = statistics.median(value for _, value in samples[fifth:2 * fifth])
    final = statistics.median(value for _, value in samples[-fifth:])
    allowed = settled + max(64.0, 0.2 * settled)
    return final <= allowed, f"settled {settled:.0f} MiB, final {final:.0f} MiB, allowed {allowed:.0f} MiB"


def server_log_statuses(folder: Path) -> Counter:
    database = folder / "serve" / "requests.sqlite"
    if not database.is_file():
        return Counter()
    rows = sqlite3.connect(database).execute("SELECT status, COUNT(*) FROM requests GROUP BY status").fetchall()
    return Counter({status: count for status, count in rows})


def report(results: list[Result], samples: list[tuple[float, float]], logged: Counter, tracebacks: int,
           seconds: float) -> bool:
    answered = [r for r in results if r.status is not None]
    classes = Counter(f"{r.status // 100}xx" for r in answered)
    print(f"\n{len(results)} requests in {seconds:.0f} s: " +
          "  ".join(f"{name} {classes.get(name, 0)}" for name in ("2xx", "4xx", "5xx")) +
          f"  no answer (abandoned excluded) {sum(1 for r in results if r.status is None and r.kind != 'abandoned')}")
    goods = [r for r in results if r.kind == "good"]
    print(f"good answered correctly {sum(r.ok for r in goods)}/{len(goods)}")
    hostiles = [r for r in results if r.kind == "hostile"]
    print(f"hostile refused as expected {sum(r.ok for r in hostiles)}/{len(hostiles)} "
          f"({len({r.name for r in hostiles})} distinct cases)")
    print(f"abandoned {sum(1 for r in results if r.kind == 'abandoned')} "
          f"({', '.join(f'{k} {v}' for k, v in Counter(r.name for r in results if r.kind == 'abandoned').items())})")
    print(f"\n{'kind':<22}{'count':>7}{'p50 s':>9}{'p95 s':>9}")
    by_kind = defaultdict(list)
    for r in results:
        if r.status is not None:
            by_kind[r.kind if r.kind != "good" else f"good {r.name}"].append(r.seconds)
    for kind in sorted(by_kind):
        values = by_kind[kind]
        print(f"{kind:<22}{len(values):>7}{percentile(values, 0.5):>9.3f}{percentile(values, 0.95):>9.3f}")
    if samples:
        step = max(1, len(samples) // 10)
        points = samples[::step] + ([samples[-1]] if (len(samples) - 1) % step else [])
        print("\nserver RSS  " + "  ".join(f"{t:.0f}s {mib:.0f}" for t, mib in points) + " (MiB)")
    bounded, why = rss_verdict(samples)
    print(f"RSS {'bounded' if bounded else 'GROWING'}: {why}")
    print("server request log: " + ", ".join(f"{status}: {count}" for status, count in sorted(logged.items())))
    print(f"tracebacks in the server's output: {tracebacks}")
    failures = [r for r in results if not r.ok]
    for name, count in Counter(f"{r.kind} {r.name}: {r.detail}" for r in failures).most_common(15):
        print(f"  FAILED x{count}  {name}")
    server_5xx = sum(count for status, count in logged.items() if status >= 500)
    return not failures and classes.get("5xx", 0) == 0 and server_5xx == 0 and tracebacks == 0 and bounded


def bounded(low: int, high: int):
    def parse(text: str) -> int:
        value = int(text)
        if not low <= value <= high:
            raise argparse.ArgumentTypeError(f"must be between {low} and {high}")
        return value
    return parse


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=bounded(1, 200), default=50, help="concurrent clients (1-200)")
    parser.add_argument("--duration", type=bounded(5, 3600), default=300, help="seconds of soak (5-3600)")
    parser.add_argument("--model", default="smollm2-135m-instruct", help="base model to serve")
    parser.add_argument("--max-tokens", type=bounded(1, 64), default=16, help="new tokens per good request")
    parser.add_argument("--threads", type=bounded(1, 256), default=None, help="the server's torch threads")
    parser.add_argument("--timeout", type=bounded(10, 3600), default=120, help="the server's --timeout")
    parser.add_argument("--start-timeout", type=bounded(10, 3600), default=600, help="seconds to wait for it")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--exclude", action="append", default=[], metavar="CASE",
                        help="leave out the hostile case of this name (repeatable), to see past a known failure")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="tunelab-soak-") as tmp:
        folder = Path(tmp)
        process, port, log = start_server(args, folder)
        try:
            model = json.loads(request(port, "GET", "/v1/models", None, KEY)[1])["data"][0]["id"]
            expected = references(port, model, args.max_tokens)
            print(f"serving {model} on port {port} (pid {process.pid}); {len(expected)} reference answers; "
                  f"{args.clients} clients for {args.duration} s")
            cases = [case for case in hostile_cases(model) if case.name not in args.exclude]
            results: list[Result] = []
            samples: list[tuple[float, float]] = []
            stop = threading.Event()
            started = time.monotonic()
            sampler = threading.Thread(target=sample_rss, args=(process.pid, stop, samples, started), daemon=True)
            sampler.start()
            deadline = started + args.duration
            threads = [threading.Thread(target=client, args=(port, model, args.seed * 1000 + index, deadline,
                                                              expected, cases, args.max_tokens, results))
                       for index in range(args.clients)]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join()
            elapsed = time.monotonic() - started
            stop.set()
            healthy = request(port, "GET", "/health", None, None, timeout=30)[0] == 200
        finally:
            process.terminate()
            try:
                process.wait(30)
            except subprocess.TimeoutExpired:
                process.kill()
        tracebacks = log.read_text(errors="replace").count("Traceback")
        passed = report(results, samples, server_log_statuses(folder), tracebacks, elapsed) and healthy
        print(f"\n{'PASS' if passed else 'FAIL'}{'' if healthy else ' (the server did not answer /health after)'}")
        return 0 if passed else 1


if __name__ == "__main__":
    sys.exit(main())
