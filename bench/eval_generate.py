"""Evaluation generation speed: tunelab's batched generation against naive one-at-a-time `generate`, same rows.

Variants, on the same prompts (the quick-start task's test rows), greedy, the same new-token cap and stop tokens:
  naive      model.generate on one prompt at a time (the baseline)
  batched    what `tunelab eval` runs: prompts sorted by length, left-padded batches, KV cache
Prints rows/s and generated tokens/s of each, the ratio to the baseline, and how many answers are identical (bf16
autocast and padding can change a greedy choice where two tokens are nearly tied).

With `--run RUN` it measures a trained run instead, batched as `tunelab eval` answers its test rows:
  adapter    the tuned model as peft loads it: the adapter's matmuls beside every adapted layer at each step (the
             baseline: how tunelab evaluated before)
  merged     the adapter folded into the weights (what `tunelab eval`, generate and chat use now)
  base       the base model, for scale (its answers differ, so its tokens/s is not a like-for-like ratio)

    python bench/eval_generate.py [--model smollm2-135m-instruct] [--rows 32] [--batch-size 16] [--max-new-tokens 96]
    python bench/eval_generate.py --run runs/quickstart [--rows 40] [--batch-size 20]
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def test_prompts(model_name: str, home: Path, count: int):
    from tunelab.config.schema import DataSection
    from tunelab.data.cache import prepare_data
    from tunelab.data.templates import encode_prompt, prompt_and_reference
    from tunelab.models.load import model_limits, resolve_model
    from tunelab.models.tokenizer import load_tokenizer

    ref = resolve_model(model_name, home)
    tokenizer = load_tokenizer(ref.path)
    data = DataSection(generate={"task": "notes-to-json", "rows": 400},
                       split={"validation": 0.05, "test": 0.1, "seed": 42},
                       system_prompt="You convert order notes to JSON.", max_length=256)
    limits = model_limits(ref.path, tokenizer)
    # The quick start's held-out rows, as the data doctor prepares them for `tunelab train` (cached).
    test = prepare_data(data, tokenizer, limits.stop_ids, limits.context, home).splits().test[:count]
    return ref, tokenizer, [encode_prompt(tokenizer, prompt_and_reference(example.messages)[0]) for example in test]


def naive(model, tokenizer, prompts, max_new_tokens, stop_ids, bf16):
    """One `generate` call per prompt: no padding, no batching (KV cache on, as generate does by default)."""
    import torch

    from tunelab.evaluate.generation import trim_at_stop

    texts, tokens = [], 0
    started = time.perf_counter()
    for prompt in prompts:
        ids = torch.tensor([prompt])
        with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            output = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=max_new_tokens,
                                    do_sample=False, temperature=None, top_p=None, top_k=None,
                                    pad_token_id=tokenizer.pad_token_id, eos_token_id=stop_ids)
        new = trim_at_stop(output[0, len(prompt):].tolist(), set(stop_ids))
        tokens += len(new)
        texts.append(tokenizer.decode(new, skip_special_tokens=True))
    return texts, tokens, time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--home", default=None, help="tunelab home (default $TUNELAB_HOME or ~/.cache/tunelab)")
    parser.add_argument("--rows", type=int, default=32)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--max-new-tokens", type=int, default=96)
    parser.add_argument("--fp32", action="store_true", help="no bf16 autocast")
    parser.add_argument("--run", default=None, help="A trained run: its adapter unmerged vs merged vs the base.")
    options = parser.parse_args()
    if options.run:
        run_mode(options)
        return

    import transformers

    from tunelab.data.templates import stop_token_ids
    from tunelab.device import Placement, cpu_has_fast_bf16
    from tunelab.evaluate.generation import generate_texts
    from tunelab.models.load import load_causal_lm, model_stop_ids
    from tunelab.paths import tunelab_home

    transformers.logging.set_verbosity_error()
    home = Path(options.home) if options.home else tunelab_home()
    ref, tokenizer, prompts = test_prompts(options.model, home, options.rows)
    model = load_causal_lm(ref.path).eval()
    stop_ids = sorted(stop_token_ids(tokenizer, model_stop_ids(model)))
    bf16 = not options.fp32 and cpu_has_fast_bf16()
    placement = Placement("cpu", "bf16" if bf16 else "fp32")
    generate_texts(model, tokenizer, prompts[:2], 4, 2, stop_ids, placement=placement)  # warm-up, not timed

    naive_texts, naive_tokens, naive_seconds = naive(model, tokenizer, prompts, options.max_new_tokens, stop_ids, bf16)
    batched = generate_texts(model, tokenizer, prompts, options.max_new_tokens, options.batch_size, stop_ids,
                             placement=placement)
    same = sum(a == b for a, b in zip(naive_texts, batched.texts))
    rows = len(prompts)
    print(f"model {options.model}, {rows} rows, greedy, max {options.max_new_tokens} new tokens, "
          f"{'bf16 autocast' if bf16 else 'fp32'}, batch {options.batch_size}")
    baseline = rows / naive_seconds
    print(f"naive     {baseline:7.2f} rows/s  {naive_tokens / naive_seconds:7.1f} tokens/s  1.00x naive")
    print(f"batched   {rows / batched.seconds:7.2f} rows/s  {batched.tokens_per_second:7.1f} tokens/s  "
          f"{rows / batched.seconds / baseline:.2f}x naive")
    print(f"identical answers: {same} of {rows}")


def run_mode(options: argparse.Namespace) -> None:
    from tunelab.data.dataset import read_splits
    from tunelab.data.templates import encode_prompt, prompt_and_reference, stop_token_ids
    from tunelab.evaluate.generation import generate_texts
    from tunelab.methods.registry import get_method
    from tunelab.models.load import model_stop_ids
    from tunelab.paths import tunelab_home
    from tunelab.quiet import quiet_libraries
    from tunelab.run.models import open_run_models

    quiet_libraries()
    home = Path(options.home) if options.home else tunelab_home()
    models = open_run_models(options.run, home, "cpu")
    tokenizer = models.tokenizer()
    test = read_splits(models.run.data).test[: options.rows]
    prompts = [encode_prompt(tokenizer, prompt_and_reference(example.messages)[0]) for example in test]
    method = get_method(models.recipe.method.name)
    variants = {"adapter": lambda: models.tuned(models.causal_lm),
                "merged": lambda: method.merge(models.tuned(models.causal_lm)),
                "base": models.causal_lm}
    results = {}
    for label, load in variants.items():
        model = load()
        stop_ids = sorted(stop_token_ids(tokenizer, model_stop_ids(model)))
        generate_texts(model, tokenizer, prompts[:2], 4, 2, stop_ids, placement=models.placement)  # warm-up
        results[label] = generate_texts(model, tokenizer, prompts, options.max_new_tokens, options.batch_size,
                                        stop_ids, placement=models.placement)
        del model
    print(f"run {options.run} ({method.name}), {len(prompts)} test rows, greedy, max {options.max_new_tokens} new "
          f"tokens, {models.placement.describe()}, batch {options.batch_size}")
    baseline = results["adapter"].tokens_per_second
    for label, result in results.items():
        print(f"{label:8} {result.rows_per_second:6.2f} rows/s  {result.tokens_per_second:7.1f} tokens/s  "
              f"{result.tokens_per_second / baseline:.2f}x adapter")
    same = sum(a == b for a, b in zip(results["adapter"].texts, results["merged"].texts))
    print(f"identical answers, merged vs adapter: {same} of {len(prompts)}")


if __name__ == "__main__":
    main()
