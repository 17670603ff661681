"""Did the preferences take? Each model answers the held-out prompts, and the recipe's rewards judge the answers.

For every row that carries a prompt (`prompt` rows, the prompts of preference and feedback rows, a conversation's
prompt before its last answer) each model writes one greedy answer (the same decoding for both, as SFT's evaluation
does); the recipe's rewards (rewards/build.py, called as TRL's trainers call `reward_funcs`: conversational prompts
and completions, and the row's fields as keyword columns) score it, and a row's reward is their sum, a reward that
gives None (does not apply) counting 0 as in TRL's nansum. The metrics (metrics/registry.py, family "judged") come
from these per-row numbers, so the paired bootstrap resamples them like any other: `win_rate` (the tuned model's
reward against the base model's on the same prompt), `mean_reward`, `mean_answer_tokens` and `kl_to_reference`.

`kl_to_reference` is estimated on one answer *sampled* from the model (temperature 1, no top-k/top-p, a fixed seed),
not on the greedy answer: KL(model || reference) is the mean of log p_model(y) - log p_reference(y) over y drawn from
the model, and the greedy answer is the model's most likely one, whose log-ratio is biased upwards (it is where
tuning concentrated the probability). The reference is the starting model: the tuned model with its adapter disabled
(peft's `disable_adapter()`: no second copy of the weights). The base model is its own reference (0 by definition); a
fully fine-tuned model has no adapter to disable, so there the metric is left out."""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable

from tunelab.evaluate.outputs import ModelOutputs

if TYPE_CHECKING:
    from tunelab.config.schema import EvalSection, Recipe
    from tunelab.data.formats import Example
    from tunelab.device import Placement
    from tunelab.rewards.build import RewardContext
    from tunelab.run.models import RunModels

JUDGED_METRICS = ("win_rate", "mean_reward", "mean_answer_tokens", "kl_to_reference")
KL_TEMPERATURE = 1.0  # the model's own distribution: what KL(model || reference) is an expectation over


@dataclass
class Judging:
    """What judging the answers to a test split needs, built before any model loads (so a bad reward is refused
    before training)."""

    prompts: list[list[dict[str, str]]]  # each row's prompt, as messages
    columns: dict[str, list[Any]]  # each row field the rewards may read, one value per row (None where absent)
    rewards: list[Callable[..., list[float | None]]]  # TRL-style reward functions, named after the recipe's
    max_new_tokens: int
    batch_size: int
    seed: int

    def decoding(self) -> dict[str, Any]:
        return {"judged": {"strategy": "greedy", "max_new_tokens": self.max_new_tokens,
                           "rewards": [reward.__name__ for reward in self.rewards],
                           "kl_to_reference": f"one answer sampled per prompt (temperature {KL_TEMPERATURE}, "
                                              f"seed {self.seed}), its log-ratio to the adapter-disabled model"}}


def row_columns(example: "Example") -> dict[str, Any]:
    """The fields a reward may read of a row (`{{ item.x }}`, or a reward function's keyword columns): a prompt
    row's own fields; a pair's chosen and rejected answers; a feedback row's completion and label; and `where`
    (its file:line), so a reward's error names the row."""
    fields: dict[str, Any] = dict(example.extra or {})
    if example.chosen is not None:
        fields.update(chosen=example.chosen, rejected=example.rejected)
    if example.completion is not None:
        fields.update(completion=example.completion, label=example.desirable)
    fields["where"] = example.where
    return fields


def prepare_judging(recipe: "Recipe", rows: list["Example"], source: str,
                    references: list[str] | None = None, max_new_tokens: int | None = None,
                    context: "RewardContext | None" = None) -> Judging:
    """The prompts of `rows` and the recipe's rewards, checked: a grader's templates and the fields it reads on
    every row, a reward function's file and signature. Conversation rows (sft) give the prompt before their last
    answer, and that answer (`references`) as the field `reference`."""
    from tunelab.rewards.build import check_rewards, reward_funcs

    fields = [row_columns(example) for example in rows]
    for row, reference in zip(fields, references or []):
        row["reference"] = reference
    check_rewards(recipe.rewards, fields, where="rewards", context=context)
    names = list(dict.fromkeys(name for row in fields for name in row))
    columns = {name: [row.get(name) for row in fields] for name in names}
    prompts = [prompt_of(example, source) for example in rows]
    rewards = reward_funcs(recipe.rewards, context=context)
    return Judging(prompts, columns, rewards, max_new_tokens or recipe.eval.max_new_tokens,
                   recipe.eval.batch_size, recipe.eval.seed)


def prompt_of(example: "Example", source: str) -> list[dict[str, str]]:
    from tunelab.errors import TunelabError

    if example.kind == "chat":
        from tunelab.data.templates import prompt_and_reference

        return prompt_and_reference(example.messages)[0]
    if not example.messages:
        raise TunelabError(f"{example.where}: a '{example.kind}' row in the {source} has no prompt to answer; "
                           "judged evaluation needs prompt, preference, feedback or conversation rows")
    return example.messages


def judge(model: Any, tokenizer: Any, judging: Judging, placement: "Placement | None", outputs: ModelOutputs,
          answered: bool = False) -> ModelOutputs:
    """Fill `outputs`' judged fields: each row's greedy answer, its length, its rewards; and, for a model with an
    adapter, the log-ratio to the reference of one sampled answer per prompt. `answered`: `outputs.predictions`
    are already the greedy answers to these prompts (sft), judged as they are rather than written again."""
    from tunelab.data.templates import encode_prompt
    from tunelab.evaluate.answers import model_stops
    from tunelab.evaluate.generation import generate_texts

    stops = sorted(model_stops(model, tokenizer))
    prompt_ids = [encode_prompt(tokenizer, prompt) for prompt in judging.prompts]
    if answered:
        outputs.judged_answers, outputs.judged_tokens = outputs.predictions, outputs.answer_tokens
    else:
        generated = generate_texts(model, tokenizer, prompt_ids, judging.max_new_tokens, judging.batch_size, stops,
                                   placement=placement)
        outputs.judged_answers, outputs.judged_tokens = generated.texts, generated.row_tokens
    outputs.reward_parts = reward_parts(judging, outputs.judged_answers)
    outputs.rewards = summed(outputs.reward_parts, len(outputs.judged_answers))
    outputs.log_ratios = log_ratios(model, tokenizer, judging, prompt_ids, stops, placement)
    return outputs


def judged_outputs(model: Any, tokenizer: Any, judging: Judging, placement: "Placement | None") -> ModelOutputs:
    """A model's outputs on prompt rows, which have no reference: its answers are the judged ones, no loss."""
    started = time.perf_counter()
    rows = len(judging.prompts)
    outputs = judge(model, tokenizer, judging, placement, ModelOutputs([], [(0.0, 0)] * rows, [], {}))
    outputs.predictions, outputs.answer_tokens = outputs.judged_answers, outputs.judged_tokens
    seconds = time.perf_counter() - started
    outputs.speed = {"tokens_per_second": sum(outputs.judged_tokens) / seconds if seconds else 0.0,
                     "rows_per_second": rows / seconds if seconds else 0.0}
    return outputs


def reward_parts(judging: Judging, answers: list[str]) -> dict[str, list[float | None]]:
    """Each reward's score of each answer, by the reward's name."""
    completions = [[{"role": "assistant", "content": answer}] for answer in answers]
    return {reward.__name__: reward(prompts=judging.prompts, completions=completions, **judging.columns)
            for reward in judging.rewards}


def summed(parts: dict[str, list[float | None]], rows: int) -> list[float]:
    """Per row, the rewards' sum; a reward that does not apply (None) counts 0, as in TRL's nansum."""
    return [math.fsum(values[row] for values in parts.values() if values[row] is not None) for row in range(rows)]


def log_ratios(model: Any, tokenizer: Any, judging: Judging, prompt_ids: list[list[int]], stops: list[int],
               placement: "Placement | None") -> list[float]:
    """Per prompt, log p_model(y) - log p_reference(y) for one y sampled from the model; empty for a model with no
    adapter to disable (the base model, or full fine-tuning)."""
    import torch
    from accelerate.utils import is_peft_model

    from tunelab.data.templates import IGNORE_INDEX, Encoded
    from tunelab.evaluate.generation import generate_texts
    from tunelab.evaluate.loss import row_losses

    if not is_peft_model(model):
        return []
    with torch.random.fork_rng():  # a fixed seed for the sample, the caller's random state untouched
        torch.manual_seed(judging.seed)
        sampled = generate_texts(model, tokenizer, prompt_ids, judging.max_new_tokens, judging.batch_size, stops,
                                 temperature=KL_TEMPERATURE, placement=placement, whole_distribution=True)
    rows = [Encoded(prompt + answer, [IGNORE_INDEX] * len(prompt) + answer)
            for prompt, answer in zip(prompt_ids, sampled.row_ids)]
    # summed negative log-likelihoods: log p_model - log p_reference is the reference's minus the model's
    own = row_losses(model, rows, tokenizer.pad_token_id, judging.batch_size, placement)
    with model.disable_adapter():
        reference = row_losses(model, rows, tokenizer.pad_token_id, judging.batch_size, placement)
    return [theirs - mine for (mine, _), (theirs, _) in zip(own, reference)]


def over_root_base(models: "RunModels", judging: Judging, tuned: ModelOutputs, options: "EvalSection",
                   say: Callable[[str], None]) -> dict[str, Any] | None:
    """A chained run (model.from_run) is evaluated against its start; this is its tuned model against the chain's
    root, the base model the first run started from: that model answers the same prompts the same way, the same
    rewards judge it, and the tuned model's win rate over it gets a bootstrap interval (the rows resampled as for
    every other metric). None for a run that is not chained."""
    from tunelab.evaluate.bootstrap import percentile_interval, resample_weights, resampled_scores
    from tunelab.metrics.registry import RowInputs, ratio, win_stats
    from tunelab.models.load import load_causal_lm, resolve_model

    start = models.record.started_from
    if start is None:
        return None
    root = models.placement.place(load_causal_lm(resolve_model(start.base_model, models.home).path)).eval()
    answered = judged_outputs(root, models.tokenizer(), judging, models.placement)
    del root
    # win_rate's own per-row statistics, the root's rewards as the opponent
    stats = win_stats(RowInputs([], [], rewards=tuned.rewards, opponent_rewards=answered.rewards))
    found: dict[str, Any] = {"model": start.base_model, "win_rate": ratio(stats.sum(axis=0)),
                             "mean_reward": math.fsum(answered.rewards) / len(answered.rewards),
                             "mean_answer_tokens": math.fsum(answered.judged_tokens) / len(answered.judged_tokens),
                             "rewards": answered.rewards}
    if options.bootstrap:
        weights = resample_weights(len(answered.rewards), options.bootstrap, options.seed)
        found["interval"] = percentile_interval(resampled_scores(ratio, stats, weights), options.confidence)
    say(f"  tuned over the chain's root base {start.base_model}: win rate {100 * found['win_rate']:.1f}%"
        + (" [{:.1f}%, {:.1f}%]".format(*(100 * value for value in found["interval"])) if "interval" in found
           else ""))
    return found
