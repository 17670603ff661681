"""`tunelab eval`: base and tuned model on the same held-out rows with the same decoding, side by side."""

from __future__ import annotations

import gc
from typing import Any, Callable

from rich.console import Console
from rich.table import Table

from tunelab.data.prepare import read_splits
from tunelab.data.templates import Encoded, encode_conversation, encode_prompt, prompt_and_reference, stop_token_ids
from tunelab.errors import TunelabError
from tunelab.evaluate.generation import generate_texts
from tunelab.evaluate.loss import mean_loss, row_losses
from tunelab.evaluate.metrics import exact_match, perplexity, text_metrics
from tunelab.files import write_json, write_jsonl
from tunelab.inference import RunModels
from tunelab.models.load import model_stop_ids

# Metrics where lower is better (the delta column colours by this).
LOWER_IS_BETTER = {"loss", "perplexity"}


def evaluate_run(models: RunModels, console: Console, max_rows: int | None = None) -> dict[str, Any]:
    options = models.recipe.eval
    tokenizer = models.tokenizer()
    test = read_splits(models.run.data).test[: max_rows or options.max_rows]
    if not test:
        raise TunelabError(f"{models.run.root}: the run has no test rows to evaluate on (data.test or data.split.test)")
    if any(example.kind != "chat" for example in test):
        raise TunelabError(f"{models.run.root}: base-vs-tuned generation needs conversation test rows with answers")
    pairs = [prompt_and_reference(example.messages) for example in test]
    prompts = [encode_prompt(tokenizer, messages) for messages, _ in pairs]
    references = [reference for _, reference in pairs]
    longest_reference = max(len(tokenizer(text, add_special_tokens=False)["input_ids"]) for text in references)
    # Same cap for both models: room for twice the longest reference, so a right answer is never cut off.
    max_new_tokens = min(options.max_new_tokens, 2 * longest_reference + 16)
    bf16 = models.record.get("precision") == "bf16"
    console.print(f"[bold]eval[/bold] {len(test)} test rows, greedy, max {max_new_tokens} new tokens")

    results, outputs = {}, {}
    for label, load in (("base", models.base), ("tuned", models.tuned)):
        results[label], outputs[label] = evaluate_model(
            load, tokenizer, test, prompts, references, max_new_tokens, options.batch_size,
            models.recipe.data.max_length, bf16,
        )
        console.print(f"  {label}: {results[label]['generation_tokens_per_second']:.0f} generated tokens/s")
    report = {
        "rows": len(test),
        "decoding": {"strategy": "greedy", "max_new_tokens": max_new_tokens, "batch_size": options.batch_size},
        "base": results["base"],
        "tuned": results["tuned"],
        "delta": {key: results["tuned"][key] - results["base"][key] for key in comparable(results)},
    }
    write_json(models.run.eval_json, report)
    write_jsonl(models.run.eval_worst, worst_examples(test, references, outputs, options.worst_examples))
    return report


def evaluate_model(load: Callable[[], Any], tokenizer: Any, test: list, prompts: list[list[int]],
                   references: list[str], max_new_tokens: int, batch_size: int, max_length: int,
                   bf16: bool) -> tuple[dict[str, Any], dict[str, Any]]:
    model = load()
    stop_ids = sorted(stop_token_ids(tokenizer, model_stop_ids(model)))
    encoded = [encode_conversation(tokenizer, example.messages, set(stop_ids)) for example in test]
    encoded = [Encoded(row.input_ids[:max_length], row.labels[:max_length]) for row in encoded]
    losses = row_losses(model, encoded, tokenizer.pad_token_id, autocast_bf16=bf16)
    generated = generate_texts(model, tokenizer, prompts, max_new_tokens, batch_size, stop_ids, autocast_bf16=bf16)
    del model
    gc.collect()
    loss = mean_loss(losses)
    metrics = {"loss": loss, "perplexity": perplexity(loss), **text_metrics(generated.texts, references),
               "generation_tokens_per_second": generated.tokens_per_second}
    row_loss = [total / count if count else float("nan") for total, count in losses]
    return metrics, {"texts": generated.texts, "row_loss": row_loss}


def comparable(results: dict[str, dict[str, Any]]) -> list[str]:
    return [key for key in results["tuned"] if key in results["base"] and key != "generation_tokens_per_second"]


def worst_examples(test: list, references: list[str], outputs: dict[str, Any], count: int) -> list[dict[str, Any]]:
    """The rows the tuned model found hardest (highest answer loss), with both models' outputs."""
    order = sorted(range(len(test)), key=lambda i: outputs["tuned"]["row_loss"][i], reverse=True)[:count]
    return [
        {
            "source": test[i].where,
            "prompt": test[i].messages[:-1] if test[i].messages[-1]["role"] == "assistant" else test[i].messages,
            "reference": references[i],
            "base": outputs["base"]["texts"][i],
            "tuned": outputs["tuned"]["texts"][i],
            "base_correct": exact_match(outputs["base"]["texts"][i], references[i]),
            "tuned_correct": exact_match(outputs["tuned"]["texts"][i], references[i]),
            "tuned_loss": outputs["tuned"]["row_loss"][i],
        }
        for i in order
    ]


def comparison_table(report: dict[str, Any]) -> Table:
    table = Table(title=f"base vs tuned on {report['rows']} held-out rows")
    for column, justify in (("metric", "left"), ("base", "right"), ("tuned", "right"), ("change", "right")):
        table.add_column(column, justify=justify)
    for key in report["delta"]:
        base, tuned, delta = report["base"][key], report["tuned"][key], report["delta"][key]
        better = delta < 0 if key in LOWER_IS_BETTER else delta > 0
        colour = "green" if better else "red" if delta else "white"
        table.add_row(key, format_value(key, base), format_value(key, tuned),
                      f"[{colour}]{format_delta(key, delta)}[/{colour}]")
    return table


def format_value(key: str, value: float) -> str:
    return f"{value:.4f}" if key in LOWER_IS_BETTER else f"{100 * value:.1f}%"


def format_delta(key: str, value: float) -> str:
    return f"{value:+.4f}" if key in LOWER_IS_BETTER else f"{100 * value:+.1f} pts"
