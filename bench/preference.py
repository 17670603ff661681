"""Preference and RL training through tunelab against TRL used directly, on the same data, in the same run.

Families: DPO (preference pairs) and GRPO (prompts judged by a rule reward). For each, two variants train LoRA on
the built-in model for the same number of optimizer steps on the same rows:
  tunelab   `tunelab train` (tasks dpo / grpo): the data doctor's rows, TRL's trainer as tunelab builds it
  trl       TRL's DPOTrainer / GRPOTrainer called directly, with TRL's defaults except what must match for the
            comparison to mean anything: steps, batch size, lengths, LoRA shape, precision, generations per prompt
Each variant runs in a fresh process (so peak RSS is its own); steps 3..N are timed (start-up and the first steps'
warm-up are not). Prints seconds per step, peak RSS and tunelab's ratio to TRL.

    python bench/preference.py [--steps 8] [--families dpo,grpo]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

ROOT = Path(__file__).resolve().parent.parent
MODEL = "smollm2-135m-instruct"
LORA = {"name": "lora", "r": 16, "alpha": 32, "dropout": 0.0, "target_modules": "all-linear"}
BATCH, MAX_LENGTH, COMPLETION, GENERATIONS = 4, 192, 48, 4
SYSTEM = "You convert order notes to JSON."
# The GRPO reward of both variants: 1 for an answer that is valid JSON.
VALID_JSON = "import json\n\ndef grade(sample, item):\n    try:\n        json.loads(sample['output_text'])\n" \
             "        return 1.0\n    except ValueError:\n        return 0.0\n"


def recipe(family: str, steps: int, folder: Path) -> dict:
    task = {"dpo": {"name": "dpo"}, "grpo": {"name": "grpo", "num_generations": GENERATIONS,
                                             "max_completion_length": COMPLETION}}[family]
    generated = {"dpo": "notes-to-json-pairs", "grpo": "notes-to-json-prompts"}[family]
    return {"task": task, "model": {"name": MODEL}, "method": LORA,
            "data": {"generate": {"task": generated, "rows": 120, "seed": 0}, "system_prompt": SYSTEM,
                     "max_length": MAX_LENGTH, "split": {"validation": 0.0, "test": 0.1}},
            "train": {"max_steps": steps, "batch_size": BATCH, "lr": 5e-5, "log_every": 1000, "report_to": [],
                      "save_every": 10_000},
            "rewards": [{"type": "python", "name": "valid_json", "source": VALID_JSON}] if family == "grpo" else [],
            "eval": {"after_train": False}, "output": {"dir": str(folder / f"{family}-tunelab")}}


def clock():
    from transformers import TrainerCallback

    class Clock(TrainerCallback):  # steps 3..N
        started = None

        def on_step_begin(self, args, state, control, **kwargs):
            if state.global_step == 2:
                self.started = time.perf_counter()

        def on_train_end(self, args, state, control, **kwargs):
            self.per_step = (time.perf_counter() - self.started) / max(state.global_step - 2, 1)

    return Clock()


def child_tunelab(family: str, steps: int, folder: Path) -> dict:
    from rich.console import Console

    from tunelab.config.load import validate_recipe
    from tunelab.paths import tunelab_home
    from tunelab.train.lifecycle import run_recipe

    timer = clock()
    outcome = run_recipe(validate_recipe(recipe(family, steps, folder), source="bench"), tunelab_home(),
                         Console(quiet=True), overwrite=True, evaluate=False, callbacks=(timer,))
    rows = [json.loads(line) for line in (outcome.run.data / "train.jsonl").read_text().splitlines()]
    (folder / f"{family}-rows.json").write_text(json.dumps(rows))
    return {"per_step": timer.per_step, "precision": outcome.record.precision}


def child_trl(family: str, steps: int, folder: Path, precision: str) -> dict:
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from tunelab.models.load import resolve_model
    from tunelab.paths import tunelab_home

    rows = json.loads((folder / f"{family}-rows.json").read_text())
    path = resolve_model(MODEL, tunelab_home()).path
    tokenizer = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path)
    lora = LoraConfig(r=LORA["r"], lora_alpha=LORA["alpha"], lora_dropout=0.0, target_modules="all-linear",
                      task_type="CAUSAL_LM")
    shared = dict(output_dir=str(folder / f"{family}-trl"), max_steps=steps, per_device_train_batch_size=BATCH,
                  use_cpu=True, bf16=precision == "bf16", report_to=[], save_strategy="no", logging_steps=1000)
    timer = clock()
    if family == "dpo":
        from trl import DPOConfig, DPOTrainer

        data = Dataset.from_list([{"prompt": row["messages"],
                                   "chosen": [{"role": "assistant", "content": row["chosen"]}],
                                   "rejected": [{"role": "assistant", "content": row["rejected"]}]} for row in rows])
        trainer = DPOTrainer(model=model, args=DPOConfig(**shared, max_length=MAX_LENGTH), train_dataset=data,
                             processing_class=tokenizer, peft_config=lora, callbacks=[timer])
    else:
        from trl import GRPOConfig, GRPOTrainer

        def valid_json(completions, **_):
            scores = []
            for completion in completions:
                try:
                    json.loads(completion[-1]["content"])
                    scores.append(1.0)
                except ValueError:
                    scores.append(0.0)
            return scores

        data = Dataset.from_list([{"prompt": row["messages"]} for row in rows])
        trainer = GRPOTrainer(model=model, reward_funcs=[valid_json], train_dataset=data, processing_class=tokenizer,
                              peft_config=lora, callbacks=[timer],
                              args=GRPOConfig(**shared, num_generations=GENERATIONS,
                                              max_completion_length=COMPLETION))
    trainer.train()
    return {"per_step": timer.per_step, "precision": precision}


def run_child(*args: str) -> dict:
    """One variant in a fresh process: its result and its own peak RSS."""
    output = subprocess.run([sys.executable, __file__, "--child", *args], check=True, capture_output=True,
                            text=True, cwd=ROOT)
    return json.loads(output.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--families", default="dpo,grpo")
    parser.add_argument("--child", nargs="+")
    args = parser.parse_args()
    if args.child:
        variant, family, steps, folder, *rest = args.child
        result = (child_tunelab(family, int(steps), Path(folder)) if variant == "tunelab" else
                  child_trl(family, int(steps), Path(folder), rest[0]))
        result["peak_rss_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        print(json.dumps(result))
        return
    print(f"{MODEL}, LoRA r={LORA['r']}, batch {BATCH}, {args.steps} steps (3..{args.steps} timed), "
          f"{os.cpu_count()} CPU cores")
    print(f"{'family':<6} {'variant':<8} {'precision':<9} {'s/step':>8} {'peak RSS MiB':>13}")
    with tempfile.TemporaryDirectory() as folder:
        for family in args.families.split(","):
            mine = run_child("tunelab", family, str(args.steps), folder)
            theirs = run_child("trl", family, str(args.steps), folder, mine["precision"])
            for name, result in (("tunelab", mine), ("trl", theirs)):
                print(f"{family:<6} {name:<8} {result['precision']:<9} {result['per_step']:>8.2f} "
                      f"{result['peak_rss_mib']:>13.0f}")
            print(f"{family:<6} ratio    tunelab/trl: time per step {mine['per_step'] / theirs['per_step']:.2f}x, "
                  f"peak RSS {mine['peak_rss_mib'] / theirs['peak_rss_mib']:.2f}x")


if __name__ == "__main__":
    main()
