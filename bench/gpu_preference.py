"""The GPU check of the preference and RL tasks, in one prepared script: every task of issue 11 trained through
`tunelab train`'s lifecycle on a CUDA device (bf16 where the GPU has it) and evaluated base vs tuned there, on a small
random Llama with the tests' character tokenizer (no model hub, no download: the check is of the code paths on the
device, not of a model's quality). The chain is exercised too: sft, then dpo from that run (model.from_run), then a
reward model, then ppo whose reward is that reward model (score_model) on the same device.

    python bench/gpu_preference.py                 # on a machine with a CUDA GPU
    python bench/gpu_preference.py --device cpu --steps 4   # the same script, shortened, on a CPU

Needs tunelab's dependencies in that Python (`make install`, or on a machine with no registry the wheels of trl,
datasets, peft, transformers, pydantic, rapidfuzz, datasketch, nltk and gguf at the versions pyproject.toml pins,
installed with pip --no-index, and PYTHONPATH=src). Prints one line per run: device, precision, seconds per step,
the headline metric base -> tuned with its interval.
Exits 1 if any run failed or did not train on the asked device.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import tempfile
import time
import traceback
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # tests/tiny.py: the tiny model and character tokenizer the unit tests use

LETTERS = "abcdefgh"
REVERSED = [{"type": "text_similarity", "name": "reversed", "input": "{{ sample.output_text }}",
             "reference": "{{ item.reference }}", "evaluation_metric": "fuzzy_match"}]


def words(count: int, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    found: dict[str, None] = {}
    while len(found) < count:
        found["".join(rng.choice(LETTERS) for _ in range(rng.randint(3, 6)))] = None
    return list(found)


def write_jsonl(path: Path, rows: list[dict]) -> str:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return str(path)


def data_files(folder: Path) -> dict[str, str]:
    rng = random.Random(1)
    items = words(160)
    noise = ["".join(rng.choice("stuvwxyz") for _ in word) for word in items]
    return {
        "chat": write_jsonl(folder / "chat.jsonl", [{"prompt": w, "completion": w[::-1]} for w in items]),
        "pairs": write_jsonl(folder / "pairs.jsonl", [{"prompt": w, "chosen": w[::-1], "rejected": n}
                                                      for w, n in zip(items, noise)]),
        "feedback": write_jsonl(folder / "feedback.jsonl", [
            {"prompt": w, "completion": w[::-1] if i % 2 else n, "label": bool(i % 2)}
            for i, (w, n) in enumerate(zip(items, noise))]),
        "prompts": write_jsonl(folder / "prompts.jsonl", [{"prompt": w, "reference": w[::-1]} for w in items]),
    }


def plan(files: dict[str, str], runs: Path) -> list[tuple[str, dict]]:
    online = {"num_generations": 4, "max_completion_length": 8}
    return [
        ("sft", {"task": {"name": "sft"}, "data": files["chat"]}),
        ("dpo-from-sft", {"task": {"name": "dpo"}, "data": files["pairs"], "from_run": runs / "sft"}),
        ("kto", {"task": {"name": "kto"}, "data": files["feedback"]}),
        ("orpo", {"task": {"name": "orpo"}, "data": files["pairs"]}),
        ("simpo", {"task": {"name": "simpo"}, "data": files["pairs"]}),
        ("reward_model", {"task": {"name": "reward_model"}, "data": files["pairs"]}),
        ("grpo", {"task": {"name": "grpo", **online}, "data": files["prompts"], "rewards": REVERSED}),
        ("rloo", {"task": {"name": "rloo", **online, "beta": 0.05}, "data": files["prompts"], "rewards": REVERSED}),
        ("ppo-with-rm", {"task": {"name": "ppo", "max_new_tokens": 8}, "data": files["prompts"],
                         "rewards": [*REVERSED, {"type": "score_model", "name": "rm",
                                                 "model": str(runs / "reward_model")}]}),
    ]


def recipe(name: str, spec: dict, checkpoint: Path, runs: Path, steps: int) -> dict:
    model = {"from_run": str(spec["from_run"])} if "from_run" in spec else {"name": str(checkpoint)}
    return {
        "task": spec["task"], "model": model, "rewards": spec.get("rewards", []),
        "data": {"train": spec["data"], "split": {"validation": 0.0, "test": 0.1, "seed": 1}, "max_length": 64},
        "method": {"name": "lora", "r": 8, "alpha": 16, "dropout": 0.0, "target_modules": "all-linear"},
        "train": {"max_steps": steps, "batch_size": 8, "lr": 5e-3, "save_every": steps, "log_every": 5,
                  "report_to": []},
        "eval": {"batch_size": 16, "max_new_tokens": 8, "bootstrap": 200,
                 "forgetting": {"enabled": False}},
        "output": {"dir": str(runs / name)},
    }


def headline(evaluation) -> str:
    name = evaluation.primary_metric
    low, high = evaluation.intervals.delta[name] if evaluation.intervals else (float("nan"),) * 2
    return (f"{name} {evaluation.base[name]:.3f} -> {evaluation.tuned[name]:.3f} "
            f"(change [{low:+.3f}, {high:+.3f}])")


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--hidden", type=int, default=256)
    args = parser.parse_args()

    import torch
    from rich.console import Console
    from tests.tiny import save_tiny_checkpoint

    from tunelab.config.load import validate_recipe
    from tunelab.train.lifecycle import run_recipe

    print(f"torch {torch.__version__}; CUDA: {torch.cuda.is_available()}"
          + (f", {torch.cuda.get_device_name(0)}" if torch.cuda.is_available() else ""), flush=True)
    if args.device == "cuda" and not torch.cuda.is_available():
        print("no CUDA GPU visible: run with --device cpu to try the script on a CPU")
        return 1
    failures = 0
    with tempfile.TemporaryDirectory() as folder:
        root = Path(folder)
        checkpoint = save_tiny_checkpoint(root / "tiny", hidden_size=args.hidden, layers=4)
        files, runs, home = data_files(root), root / "runs", root / "home"
        for name, spec in plan(files, runs):
            started = time.perf_counter()
            try:
                outcome = run_recipe(validate_recipe(recipe(name, spec, checkpoint, runs, args.steps)), home,
                                     Console(quiet=True), device=args.device)
            except Exception as error:  # one run failing must not hide the others' results
                failures += 1
                print(f"{name:<14} FAILED: {type(error).__name__}: {error}", flush=True)
                traceback.print_exc(limit=4)
                continue
            record, training = outcome.record, outcome.record.training
            on_device = record.device == args.device
            failures += not on_device
            per_step = training.train_runtime_seconds / max(training.steps, 1)
            print(f"{name:<14} {record.device} {record.precision:<4} {training.steps} steps, {per_step:.3f} s/step; "
                  f"{headline(outcome.evaluation)}; {time.perf_counter() - started:.0f} s in all"
                  + ("" if on_device else "  NOT ON THE ASKED DEVICE"), flush=True)
        if torch.cuda.is_available():
            print(f"peak GPU memory {torch.cuda.max_memory_allocated() / 2**20:.0f} MiB", flush=True)
    print(f"{'all runs passed' if not failures else f'{failures} run(s) failed'}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
