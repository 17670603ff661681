"""How close `tunelab plan`'s estimates come to what `tunelab train` then uses: peak RSS and training wall time.

Each case (quick start, CoNaLa, SMS as a language model; each with lora, qlora and full) runs twice, each time in
its own process:
  estimate   `tunelab plan RECIPE ... --calibrate --json`: the memory model, and the time from 3 timed steps
  measured   `tunelab train RECIPE ... --no-eval`, its VmHWM read from /proc/<pid>/status every 50 ms (VmRSS as well,
             in case the kernel's high-water mark is reset) and the training clock from run.json (seconds inside
             training steps: train/checkpoints.py TrainingClock)
and prints estimate, measured and ratio (estimate / measured); the goal is every ratio within 0.8..1.2.
Whole runs by default (the recipes' own steps: `--steps 0`), or short ones (`--steps 20`); no evaluation after
training. Heavy: run it under `flock /tmp/cpu.lock`;
on a shared CPU timings can be disturbed, so a case outside the goal can be rerun alone with --cases.

    python bench/plan_accuracy.py [--cases quickstart-lora,conala-full,...] [--steps 0] [--out DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = Path("/work/shared/data")
RECIPES = {
    "quickstart": ("recipes/quickstart.yaml", []),
    "conala": ("recipes/conala.yaml", [f"data.train={SHARED_DATA}/conala/conala-train.json",
                                       f"data.test={SHARED_DATA}/conala/conala-test.json"]),
    "sms": ("recipes/sms-spam-lm.yaml", [f"data.train={SHARED_DATA}/sms_spam/SMSSpamCollection"]),
}
METHODS = ("lora", "qlora", "full")
# What each method needs besides its name (the recipes' LoRA options hold for qlora too)
METHOD_OVERRIDES = {"lora": ["method.name=lora"], "qlora": ["method.name=qlora"],
                    "full": ["method={name: full}", "train.lr=5e-5"]}


def tunelab(*args: str) -> list[str]:
    return [sys.executable, "-m", "tunelab", *args]


def environment() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(ROOT / "src"), "TOKENIZERS_PARALLELISM": "false"}


def case_overrides(data: str, method: str, steps: int, out: Path) -> tuple[str, list[str]]:
    recipe, data_overrides = RECIPES[data]
    length = [f"train.max_steps={steps}"] if steps else []  # 0: the recipe's own length (a whole run)
    return str(ROOT / recipe), [*data_overrides, *METHOD_OVERRIDES[method], *length,
                                f"output.dir={out / f'{data}-{method}'}"]


def estimate(recipe: str, overrides: list[str]) -> dict:
    done = subprocess.run(tunelab("plan", recipe, *overrides, "--calibrate", "--json"), capture_output=True,
                          text=True, env=environment(), cwd=ROOT)
    if done.returncode:
        raise RuntimeError(f"tunelab plan failed: {done.stderr[-2000:]}")
    # the JSON object is the last thing printed; a library may have logged lines to stdout before it
    text = done.stdout
    return json.loads(text[text.index("\n{") + 1:] if not text.startswith("{") else text)


def status_kib(pid: int, field: str) -> int:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    return 0


def measure(recipe: str, overrides: list[str]) -> dict:
    """`tunelab train`, its peak resident memory sampled from outside, and its training clock."""
    command = tunelab("train", recipe, *overrides, "--no-eval", "--overwrite")
    started = time.perf_counter()
    child = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                             env=environment(), cwd=ROOT)
    peak_kib, series = 0, []
    while child.poll() is None:
        try:
            rss = status_kib(child.pid, "VmRSS")
            peak_kib = max(peak_kib, status_kib(child.pid, "VmHWM"), rss)
        except (FileNotFoundError, ProcessLookupError):
            break
        series.append((round(time.perf_counter() - started, 2), rss // 1024))
        time.sleep(0.05)
    errors = child.stderr.read()
    if child.wait():
        raise RuntimeError(f"tunelab train failed: {errors[-2000:]}")
    output_dir = next(item.split("=", 1)[1] for item in overrides if item.startswith("output.dir="))
    record = json.loads((Path(output_dir) / "run.json").read_text())
    return {"peak_rss_mib": peak_kib / 1024, "train_seconds": record["training"]["train_runtime_seconds"],
            "process_seconds": time.perf_counter() - started, "rss_mib_series": series[::10]}


def run_case(data: str, method: str, steps: int, out: Path) -> dict:
    recipe, overrides = case_overrides(data, method, steps, out)
    planned = estimate(recipe, overrides)
    measured = measure(recipe, overrides)
    return {"case": f"{data}-{method}", "estimate_rss_mib": planned["memory"]["peak_mib"],
            "measured_rss_mib": measured["peak_rss_mib"],
            "estimate_seconds": planned["time"]["train_seconds"], "measured_seconds": measured["train_seconds"],
            "tokens_per_second": planned["time"]["tokens_per_second"], "plan": planned, "measured": measured}


def print_row(result: dict) -> None:
    rss = result["estimate_rss_mib"] / result["measured_rss_mib"]
    seconds = result["estimate_seconds"] / result["measured_seconds"]
    ok = "ok" if 0.8 <= rss <= 1.2 and 0.8 <= seconds <= 1.2 else "OUTSIDE 20%"
    print(f"| {result['case']:<16} | {result['estimate_rss_mib']:7.0f} | {result['measured_rss_mib']:7.0f} | "
          f"{rss:5.2f} | {result['estimate_seconds']:7.1f} | {result['measured_seconds']:7.1f} | {seconds:5.2f} | "
          f"{ok} |", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cases", default=",".join(f"{d}-{m}" for d in RECIPES for m in METHODS))
    parser.add_argument("--steps", type=int, default=0, help="train.max_steps of each run; 0: the recipe's own")
    parser.add_argument("--out", type=Path, default=Path("/tmp/tunelab-plan-accuracy"))
    options = parser.parse_args()
    from tunelab.plan.memory import import_overhead_mib, measure_import_overhead

    print(f"process overhead: {import_overhead_mib():.0f} MiB in the plan; measured now "
          f"{measure_import_overhead():.0f} MiB (VmRSS after importing the training stack in a fresh process)")
    length = f"train.max_steps={options.steps}" if options.steps else "whole runs (the recipes' own steps)"
    print(f"{length}, no evaluation after training; ratio = estimate / measured")
    print("| case             | est MiB | RSS MiB | ratio | est s   | train s | ratio | within 20% |")
    print("|------------------|---------|---------|-------|---------|---------|-------|------------|")
    results = []
    for case in options.cases.split(","):
        data, method = case.rsplit("-", 1)
        result = run_case(data, method, options.steps, options.out)
        print_row(result)
        results.append(result)
        options.out.mkdir(parents=True, exist_ok=True)
        (options.out / "plan_accuracy.json").write_text(json.dumps(results, indent=2) + "\n")  # after each case


if __name__ == "__main__":
    main()
