"""lm-eval against `tunelab serve`: a small local multiple-choice task scored by loglikelihood over HTTP.

What it does, top to bottom:
  1. makes (once) a separate venv with `lm-eval[api]` (--venv; never the project's environment),
  2. writes a local lm-eval task: a YAML file and a JSONL of easy four-way questions (no data set hub),
  3. starts `tunelab serve --base MODEL` on a free loopback port and waits for /health,
  4. runs lm-eval's `local-completions` model with `tokenizer_backend=remote` against it (so lm-eval tokenizes
     through /tokenize and scores through /v1/completions with echo and logprobs, as it would against vLLM),
  5. scores the same (context, continuation) token ids with one direct forward pass of the model in this process,
     and prints both accuracies and the largest difference between the two sets of loglikelihoods.

    python bench/lm_eval_mc.py                       # the built-in smollm2-135m-instruct
    python bench/lm_eval_mc.py --model runs/x/model   # any checkpoint folder the server can load as --base

Everything runs on loopback; the server is stopped at the end, whatever happens. On the 2-core CPU (shared with
other work, so slow), with the venv already made, it measured:

    model smollm2-135m-instruct, 20 questions x 4 choices, lm-eval lm-eval[api]==0.4.13
    scored by                            acc
    lm-eval via tunelab serve           0.75   (111.7 s, chance 0.25)
    direct forward pass (same tokens)   0.75
    largest |loglikelihood difference| over 80 choices: 0.00e+00

(Before EOS was listed in echo's logprobs, the same run gave 0.70 and a largest difference of 10.6: lm-eval reads
the last logprob as the generated token's, and when that token was EOS it dropped the continuation's own last one.)
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

QUESTIONS = [
    ("What colour is the sky on a clear day?", ["blue", "green", "red", "brown"], 0),
    ("How many legs does a dog have?", ["two", "four", "six", "eight"], 1),
    ("What do bees make?", ["milk", "silk", "honey", "wool"], 2),
    ("Which animal says meow?", ["cow", "cat", "duck", "horse"], 1),
    ("What is frozen water called?", ["steam", "sand", "ice", "glass"], 2),
    ("Which planet do we live on?", ["Mars", "Venus", "Jupiter", "Earth"], 3),
    ("What is the opposite of hot?", ["cold", "loud", "tall", "fast"], 0),
    ("How many days are in a week?", ["five", "seven", "ten", "twelve"], 1),
    ("What do you use to write on paper?", ["a spoon", "a pen", "a shoe", "a cup"], 1),
    ("Which fruit is yellow and curved?", ["banana", "cherry", "grape", "plum"], 0),
    ("What is the capital of France?", ["Berlin", "Madrid", "Paris", "Rome"], 2),
    ("Which season comes after winter?", ["autumn", "summer", "spring", "night"], 2),
    ("What gas do people need to breathe?", ["helium", "oxygen", "neon", "argon"], 1),
    ("What is two plus two?", ["three", "four", "five", "six"], 1),
    ("Which animal is known as the king of the jungle?", ["mouse", "lion", "rabbit", "frog"], 1),
    ("What do plants need from the sun?", ["light", "sound", "salt", "plastic"], 0),
    ("What is the largest ocean on Earth?", ["Indian", "Arctic", "Atlantic", "Pacific"], 3),
    ("What do cows drink?", ["water", "oil", "ink", "paint"], 0),
    ("Which shape has three sides?", ["square", "circle", "triangle", "hexagon"], 2),
    ("What is the colour of grass?", ["purple", "green", "white", "black"], 1),
]

TASK = """task: tunelab_mc
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}
test_split: test
output_type: multiple_choice
doc_to_text: "Question: {{{{question}}}}\\nAnswer:"
doc_to_choice: "{{{{choices}}}}"
doc_to_target: answer
metric_list:
  - metric: acc
"""

# Runs inside the lm-eval venv: evaluate, then write what it found (accuracy and each choice's loglikelihood).
RUNNER = """
import json, sys
from lm_eval import simple_evaluate
from lm_eval.tasks import TaskManager
task_dir, base_url, model, out = sys.argv[1:5]
results = simple_evaluate(
    model="local-completions",
    model_args=f"model={model},base_url={base_url},tokenizer_backend=remote,num_concurrent=1,max_retries=1",
    tasks=["tunelab_mc"], task_manager=TaskManager(include_path=task_dir), log_samples=True,
)
samples = results["samples"]["tunelab_mc"]
found = {
    "acc": results["results"]["tunelab_mc"]["acc,none"],
    "loglikelihoods": {str(s["doc_id"]): [float(r[0]) for r in s["filtered_resps"]] for s in samples},
}
json.dump(found, open(out, "w"))
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="smollm2-135m-instruct", help="what `tunelab serve --base` loads")
    parser.add_argument("--venv", type=Path, default=Path(tempfile.gettempdir()) / "tunelab-lm-eval-venv")
    parser.add_argument("--lm-eval", default="lm-eval[api]==0.4.13", help="the requirement the venv installs")
    args = parser.parse_args()

    python = lm_eval_venv(args.venv, args.lm_eval)
    with tempfile.TemporaryDirectory() as tmp:
        task_dir = write_task(Path(tmp))
        port = free_port()
        server = start_server(args.model, port, Path(tmp) / "serve")
        try:
            wait_for_health(port, server)
            started = time.perf_counter()
            out = Path(tmp) / "lm_eval.json"
            subprocess.run([str(python), "-c", RUNNER, str(task_dir), f"http://127.0.0.1:{port}/v1/completions",
                            served_name(port), str(out)], check=True, env=offline_env())
            seconds = time.perf_counter() - started
            found = json.loads(out.read_text())
        finally:
            server.terminate()
            server.wait(timeout=30)
    direct_acc, direct = direct_scores(args.model)
    served = [value for doc in sorted(found["loglikelihoods"], key=int) for value in found["loglikelihoods"][doc]]
    gap = max(abs(a - b) for a, b in zip(served, direct))
    print(f"model {args.model}, {len(QUESTIONS)} questions x 4 choices, lm-eval {args.lm_eval}")
    print(f"{'scored by':<34}{'acc':>6}")
    print(f"{'lm-eval via tunelab serve':<34}{found['acc']:>6.2f}   ({seconds:.1f} s, chance 0.25)")
    print(f"{'direct forward pass (same tokens)':<34}{direct_acc:>6.2f}")
    print(f"largest |loglikelihood difference| over {len(served)} choices: {gap:.2e}")


def lm_eval_venv(folder: Path, requirement: str) -> Path:
    python = folder / "bin" / "python"
    if not python.exists():
        subprocess.run([sys.executable, "-m", "venv", str(folder)], check=True)
        subprocess.run([str(python), "-m", "pip", "install", "-q", requirement], check=True)
    return python


def write_task(folder: Path) -> Path:
    data = folder / "questions.jsonl"
    data.write_text("".join(json.dumps({"question": q, "choices": c, "answer": a}) + "\n" for q, c, a in QUESTIONS))
    task_dir = folder / "tasks"
    task_dir.mkdir()
    (task_dir / "tunelab_mc.yaml").write_text(TASK.format(data=data))
    return task_dir


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_server(model: str, port: int, serve_dir: Path) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "tunelab", "serve", "--base", model, "--port", str(port),
                             "--serve-dir", str(serve_dir), "--max-tokens", "16"])


def wait_for_health(port: int, server: subprocess.Popen, seconds: float = 600) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise SystemExit(f"tunelab serve exited with {server.returncode}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2) as answer:
                if answer.status == 200:
                    return
        except OSError:
            time.sleep(0.5)
    raise SystemExit(f"tunelab serve did not answer /health within {seconds:.0f} s")


def served_name(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/v1/models", timeout=10) as answer:
        return json.load(answer)["data"][0]["id"]


def offline_env() -> dict[str, str]:
    """lm-eval and datasets must not reach for a hub: the task and its data are local files."""
    return {**os.environ, "HF_DATASETS_OFFLINE": "1", "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}


def direct_scores(model_name: str) -> tuple[float, list[float]]:
    """Each choice's loglikelihood from one unpadded forward pass, tokenized as lm-eval does (context and
    context + continuation encoded without special tokens, the continuation being the difference)."""
    import torch

    from tunelab.models.load import load_causal_lm, resolve_model
    from tunelab.models.tokenizer import load_tokenizer
    from tunelab.paths import tunelab_home

    path = resolve_model(model_name, tunelab_home()).path
    model, tokenizer = load_causal_lm(path).eval(), load_tokenizer(path)
    scores, right = [], 0
    for question, choices, answer in QUESTIONS:
        context = f"Question: {question}\nAnswer:"
        context_ids = tokenizer(context, add_special_tokens=False)["input_ids"]
        mine = []
        for choice in choices:
            ids = tokenizer(f"{context} {choice}", add_special_tokens=False)["input_ids"]
            with torch.no_grad():
                logprobs = torch.log_softmax(model(torch.tensor([ids])).logits[0].float(), dim=-1)
            mine.append(sum(float(logprobs[i - 1, ids[i]]) for i in range(len(context_ids), len(ids))))
        scores += mine
        right += int(max(range(len(mine)), key=mine.__getitem__) == answer)
    return right / len(QUESTIONS), scores


if __name__ == "__main__":
    main()
