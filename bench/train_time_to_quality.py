"""Time to quality: how long `tunelab train`'s own defaults take to reach the validation loss that TRL's SFTTrainer
defaults end at after 150 steps of 8 CoNaLa rows, both measured in this run, each in its own process.

  trl      SFTTrainer as a user writes it (the model path, peft LoraConfig r16 alpha 32 all-linear dropout 0.05,
           SFTConfig defaults: lr 2e-5 linear, bf16, gradient checkpointing, completion-only loss), batch 8, 150 steps
  tunelab  a recipe that names only the data and `method: lora` (every other setting tunelab's default: lr 2e-4
           cosine over the same 150 steps, batch 8, padding-free, its speed levers), stopped at the step where
           its validation loss reaches TRL's final one

Both are scored by the same function (tunelab.evaluate.loss.row_losses: mean loss per answer token, bf16) on the
same 200 held-out rows (CoNaLa's test file, which shares no row with its train file), every few steps; the clock
counts training steps only, not these evaluations. Prints both curves (step, seconds, loss) and both times.

    python bench/train_time_to_quality.py [--steps 150] [--every 5] [--trl-every 25] [--rows 200]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from train_throughput import child_result, prepared, train_as_tunelab  # noqa: E402 (the throughput bench's parts)


def scorer(data, tokenizer, rows: int, every: int, target: float | None, steps: int):
    """A callback: steps timed (evaluations excluded); validation loss every `every` steps; stops at `target`."""
    from transformers import TrainerCallback

    from tunelab.device import Placement
    from tunelab.evaluate.loss import row_losses

    validation = data.held_out[:rows]

    class Score(TrainerCallback):
        def __init__(self):
            self.seconds, self.curve = 0.0, []

        def score(self, model, step):
            was_training = model.training
            model.eval()
            found = row_losses(model, validation, tokenizer.pad_token_id, 16, Placement("cpu", "bf16"))
            model.train(was_training)
            loss = sum(total for total, _ in found) / sum(count for _, count in found)
            self.curve.append((step, round(self.seconds, 1), round(loss, 4)))
            return loss

        def on_train_begin(self, args, state, control, model=None, **kwargs):
            self.score(model, 0)

        def on_step_begin(self, args, state, control, **kwargs):
            self.started = time.perf_counter()

        def on_step_end(self, args, state, control, model=None, **kwargs):
            self.seconds += time.perf_counter() - self.started
            if state.global_step % every == 0 or state.global_step == steps:
                loss = self.score(model, state.global_step)
                if target is not None and loss <= target:
                    control.should_training_stop = True

    return Score()


def run_trl(data, tokenizer, ref, options) -> dict:
    from peft import LoraConfig
    from trl import SFTConfig, SFTTrainer

    score = scorer(data, tokenizer, options.rows, options.trl_every, None, options.steps)
    import tempfile

    with tempfile.TemporaryDirectory() as out:
        args = SFTConfig(output_dir=out, max_steps=options.steps, per_device_train_batch_size=8, use_cpu=True,
                         report_to=[], save_strategy="no", logging_steps=10, disable_tqdm=True, seed=42)
        SFTTrainer(model=str(ref.path), args=args, train_dataset=data.prompt_completion(), processing_class=tokenizer,
                   peft_config=LoraConfig(r=16, lora_alpha=32, lora_dropout=0.05, target_modules="all-linear",
                                          task_type="CAUSAL_LM"),
                   callbacks=[score]).train()
    return {"curve": score.curve, "seconds": score.seconds}


def run_tunelab(data, tokenizer, ref, options) -> dict:
    from tunelab.config.schema import Recipe
    from tunelab.methods.registry import get_method

    # the recipe a user writes: the data and the method's name; everything else is tunelab's default
    recipe = Recipe.model_validate({"data": {"generate": {}}, "method": {"name": "lora"},
                                    "train": {"max_steps": options.steps, "report_to": []}})
    score = scorer(data, tokenizer, options.rows, options.every, options.target, options.steps)
    train_as_tunelab(recipe, ref, tokenizer, data.train, get_method("lora"), recipe.method, score)
    return {"curve": score.curve, "seconds": score.seconds, "lr": recipe.train.lr,
            "batch_size": recipe.train.batch_size, "scheduler": recipe.train.scheduler}


def child(options) -> None:
    import transformers

    from tunelab.paths import tunelab_home
    from tunelab.quiet import quiet_libraries

    quiet_libraries()
    transformers.logging.set_verbosity_error()
    _, ref, tokenizer, data = prepared("conala", tunelab_home())
    found = (run_trl if options.child == "trl" else run_tunelab)(data, tokenizer, ref, options)
    print("RESULT " + json.dumps(found))


def in_child(variant: str, options, target: float | None = None) -> dict:
    command = [sys.executable, __file__, "--child", variant, "--steps", str(options.steps), "--every",
               str(options.every), "--trl-every", str(options.trl_every), "--rows", str(options.rows)]
    if target is not None:
        command += ["--target", str(target)]
    found = child_result(command)
    if "error" in found:
        raise SystemExit(f"{variant} failed: {found['error']}")
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=150)
    parser.add_argument("--every", type=int, default=5, help="tunelab's validation every N steps")
    parser.add_argument("--trl-every", type=int, default=25, help="TRL's validation every N steps")
    parser.add_argument("--rows", type=int, default=200, help="validation rows")
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--target", type=float, default=None, help=argparse.SUPPRESS)
    options = parser.parse_args()
    if options.child:
        child(options)
        return
    trl = in_child("trl", options)
    target = trl["curve"][-1][2]
    tunelab = in_child("tunelab", options, target)
    reached = next(((step, seconds, loss) for step, seconds, loss in tunelab["curve"] if loss <= target), None)
    print(f"CoNaLa, batch 8, validation: {options.rows} held-out rows, mean loss per answer token (bf16)")
    print(f"trl defaults     {options.steps} steps in {trl['seconds']:.0f} s of training, final loss {target:.4f}")
    print("  curve (step, s, loss): " + ", ".join(f"({s}, {t:.0f}, {v:.3f})" for s, t, v in trl["curve"]))
    print(f"tunelab defaults (lr {tunelab['lr']:g} {tunelab['scheduler']}, batch {tunelab['batch_size']})")
    print("  curve (step, s, loss): " + ", ".join(f"({s}, {t:.0f}, {v:.3f})" for s, t, v in tunelab["curve"]))
    if reached:
        print(f"tunelab reached {target:.4f} at step {reached[0]} after {reached[1]:.0f} s: "
              f"{reached[1] / trl['seconds']:.2f}x TRL's wall time (goal: at most 0.25x)")
    else:
        print(f"tunelab did not reach {target:.4f} in {options.steps} steps ({tunelab['seconds']:.0f} s)")


if __name__ == "__main__":
    main()
