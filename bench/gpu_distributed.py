"""The quick start (recipes/quickstart.yaml) through `tunelab train`'s engines, against a plain one-process run
measured in the same script: wall time, training tokens/s and peak memory of each variant.

    python bench/gpu_distributed.py                  # 1 GPU: plain, DeepSpeed ZeRO-2, FSDP2 (under 8 minutes)
    python bench/gpu_distributed.py --device cpu     # this machine's CPU: 1 process vs 2 DDP processes (gloo)

Variants (same recipe, same global batch of 8 rows, --steps optimizer steps, no evaluation):
  plain    `tunelab train` as one ordinary process (the baseline)
  zero2    train.distributed=deepspeed, train.deepspeed.stage=2, one GPU through torchrun
  fsdp     train.distributed=fsdp (FSDP2, full_shard), one GPU through torchrun
  ddp2     --nproc 2 with train.batch_size=4 (2 x 4 = the baseline's 8)
On one GPU ZeRO-2 and FSDP have nothing to shard across: these runs check that the engines run the recipe end to end
and what their wrapping costs; the memory they save needs several GPUs (or ZeRO offload).

Peak GPU memory is the device's used memory as nvidia-smi reports it, sampled every 200 ms (it includes the CUDA
context, ~0.5 GB); none is reported on CPU.
Each run has a time limit (--limit seconds) so the whole script ends in bounded time.

Measured (2-core CPU, under flock, --device cpu --steps 20): plain 437 tokens/s (46.4 s of steps, 61.7 s wall),
ddp2 385 tokens/s (0.88x; 52.6 s of steps, 80.8 s wall): on 2 cores, two 1-thread processes do not beat one
2-thread process; DDP pays off with a device (or many cores) per process.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RECIPE = ROOT / "recipes" / "quickstart.yaml"
VARIANTS = {
    "plain": ([], []),
    "zero2": (["train.distributed=deepspeed", "train.deepspeed.stage=2"], []),
    "fsdp": (["train.distributed=fsdp", "train.fsdp.sharding=full_shard"], []),
    "ddp2": (["train.batch_size=4"], ["--nproc", "2"]),
}
DEFAULTS = {"cuda": "plain,zero2,fsdp", "cpu": "plain,ddp2"}


class GpuMemory:
    """The largest memory.used nvidia-smi reports while the block runs (MiB); None without nvidia-smi."""

    def __enter__(self) -> "GpuMemory":
        self.peak: int | None = None
        self.process = None
        try:
            self.process = subprocess.Popen(
                ["nvidia-smi", "--query-gpu=memory.used", "--format=csv,noheader,nounits", "-lms", "200"],
                stdout=subprocess.PIPE, text=True)
        except FileNotFoundError:
            return self
        self.reader = threading.Thread(target=self.read, daemon=True)
        self.reader.start()
        return self

    def read(self) -> None:
        for line in self.process.stdout:
            if line.strip().isdigit():
                self.peak = max(self.peak or 0, int(line.strip()))

    def __exit__(self, *exc) -> None:
        if self.process:
            self.process.terminate()
            self.process.wait()
            self.reader.join(timeout=2)


def run(name: str, device: str, steps: int, limit: int, folder: Path) -> dict:
    overrides, flags = VARIANTS[name]
    output = folder / name
    command = [sys.executable, "-m", "tunelab", "train", str(RECIPE), f"train.max_steps={steps}",
               "train.save_every=1000", "train.eval_every=1000", "train.report_to=[]", f"output.dir={output}",
               *overrides, *flags, "--no-eval", "--device", device]
    started = time.perf_counter()
    with GpuMemory() as memory, (folder / f"{name}.log").open("w") as log:
        try:
            code = subprocess.run(command, stdout=log, stderr=subprocess.STDOUT, timeout=limit, cwd=ROOT).returncode
        except subprocess.TimeoutExpired:
            code = "timeout"
    seconds = time.perf_counter() - started
    record = json.loads((output / "run.json").read_text()) if (output / "run.json").is_file() else {}
    training = record.get("training") or {}
    return {"variant": name, "exit": code, "wall_s": round(seconds, 1), "steps": training.get("steps"),
            "tokens_per_s": training.get("train_tokens_per_second"), "train_s": training.get("train_runtime_seconds"),
            "peak_gpu_mib": memory.peak, "log": str(folder / f"{name}.log")}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", choices=["cuda", "cpu"], default="cuda")
    parser.add_argument("--variants", default=None, help="comma-separated, from: " + ", ".join(VARIANTS))
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--limit", type=int, default=150, help="seconds each run may take")
    arguments = parser.parse_args()
    names = (arguments.variants or DEFAULTS[arguments.device]).split(",")
    folder = Path(tempfile.mkdtemp(prefix="gpu_distributed-"))
    results = []
    for name in names:
        result = run(name, arguments.device, arguments.steps, arguments.limit, folder)
        results.append(result)
        print(json.dumps(result), flush=True)
    base = results[0]
    print(f"\n{'variant':8} {'exit':>7} {'wall s':>7} {'train s':>8} {'tokens/s':>9} {'vs ' + base['variant']:>9} "
          f"{'peak GPU MiB':>13}")
    for result in results:
        ratio = (result["tokens_per_s"] / base["tokens_per_s"]
                 if result["tokens_per_s"] and base["tokens_per_s"] else None)
        print(f"{result['variant']:8} {str(result['exit']):>7} {result['wall_s']:>7} "
              f"{result['train_s'] or 0:>8.1f} {result['tokens_per_s'] or 0:>9.0f} "
              f"{(f'{ratio:.2f}x' if ratio else '-'):>9} {str(result['peak_gpu_mib'] or '-'):>13}")
    print(f"(runs and logs in {folder})")


if __name__ == "__main__":
    main()
