"""Training throughput of `tunelab train` against TRL's defaults and a hand-tuned loop, each variant in its own
process, on real variable-length rows, with the bf16 matmul limit of this machine measured in the same run.

Variants (same model, rows in the same order, batch size, steps, LoRA r16 alpha 32 all-linear dropout 0.05):
  tunelab   what `tunelab train` runs: its trainer with its default speed levers (train/trainer.py Speed:
            label-position loss, row attention, bf16 frozen weights, fused AdamW), padding-free batches
  trl       TRL's SFTTrainer as a user writes it: the model path, a peft LoraConfig, SFTConfig defaults (bf16, gradient
            checkpointing, completion-only loss on prompt-completion rows), batch 8, use_cpu
  loop      a hand-tuned plain PEFT loop: bf16 autocast, no checkpointing, padding-free batches, AdamW
  tunelab-defaults  tunelab with its method's own defaults (LoRA dropout 0 instead of 0.05): not the same
            optimization, so it is compared for time and memory only (--variants adds it)
  without-LEVER  tunelab with one speed lever off (label_loss, row_attention, bf16_frozen, fused_optimizer,
            pad_to_multiple_of): what each lever is worth, e.g. --variants tunelab,without-label_loss
Each prints tokens/s (real tokens), peak RSS, and MFU: model FLOPs per token 4N for a frozen base (forward 2N,
backward through the activations 2N; no weight gradients), 6N for full fine-tuning, N = the parameters every token
multiplies by (the linear layers and the output head; not the embedding lookup). MFU is given against the 2048^3
bf16 matmul and against the "limit": the model's own matmul shapes (forward and backward) timed at the tokens per
step each variant fed them.

    python bench/train_throughput.py [--data conala,sms,quickstart] [--methods lora,qlora,dora,full] [--steps 12]

Time to quality (TRL's validation loss after 150 steps, reached by tunelab's defaults): bench/train_time_to_quality.py.
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
from dataclasses import dataclass
from pathlib import Path

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
ROOT = Path(__file__).resolve().parents[1]
RECIPES = {"conala": "recipes/conala.yaml", "sms": "recipes/sms-spam-lm.yaml", "quickstart": "recipes/quickstart.yaml"}
WARMUP = 2  # steps not timed (allocation, first-call costs)


# ---- data ---------------------------------------------------------------------------------------------------------
@dataclass
class BenchData:
    """One data set's training rows, tokenized (with their loss masks) and as conversations (for TRL), and held-out
    rows for a validation loss."""

    train: list  # tunelab.data.templates.Encoded
    conversations: list  # (prompt messages, answer text), in the same order
    held_out: list  # Encoded

    def prompt_completion(self):
        """The training rows as TRL's conversational prompt-completion data set."""
        from datasets import Dataset

        return Dataset.from_dict({
            "prompt": [prompt for prompt, _ in self.conversations],
            "completion": [[{"role": "assistant", "content": answer}] for _, answer in self.conversations]})


def prepared(data_name: str, home: Path):
    """The model, its tokenizer and a data set's rows as `tunelab train` gets them (the data doctor, cached). The
    SMS rows are labels: they become the conversations the recipe's generate-style classification trains on."""
    import yaml

    from tunelab.config.schema import Recipe
    from tunelab.data.cache import prepare_data
    from tunelab.data.templates import encode_conversation, prompt_and_reference
    from tunelab.models.load import model_limits, resolve_model
    from tunelab.models.tokenizer import load_tokenizer

    recipe = Recipe.model_validate(yaml.safe_load((ROOT / RECIPES[data_name]).read_text()))
    os.chdir(ROOT)  # the recipes name their data relative to the project root
    ref = resolve_model(recipe.model.name, home)
    tokenizer = load_tokenizer(ref.path)
    limits = model_limits(ref.path, tokenizer)
    data = prepare_data(recipe.data, tokenizer, limits.stop_ids, limits.context, home)
    splits = data.splits()
    if splits.train and splits.train[0].kind == "label":
        template = recipe.task.prompt

        def conversation(example):
            return [{"role": "user", "content": template.format(text=example.text)},
                    {"role": "assistant", "content": example.label}]

        encode = lambda examples: [encode_conversation(tokenizer, conversation(e), limits.stop_ids)  # noqa: E731
                                   for e in examples]
        train, held_out = encode(splits.train), encode(splits.test)
        conversations = [prompt_and_reference(conversation(e)) for e in splits.train]
    else:
        tokenized = data.tokenized()
        train, held_out = tokenized["train"].rows, tokenized["test"].rows
        conversations = [prompt_and_reference(e.messages) for e in splits.train]
    return recipe, ref, tokenizer, BenchData(train, conversations, held_out)


def method_config(name: str):
    from tunelab.methods.registry import get_method

    method = get_method(name)
    fields = {"name": name} if name == "full" else {"name": name, "r": 16, "alpha": 32, "dropout": 0.05,
                                                      "target_modules": "all-linear"}
    return method, method.config_class.model_validate(fields)


# ---- one variant, in a child process -----------------------------------------------------------------------------
def step_clock():
    from transformers import TrainerCallback

    class Clock(TrainerCallback):
        """Seconds and tokens of the steps after WARMUP, and each step's loss."""

        def __init__(self):
            self.seconds, self.tokens, self.losses, self.started = 0.0, 0, [], None

        def on_step_begin(self, args, state, control, **kwargs):
            self.started, self.seen = time.perf_counter(), state.num_input_tokens_seen

        def on_step_end(self, args, state, control, **kwargs):
            if state.global_step > WARMUP:
                self.seconds += time.perf_counter() - self.started
                self.tokens += state.num_input_tokens_seen - self.seen

        def on_log(self, args, state, control, logs=None, **kwargs):
            if logs and "loss" in logs:
                self.losses.append(round(logs["loss"], 4))

    return Clock()


def run_tunelab(recipe, ref, tokenizer, data, method, config, steps, batch_size, home, without: str | None = None):
    from tunelab.config.schema import Recipe

    clock = step_clock()
    # one speed lever off (the ablation variants); pad_to_multiple_of is off as null
    levers = {without: None if without == "pad_to_multiple_of" else False} if without else {}
    tuned = Recipe.model_validate({"data": {"generate": {}}, "method": config.model_dump(),
                                   "train": {"max_steps": steps, "batch_size": batch_size, "log_every": 1,
                                             "report_to": [], "lr": 1e-4, "warmup": 0, **levers}})
    train_as_tunelab(tuned, ref, tokenizer, data.train, method, config, clock)
    return clock


def train_as_tunelab(recipe, ref, tokenizer, rows, method, config, callback) -> None:
    """`tunelab train`'s trainer (its arguments, callbacks and speed levers) on `rows`, with no validation and no
    checkpoints, `callback` added."""
    from rich.console import Console

    from tunelab.data.dataset import TokenizedSplit
    from tunelab.data.split import Splits
    from tunelab.device import Placement
    from tunelab.models.load import load_causal_lm
    from tunelab.present.progress import RichProgress
    from tunelab.run.folder import RunDir
    from tunelab.tasks.base import TrainerParts
    from tunelab.tasks.registry import get_task
    from tunelab.train.batches import language_model_data
    from tunelab.train.trainer import training_arguments, training_callbacks, training_speed

    padding_free = recipe.train.padding_free and method.padding_free
    tokenized = {"train": TokenizedSplit(rows=rows, kept=len(rows)), "validation": TokenizedSplit(),
                 "test": TokenizedSplit()}
    task_data = language_model_data(Splits([]), tokenized, tokenizer.pad_token_id, padding_free)
    placement = Placement("cpu", "bf16")
    with tempfile.TemporaryDirectory() as out:
        run = RunDir(Path(out))
        arguments = {**training_arguments(recipe.train, run, placement, False), "save_strategy": "no"}
        callbacks = training_callbacks(recipe.train, run, RichProgress(Console(quiet=True)), (callback,))
        model = method.wrap(load_causal_lm(ref.path), config)
        speed = training_speed(recipe.train, method.bf16_frozen, placement, padding_free)
        get_task("sft").build_trainer(TrainerParts(model, tokenizer, task_data, arguments, callbacks,
                                                   speed=speed)).train()


def run_trl(recipe, ref, tokenizer, data, method, config, steps, batch_size, home):
    from peft import LoraConfig
    from trl import SFTConfig, SFTTrainer

    clock = step_clock()
    model, peft_config = str(ref.path), None
    if config.name != "full":
        peft_config = LoraConfig(r=16, lora_alpha=32, lora_dropout=0.05, target_modules="all-linear",
                                 use_dora=config.name == "dora", task_type="CAUSAL_LM")
    if config.name == "qlora":  # the same NF4 base tunelab's QLoRA trains (torchao); TRL wraps it with peft
        from tunelab.models.load import load_causal_lm
        from tunelab.models.quantize import quantize_nf4

        model = load_causal_lm(ref.path)
        quantize_nf4(model, config.block_size, config.scaler_block_size)
    with tempfile.TemporaryDirectory() as out:
        args = SFTConfig(output_dir=out, max_steps=steps, per_device_train_batch_size=batch_size, use_cpu=True,
                         report_to=[], save_strategy="no", logging_steps=1, disable_tqdm=True,
                         include_num_input_tokens_seen="non_padding", seed=42, data_seed=42)
        SFTTrainer(model=model, args=args, train_dataset=data.prompt_completion(), processing_class=tokenizer,
                   peft_config=peft_config, callbacks=[clock]).train()
    return clock


def run_loop(recipe, ref, tokenizer, data, method, config, steps, batch_size, home):
    """The hand-tuned baseline: what a careful user writes with PyTorch and peft alone."""
    import torch

    from tunelab.models.load import load_causal_lm

    model = method.wrap(load_causal_lm(ref.path), config).train()
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    rows = data.train
    order = torch.randperm(len(rows), generator=torch.Generator().manual_seed(42)).tolist()
    clock = type("Clock", (), {"seconds": 0.0, "tokens": 0, "losses": []})()
    for step in range(steps):
        chunk = [rows[i] for i in order[step * batch_size:(step + 1) * batch_size]]
        started = time.perf_counter()
        input_ids = torch.tensor([t for row in chunk for t in row.input_ids])[None]
        labels = torch.tensor([-100 if i == 0 else t for row in chunk for i, t in enumerate(row.labels)])[None]
        positions = torch.tensor([i for row in chunk for i in range(len(row.input_ids))])[None]
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss = model(input_ids=input_ids, position_ids=positions, labels=labels, use_cache=False).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_([p for p in model.parameters() if p.requires_grad], 1.0)
        optimizer.step()
        optimizer.zero_grad()
        if step >= WARMUP:
            clock.seconds += time.perf_counter() - started
            clock.tokens += input_ids.shape[1]
        clock.losses.append(round(float(loss), 4))
    return clock


VARIANTS = {"tunelab": run_tunelab, "trl": run_trl, "loop": run_loop, "tunelab-defaults": run_tunelab}
WITHOUT = "without-"  # variant "without-label_loss": tunelab with that train field false (each lever measured alone)


def child(options) -> None:
    import transformers

    from tunelab.paths import tunelab_home
    from tunelab.quiet import quiet_libraries

    quiet_libraries()
    transformers.logging.set_verbosity_error()
    home = tunelab_home()
    recipe, ref, tokenizer, data = prepared(options.data_name, home)
    method, config = method_config(options.method)
    if options.variant == "tunelab-defaults":  # the method's own defaults (LoRA: dropout 0), the same rank and layers
        config = config.model_copy(update={"dropout": type(config)(name=config.name).dropout}) \
            if config.name != "full" else config
    elif options.dropout is not None and config.name != "full":
        config = config.model_copy(update={"dropout": options.dropout})
    sampler = RssSampler()  # from here on: the model, its training and the trainer, not the data preparation
    if options.variant.startswith(WITHOUT):
        clock = run_tunelab(recipe, ref, tokenizer, data, method, config, options.steps, options.batch_size, home,
                            without=options.variant[len(WITHOUT):])
    else:
        clock = VARIANTS[options.variant](recipe, ref, tokenizer, data, method, config, options.steps,
                                          options.batch_size, home)
    sampler.stop()
    timed_steps = options.steps - WARMUP
    print("RESULT " + json.dumps({
        "tokens_per_second": clock.tokens / clock.seconds, "tokens_per_step": clock.tokens / timed_steps,
        "peak_rss_mb": sampler.peak / 2**20, "rss_before_mb": sampler.before / 2**20, "losses": clock.losses}))


class RssSampler:
    """The process's resident memory, sampled every 10 ms on a thread: its peak while a variant runs (the
    process's lifetime peak, ru_maxrss, would include the data preparation before it)."""

    def __init__(self):
        import threading

        self.before = self.peak = rss_bytes()
        self.running = True
        self.thread = threading.Thread(target=self.sample, daemon=True)
        self.thread.start()

    def sample(self):
        while self.running:
            self.peak = max(self.peak, rss_bytes())
            time.sleep(0.01)

    def stop(self):
        self.running = False
        self.thread.join()


def rss_bytes() -> int:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * resource.getpagesize()


def in_child(variant: str, data_name: str, method: str, steps: int, batch_size: int,
             dropout: float | None = None) -> dict:
    command = [sys.executable, __file__, "--child", variant, "--data-name", data_name, "--method", method,
               "--steps", str(steps), "--batch-size", str(batch_size)]
    if dropout is not None:
        command += ["--dropout", str(dropout)]
    return child_result(command)


def child_result(command: list[str]) -> dict:
    """Run a bench child process; its RESULT line, or {"error": its last lines}."""
    done = subprocess.run(command, capture_output=True, text=True, cwd=ROOT)
    for line in done.stdout.splitlines():
        if line.startswith("RESULT "):
            return json.loads(line[len("RESULT "):])
    return {"error": " | ".join((done.stderr or done.stdout).strip().splitlines()[-3:])}


# ---- the matmul limit ---------------------------------------------------------------------------------------------
def matmul_rate(rows: int, inner: int, cols: int, seconds: float = 0.4) -> float:
    """bf16 GFLOP/s of a [rows x inner] @ [inner x cols] product (the weight as a linear layer holds it)."""
    import torch

    a = torch.randn(rows, inner, dtype=torch.bfloat16)
    b = torch.randn(cols, inner, dtype=torch.bfloat16).t()
    for _ in range(2):
        a @ b
    count, started = 0, time.perf_counter()
    while time.perf_counter() - started < seconds:
        a @ b
        count += 1
    return 2 * rows * inner * cols * count / (time.perf_counter() - started) / 1e9


def model_shapes(path: Path) -> list[tuple[int, int, int]]:
    """(inputs, outputs, how many) of every linear layer a token passes through, the output head included."""
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(str(path))
    hidden, layers = config.hidden_size, config.num_hidden_layers
    head_dim = getattr(config, "head_dim", None) or hidden // config.num_attention_heads
    q, kv = config.num_attention_heads * head_dim, config.num_key_value_heads * head_dim
    inter = config.intermediate_size
    return [(hidden, q, layers), (hidden, kv, 2 * layers), (q, hidden, layers), (hidden, inter, 2 * layers),
            (inter, hidden, layers), (hidden, config.vocab_size, 1)]


def shape_limit(shapes, tokens: int) -> float:
    """GFLOP/s of the model's own matmuls at `tokens` rows, forward (x @ W.T) and backward (grad @ W), weighted
    by their FLOPs: the fastest a training step could go if it did nothing but its matmuls."""
    flops = seconds = 0.0
    for inputs, outputs, count in shapes:
        for a, b in ((inputs, outputs), (outputs, inputs)):
            work = 2 * tokens * a * b * count
            flops += work
            seconds += work / (matmul_rate(tokens, a, b, 0.2) * 1e9)
    return flops / seconds / 1e9


def per_token_parameters(shapes) -> int:
    return sum(inputs * outputs * count for inputs, outputs, count in shapes)


# ---- the parent ---------------------------------------------------------------------------------------------------
def throughput(options) -> None:
    from tunelab.models.load import resolve_model
    from tunelab.paths import tunelab_home

    path = resolve_model("smollm2-135m-instruct", tunelab_home()).path
    shapes = model_shapes(path)
    params = per_token_parameters(shapes)
    peak = matmul_rate(2048, 2048, 2048, 1.0)
    print(f"bf16 matmul 2048^3: {peak:.0f} GFLOP/s; N = {params / 1e6:.1f}M parameters per token "
          f"(linear layers + output head); {options.steps} steps of {options.batch_size} rows, first {WARMUP} "
          f"not timed; LoRA r16 alpha 32 all-linear dropout {0.05 if options.dropout is None else options.dropout}; "
          "peak RSS: while the variant runs (model, training)")
    header = (f"{'data':10} {'method':6} {'variant':24} {'tokens/s':>9} {'tok/step':>8} {'peak RSS':>9} "
              f"{'MFU/2048':>8} {'limit':>6} {'MFU/limit':>9} {'x trl':>6} {'x loop':>6} {'RSS x trl':>9}")
    print(header)
    limits: dict[int, float] = {}
    for data_name in options.data.split(","):
        for method in options.methods.split(","):
            found = {variant: in_child(variant, data_name, method, options.steps, options.batch_size, options.dropout)
                     for variant in options.variants.split(",")}
            for variant, result in found.items():
                if "error" in result:
                    print(f"{data_name:10} {method:6} {variant:24} failed: {result['error'][:150]}")
                    continue
                tokens = int(round(result["tokens_per_step"] / 64)) * 64 or 64
                if tokens not in limits:
                    limits[tokens] = shape_limit(shapes, tokens)
                flops = (6 if method == "full" else 4) * params * result["tokens_per_second"] / 1e9
                ratio = lambda other, key="tokens_per_second": (  # noqa: E731
                    f"{result[key] / found[other][key]:.2f}" if "error" not in found.get(other, {"error": 1}) else "-")
                print(f"{data_name:10} {method:6} {variant:24} {result['tokens_per_second']:9.1f} "
                      f"{result['tokens_per_step']:8.0f} {result['peak_rss_mb']:7.0f}MB {flops / peak:8.1%} "
                      f"{limits[tokens]:6.0f} {flops / limits[tokens]:9.1%} {ratio('trl'):>6} {ratio('loop'):>6} "
                      f"{ratio('trl', 'peak_rss_mb'):>9}")
            sys.stdout.flush()
    print("limit: GFLOP/s of the model's own matmul shapes at that variant's tokens per step (rounded to 64)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default="conala,sms,quickstart")
    parser.add_argument("--methods", default="lora,qlora,dora,full")
    parser.add_argument("--variants", default="tunelab,trl,loop")
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--dropout", type=float, default=None, help="LoRA dropout of every variant (default 0.05)")
    parser.add_argument("--child", dest="variant", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--data-name", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--method", default="lora", help=argparse.SUPPRESS)
    options = parser.parse_args()
    if options.variant:
        child(options)
    else:
        throughput(options)


if __name__ == "__main__":
    main()
