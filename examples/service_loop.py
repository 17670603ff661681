"""The loop after deployment, end to end with tunelab's own commands, on the quick-start model.

    python examples/service_loop.py runs/quickstart --serve-dir /tmp/loop

1. `tunelab promote support-bot RUN`: the quick-start run becomes version 1 of the name `support-bot`
2. `tunelab serve --jobs --log-content`: the server answers `support-bot` and runs retrain jobs in a worker
3. traffic through the official openai client: order notes as the model was trained on, then notes in a shape it
   never saw (one `|`-separated record a line, no instruction); every answer is checked against the right JSON and
   judged through POST /v1/feedback: thumbs up, or thumbs down with the right JSON as the correction
4. `tunelab monitor --json`: the drift and quality scores, flagged past their thresholds; the dashboard's monitor page
5. `tunelab retrain --with-feedback --wait`: a new version from the original data plus the feedback, compared with
   the version in service on the original test split and on held-out feedback; promoted or kept, with the reasons
6. new notes of the new shape, answered by `support-bot` (whichever version the gate left in service)
7. `tunelab rollback support-bot` when the retrain was promoted; `tunelab versions`
The figures go to <serve-dir>/scenario.json; everything the commands print goes to the terminal.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import openai

from tunelab.data.synthetic import order_note

NAME = "support-bot"
SYSTEM = "You convert order notes to JSON."
API_KEY, ADMIN_KEY = "sk-loop", "sk-loop-admin"


def shifted_note(rng: random.Random) -> tuple[str, dict]:
    """The same orders as one `|`-separated record, as a new client system sends them."""
    _, answer = order_note(rng)
    items = answer["item"] + ("s" if not answer["item"].endswith("f") else "")
    urgency = "URGENT" if answer["urgent"] else "normal"
    record = (f"ORDER|{answer['customer']}|{answer['city']}|{answer['quantity']}|{answer['color']}|{items}|"
              f"{answer['day']}|{urgency}")
    return record, {**answer, "item": answer["item"]}


def tunelab(*args: str, check: bool = True, echo: bool = True) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "tunelab", *args]
    if echo:
        print(f"\n$ tunelab {' '.join(args)}", flush=True)
    done = subprocess.run(command, text=True, capture_output=True)
    if echo:
        print(done.stdout, end="")
    print(done.stderr, end="", file=sys.stderr)
    if check and done.returncode != 0:
        raise SystemExit(f"tunelab {args[0]} exited {done.returncode}")
    return done


def wait_healthy(port: int, server: subprocess.Popen, seconds: float = 300) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise SystemExit(f"tunelab serve exited {server.returncode}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2):
                return
        except OSError:
            time.sleep(1)
    raise SystemExit("tunelab serve did not answer /health")


def right(answer: str, expected: dict) -> bool:
    try:
        return json.loads(answer) == expected
    except ValueError:
        return False


def ask_and_judge(client: openai.OpenAI, notes: list[tuple[str, dict]], max_tokens: int,
                  judge: bool) -> list[bool]:
    """Ask `support-bot` each note; with `judge`, post feedback on each answer. Whether each answer was right."""
    results = []
    for note, expected in notes:
        reply = client.chat.completions.create(
            model=NAME, messages=[{"role": "system", "content": SYSTEM}, {"role": "user", "content": note}],
            temperature=0, max_tokens=max_tokens)
        ok = right(reply.choices[0].message.content, expected)
        results.append(ok)
        if judge:
            body = {"completion_id": reply.id, "rating": "up" if ok else "down"}
            if not ok:
                body["correction"] = json.dumps(expected)
            client.post("/feedback", body=body, cast_to=object)
    return results


def share(results: list[bool]) -> float:
    return sum(results) / len(results) if results else 0.0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run", type=Path, help="The quick-start run (tunelab train recipes/quickstart.yaml).")
    parser.add_argument("--serve-dir", type=Path, required=True, help="A new folder for the server (replaced).")
    parser.add_argument("--port", type=int, default=8123)
    parser.add_argument("--normal", type=int, default=30, help="In-distribution notes sent.")
    parser.add_argument("--shifted", type=int, default=60, help="Notes of the new shape sent (and judged).")
    parser.add_argument("--after", type=int, default=30, help="New notes of the new shape asked after the retrain.")
    parser.add_argument("--max-tokens", type=int, default=80)
    parser.add_argument("--max-regression", default="0.02", help="tunelab retrain --max-regression.")
    args = parser.parse_args()

    if args.serve_dir.exists():
        shutil.rmtree(args.serve_dir)
    rng = random.Random(2026)
    figures: dict = {}
    started = time.monotonic()
    tunelab("promote", NAME, str(args.run), "--serve-dir", str(args.serve_dir), "--by", "scenario")
    server = subprocess.Popen(
        [sys.executable, "-m", "tunelab", "serve", "--serve-dir", str(args.serve_dir), "--port", str(args.port),
         "--log-content", "--jobs", "--api-key", API_KEY, "--admin-key", ADMIN_KEY, "--monitor-every", "5",
         "--max-tokens", str(args.max_tokens)], start_new_session=True)
    try:
        wait_healthy(args.port, server)
        client = openai.OpenAI(base_url=f"http://127.0.0.1:{args.port}/v1", api_key=API_KEY, max_retries=0,
                               timeout=600)
        normal = [order_note(rng) for _ in range(args.normal)]
        figures["normal_right"] = share(ask_and_judge(client, normal, args.max_tokens, judge=True))
        shifted = [shifted_note(rng) for _ in range(args.shifted)]
        figures["shifted_right_before"] = share(ask_and_judge(client, shifted, args.max_tokens, judge=True))
        print(f"\nv1 answers: in-distribution notes {figures['normal_right']:.0%} right, new-shape records "
              f"{figures['shifted_right_before']:.0%} right (each judged through POST /v1/feedback)", flush=True)

        tunelab("monitor", str(args.serve_dir), "--since", "1h")
        monitored = tunelab("monitor", str(args.serve_dir), "--since", "1h", "--json", echo=False)
        scores = json.loads(monitored.stdout)
        flagged = [f"{score['kind']} {score['name']} {score['value']:.3g} (threshold {score['threshold']})"
                   for score in scores.get("scores", []) if score.get("flagged")]
        figures["flagged"] = flagged
        print("flagged: " + ("; ".join(flagged) or "none"), flush=True)
        figures["ui_monitor_flagged"] = ui_shows_flags(args.port)

        retrained = tunelab("retrain", str(args.serve_dir), "--model", NAME, "--with-feedback", "--wait",
                            "--max-regression", args.max_regression, check=False)
        figures["retrain_exit"] = retrained.returncode
        figures["promoted"] = retrained.returncode == 0
        tunelab("versions", NAME, "--serve-dir", str(args.serve_dir))

        after = [shifted_note(rng) for _ in range(args.after)]
        deadline = time.monotonic() + 30
        while figures["promoted"] and serving_version(args.port) != 2 and time.monotonic() < deadline:
            time.sleep(1)
        figures["shifted_right_after"] = share(ask_and_judge(client, after, args.max_tokens, judge=False))
        print(f"\nnew-shape records answered by {NAME} after the retrain: {figures['shifted_right_after']:.0%} right "
              f"(v1: {figures['shifted_right_before']:.0%})", flush=True)
        if figures["promoted"]:
            tunelab("rollback", NAME, "--serve-dir", str(args.serve_dir), "--by", "scenario",
                    "--reason", "scenario: roll back the retrain")
            deadline = time.monotonic() + 30
            while serving_version(args.port) != 1 and time.monotonic() < deadline:
                time.sleep(0.5)
            figures["after_rollback_right"] = share(ask_and_judge(client, after[:10], args.max_tokens, judge=False))
            figures["serving_after_rollback"] = serving_version(args.port)
            tunelab("versions", NAME, "--serve-dir", str(args.serve_dir))
    finally:
        os.killpg(server.pid, signal.SIGINT)
        server.wait(60)
    figures["seconds"] = round(time.monotonic() - started)
    (args.serve_dir / "scenario.json").write_text(json.dumps(figures, indent=2))
    print(json.dumps(figures, indent=2))


def admin_get(port: int, path: str) -> dict:
    request = urllib.request.Request(f"http://127.0.0.1:{port}{path}",
                                     headers={"Authorization": f"Bearer {ADMIN_KEY}"})
    with urllib.request.urlopen(request, timeout=30) as response:
        return json.loads(response.read())


def serving_version(port: int) -> int | None:
    """The version the server says the name serves (GET /v1/deployments/support-bot, admin key)."""
    return (admin_get(port, f"/v1/deployments/{NAME}").get("serving") or {}).get("number")


def ui_shows_flags(port: int) -> bool:
    """Whether the dashboard's monitor page (logged in with the API key) marks a score FLAGGED."""
    import http.cookiejar

    jar = http.cookiejar.CookieJar()
    opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(jar))
    login = urllib.request.Request(f"http://127.0.0.1:{port}/ui/login", data=f"key={API_KEY}".encode(),
                                   headers={"Content-Type": "application/x-www-form-urlencoded"})
    try:
        opener.open(login, timeout=30).read()
        page = opener.open(f"http://127.0.0.1:{port}/ui/monitor?since=1h", timeout=120).read().decode()
    except OSError as error:
        print(f"dashboard: {error}")
        return False
    return "FLAGGED" in page


if __name__ == "__main__":
    main()
