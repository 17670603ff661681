"""Judged evaluation (evaluate/judged.py): win rate, mean reward, answer length, KL to the reference and DPO's
implicit reward accuracy, by hand on small inputs, through `score` with hand-made outputs, on a tiny model with an
adapter, and end to end through the lifecycle of task dpo with `rewards:`; the gate on win_rate."""

from __future__ import annotations

import json

import pytest
import torch
from rich.console import Console

from tests.conftest import train_recipe
from tests.unit.test_dpo import dpo_recipe, planted_pairs
from tunelab.config.load import validate_recipe
from tunelab.config.schema import EvalSection, ObjectiveSection
from tunelab.data.formats import Example
from tunelab.errors import TunelabError
from tunelab.evaluate.evaluator import score
from tunelab.evaluate.gate import check_objective
from tunelab.evaluate.outputs import ModelOutputs
from tunelab.evaluate.plan import plan_evaluation
from tunelab.metrics import registry
from tunelab.tasks.base import TaskEvaluation

QUIET = Console(quiet=True)
JUDGED = ("win_rate", "mean_reward", "mean_answer_tokens", "kl_to_reference")
LETTERS_REWARD = '''
def letters(prompts, completions, **columns):
    """The share of the answer's characters among a..h."""
    texts = [completion[-1]["content"] for completion in completions]
    return [sum(ch in "abcdefgh" for ch in text) / max(len(text), 1) for text in texts]
'''


def values(names, inputs):
    return registry.scores(registry.row_statistics(names, inputs))


# ---- the metrics by hand ------------------------------------------------------------------------------------------


def test_win_rate_counts_a_tie_half_and_the_base_model_ties_itself():
    tuned = registry.RowInputs([""] * 4, [""] * 4, rewards=[1.0, 0.0, 2.0, 1.0], answer_tokens=[3, 5, 7, 9],
                               log_ratios=[0.5, 1.5, 0.0, 2.0], opponent_rewards=[0.0, 0.0, 3.0, 1.0])
    assert values(list(JUDGED), tuned) == {"win_rate": 0.5,  # win, tie, loss, tie
                                           "mean_reward": 1.0, "mean_answer_tokens": 6.0, "kl_to_reference": 1.0}
    base = registry.RowInputs([""] * 4, [""] * 4, rewards=[0.0, 0.0, 3.0, 1.0], opponent_rewards=[0.0, 0.0, 3.0, 1.0])
    assert values(["win_rate", "mean_reward"], base) == {"win_rate": 0.5, "mean_reward": 1.0}
    lost = registry.RowInputs(["a"], ["a"], rewards=[0.2], opponent_rewards=[0.3])
    assert values(["win_rate"], lost) == {"win_rate": 0.0}


def test_implicit_reward_accuracy_compares_the_margin_with_the_references():
    # tuned margins against the base's: up, down, equal, up -> 1, 0, 0.5, 1
    tuned = registry.RowInputs([""] * 4, [""] * 4, margins=[1.0, -2.0, 0.3, -0.5],
                               opponent_margins=[0.0, -1.0, 0.3, -0.9])
    assert values(["implicit_reward_accuracy"], tuned) == {"implicit_reward_accuracy": 0.625}
    base = registry.RowInputs([""] * 2, [""] * 2, margins=[1.0, -1.0], opponent_margins=[1.0, -1.0])
    assert values(["implicit_reward_accuracy"], base) == {"implicit_reward_accuracy": 0.5}  # chance, by convention


def test_judged_metrics_need_rewards_and_prompt_rows_have_no_loss():
    section = EvalSection()
    plan = plan_evaluation("prompt", ["", ""], ["a:1", "a:2"], section, None, provided=JUDGED)
    assert plan.metrics == list(JUDGED) and plan.primary == "win_rate" and plan.correctness is None
    with pytest.raises(TunelabError, match=r"'win_rate' judges generated answers with the recipe's rewards; give "
                                           r"`rewards:`"):
        plan_evaluation("preference", ["x"], ["a:1"], section, ObjectiveSection(metric="win_rate", min=0.6))
    with pytest.raises(TunelabError, match=r"'implicit_reward_accuracy' compares"):
        plan_evaluation("chat", ["x"], ["a:1"], EvalSection(metrics=["implicit_reward_accuracy"]), None)


# ---- score() with hand-made outputs ---------------------------------------------------------------------------------


def judged(rewards, tokens, log_ratios=()):
    rows = len(rewards)
    answers = [f"answer {index}" for index in range(rows)]
    return ModelOutputs(answers, [(0.0, 0)] * rows, list(tokens), {"rows_per_second": 1.0}, judged_answers=answers,
                        judged_tokens=list(tokens), rewards=list(rewards), reward_parts={"rule": list(rewards)},
                        log_ratios=list(log_ratios))


def prompt_spec(rows, objective=None):
    plan = plan_evaluation("prompt", [""] * rows, [f"p.jsonl:{i + 1}" for i in range(rows)], EvalSection(),
                           objective, provided=JUDGED)
    return TaskEvaluation(plan=plan, answer=None, prompts=[f"prompt {i}" for i in range(rows)],
                          forgetting_measure="perplexity", decoding={"strategy": "greedy"})


def test_score_gives_a_known_better_tuned_model_an_interval_above_one_half():
    rows = 40
    base = judged([0.0] * rows, [4] * rows)
    tuned = judged([1.0] * 30 + [0.0] * 6 + [-1.0] * 4, [8] * rows, [0.25] * rows)  # 30 wins, 6 ties, 4 losses
    evaluation, examples = score("grpo", prompt_spec(rows), {"base": base, "tuned": tuned}, EvalSection(), None,
                                 None, [0] * rows)
    assert evaluation.kind == "prompt" and evaluation.metrics == list(JUDGED) and not evaluation.notes
    assert evaluation.base["win_rate"] == 0.5 and evaluation.tuned["win_rate"] == pytest.approx((30 + 3) / 40)
    assert evaluation.delta["win_rate"] == pytest.approx(33 / 40 - 0.5)
    assert evaluation.intervals.base["win_rate"] == [0.5, 0.5]
    assert evaluation.intervals.tuned["win_rate"][0] > 0.5 and evaluation.intervals.delta["win_rate"][0] > 0
    assert evaluation.tuned["mean_reward"] == pytest.approx(26 / 40) and evaluation.base["mean_reward"] == 0.0
    assert (evaluation.base["mean_answer_tokens"], evaluation.tuned["mean_answer_tokens"]) == (4.0, 8.0)
    assert evaluation.base["kl_to_reference"] == 0.0 and evaluation.tuned["kl_to_reference"] == 0.25
    assert [row["win"] for row in examples].count("tuned") == 30 and examples[-1]["win"] == "base"
    assert examples[0]["tuned_reward"] == 1.0 and examples[0]["tuned_rewards"] == {"rule": 1.0}
    assert examples[0]["base_answer_tokens"] == 4 and "tuned_answer" not in examples[0]  # its answer is `tuned`


def test_a_tuned_model_without_an_adapter_has_no_kl_and_says_so():
    base, tuned = judged([0.0, 1.0], [2, 2]), judged([1.0, 1.0], [3, 3])  # no log-ratios: full fine-tuning
    evaluation, _ = score("grpo", prompt_spec(2), {"base": base, "tuned": tuned}, EvalSection(bootstrap=0), None,
                          None, [0, 0])
    assert "kl_to_reference" not in evaluation.metrics and "kl_to_reference" not in evaluation.tuned
    assert evaluation.notes == ["kl_to_reference left out: the tuned model has no adapter to disable (full "
                                "fine-tuning), so its reference would be a second copy of the base model"]


def test_the_gate_judges_win_rate_against_one_half():
    base, tuned = judged([0.0] * 40, [4] * 40), judged([1.0] * 36 + [0.0] * 4, [4] * 40, [0.1] * 40)
    objective = ObjectiveSection(metric="win_rate", min=0.9, min_gain_over_base=0.3, significant=True)
    evaluation, _ = score("grpo", prompt_spec(40, objective), {"base": base, "tuned": tuned}, EvalSection(),
                          objective, None, [0] * 40)
    assert evaluation.objective.met, evaluation.objective.summary
    assert "win_rate gain over base +45.0 pts >= min_gain_over_base +30.0 pts" in evaluation.objective.summary
    strict = ObjectiveSection(metric="win_rate", min_gain_over_base=0.5)
    verdict = check_objective(strict, evaluation.base, evaluation.tuned, evaluation.intervals, None)
    assert not verdict.met and [entry.check for entry in verdict.checks if not entry.ok] == ["min_gain_over_base"]
    with pytest.raises(TunelabError, match="mean_answer_tokens is shown, not judged"):
        check_objective(ObjectiveSection(metric="mean_answer_tokens", min_gain_over_base=1), evaluation.base,
                        evaluation.tuned, evaluation.intervals, None)
    assert check_objective(ObjectiveSection(metric="mean_answer_tokens", max=5), evaluation.base, evaluation.tuned,
                           evaluation.intervals, None).met


# ---- a tiny model: prompt_evaluation, the reference with the adapter disabled -------------------------------------


def prompt_rows(words):
    return [Example(source="p.jsonl", line=index + 1, messages=[{"role": "user", "content": word}],
                    extra={"target": word[::-1]}) for index, word in enumerate(words)]


def tiny_recipe_with_rewards(tmp_path, tiny_checkpoint, rewards):
    return validate_recipe({"model": {"name": str(tiny_checkpoint)}, "data": {"train": str(tmp_path / "x.jsonl")},
                            "eval": {"max_new_tokens": 6, "batch_size": 4, "bootstrap": 200},
                            "rewards": rewards})


def test_prompt_evaluation_judges_each_models_answers_and_the_kl_needs_the_adapter(tiny_checkpoint, tmp_path):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from tunelab.tasks.shared import prompt_evaluation

    reward = tmp_path / "reward.py"
    reward.write_text(LETTERS_REWARD)
    recipe = tiny_recipe_with_rewards(tmp_path, tiny_checkpoint, [
        {"type": "function", "function": f"{reward}:letters"},
        {"type": "text_similarity", "name": "close", "input": "{{ sample.output_text }}",
         "reference": "{{ item.target }}", "evaluation_metric": "fuzzy_match"}])
    rows = prompt_rows(["abc", "bcd", "cde", "def", "efg"])
    spec = prompt_evaluation(recipe, rows, "test split", "grpo")
    assert spec.plan.kind == "prompt" and spec.plan.primary == "win_rate"
    assert spec.decoding["judged"]["rewards"] == ["letters", "close"]
    tokenizer = AutoTokenizer.from_pretrained(str(tiny_checkpoint))
    base = AutoModelForCausalLM.from_pretrained(str(tiny_checkpoint)).eval()
    base_out = spec.answer(base, tokenizer, None)
    assert base_out.log_ratios == [] and len(base_out.rewards) == 5
    assert base_out.rewards == pytest.approx([a + b for a, b in zip(base_out.reward_parts["letters"],
                                                                     base_out.reward_parts["close"])])
    assert all(tokens <= 6 for tokens in base_out.judged_tokens) and base_out.predictions == base_out.judged_answers
    tuned = get_peft_model(AutoModelForCausalLM.from_pretrained(str(tiny_checkpoint)),
                           LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj", "o_proj"])).eval()
    fresh = spec.answer(tuned, tokenizer, None)  # lora_B is zero: the model equals its reference
    assert fresh.log_ratios == pytest.approx([0.0] * 5, abs=1e-5) and fresh.rewards == base_out.rewards
    with torch.no_grad():
        for name, parameter in tuned.named_parameters():
            if "lora_B" in name:
                parameter.add_(0.3)
    moved = spec.answer(tuned, tokenizer, None)
    assert all(abs(value) > 1e-3 for value in moved.log_ratios)
    again = spec.answer(tuned, tokenizer, None)
    assert again.log_ratios == pytest.approx(moved.log_ratios, abs=1e-5)  # the sample's seed is fixed
    evaluation, examples = score("grpo", spec, {"base": base_out, "tuned": moved}, recipe.eval, None, None, [0] * 5)
    assert set(evaluation.metrics) == set(JUDGED) and evaluation.base["kl_to_reference"] == 0.0
    assert evaluation.tuned["kl_to_reference"] == pytest.approx(sum(moved.log_ratios) / 5)
    assert examples[0]["source"] == "p.jsonl:1" and set(examples[0]["tuned_rewards"]) == {"letters", "close"}


def test_prompt_evaluation_without_rewards_and_a_reward_reading_a_missing_field_are_one_line(tiny_checkpoint,
                                                                                             tmp_path):
    from tunelab.tasks.shared import prompt_evaluation

    with pytest.raises(TunelabError, match=r"task grpo is evaluated by the recipe's rewards on its answers; give "
                                           r"`rewards:`"):
        prompt_evaluation(tiny_recipe_with_rewards(tmp_path, tiny_checkpoint, []), prompt_rows(["abc"]), "test split",
                          "grpo")
    recipe = tiny_recipe_with_rewards(tmp_path, tiny_checkpoint, [
        {"type": "string_check", "name": "same", "input": "{{ sample.output_text }}", "reference": "{{ item.answer }}",
         "operation": "eq"}])
    with pytest.raises(TunelabError, match=r"reads item.answer, and 1 of 1 row\(s\) have no 'answer'") as error:
        prompt_evaluation(recipe, prompt_rows(["abc"]), "test split", "grpo")
    assert "\n" not in str(error.value)


def test_sft_with_rewards_judges_the_answers_it_writes_with_the_reference_as_a_field(tiny_checkpoint, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from tunelab.tasks.sft import evaluation

    recipe = tiny_recipe_with_rewards(tmp_path, tiny_checkpoint, [
        {"type": "text_similarity", "name": "close", "input": "{{ sample.output_text }}",
         "reference": "{{ item.reference }}", "evaluation_metric": "fuzzy_match"}])
    rows = [Example(source="c.jsonl", line=index + 1, messages=[{"role": "user", "content": word},
                                                               {"role": "assistant", "content": word[::-1]}])
            for index, word in enumerate(["abc", "bcd", "cde"])]
    tokenizer = AutoTokenizer.from_pretrained(str(tiny_checkpoint))
    spec = evaluation(recipe, rows, {}, tokenizer)
    assert spec.plan.primary == "bleu" and set(JUDGED) <= set(spec.plan.metrics)  # sft keeps its headline
    outputs = spec.answer(AutoModelForCausalLM.from_pretrained(str(tiny_checkpoint)).eval(), tokenizer, None)
    assert outputs.judged_answers == outputs.predictions and outputs.judged_tokens == outputs.answer_tokens
    from rapidfuzz import fuzz

    assert outputs.rewards == pytest.approx([fuzz.ratio(answer, word[::-1]) / 100 for answer, word in
                                             zip(outputs.predictions, ["abc", "bcd", "cde"])])


# ---- end to end: task dpo with rewards ------------------------------------------------------------------------------


def test_dpo_with_rewards_reports_judged_metrics_in_eval_json_examples_and_report(tiny_checkpoint, tmp_path, home):
    from tests.conftest import write_jsonl
    from tunelab.present.eval_report import build_report
    from tunelab.run.folder import RunDir
    from tunelab.run.record import read_evaluation
    from tunelab.train.lifecycle import evaluate_and_record

    reward = tmp_path / "reward.py"
    reward.write_text(LETTERS_REWARD)
    pairs = write_jsonl(tmp_path / "pairs.jsonl", planted_pairs(40))
    recipe = dpo_recipe(tmp_path, tiny_checkpoint, pairs,
                        train={"max_steps": 4, "lr": 2e-2, "batch_size": 8, "save_every": 4, "eval_every": 4},
                        eval={"max_new_tokens": 8, "bootstrap": 200, "forgetting": {"enabled": False}},
                        objective={"metric": "win_rate", "min": 0.0})
    recipe["rewards"] = [{"type": "function", "function": f"{reward}:letters"},
                         {"type": "text_similarity", "name": "like_chosen", "input": "{{ sample.output_text }}",
                          "reference": "{{ item.chosen }}", "evaluation_metric": "fuzzy_match"}]
    run_dir = train_recipe(recipe, home)
    evaluation = evaluate_and_record(run_dir.root, home, QUIET, "cpu")
    assert evaluation.primary_metric == "win_rate"  # the objective's
    assert set(evaluation.metrics) >= {"preference_accuracy", "implicit_reward_accuracy", *JUDGED}
    written = read_evaluation(RunDir(run_dir.root))
    for name in ("win_rate", "implicit_reward_accuracy"):
        assert written.base[name] == 0.5 and written.intervals.delta[name] is not None
    assert written.base["kl_to_reference"] == 0.0 and written.tuned["kl_to_reference"] != 0.0
    assert written.decoding["judged"]["rewards"] == ["letters", "like_chosen"] and written.objective.met
    examples = [json.loads(line) for line in run_dir.eval_examples.read_text().splitlines()]
    assert len(examples) == written.rows == 8
    row = examples[0]
    assert {"base_reward", "tuned_reward", "base_answer", "tuned_answer", "tuned_log_ratio", "win"} <= set(row)
    assert set(row["tuned_rewards"]) == {"letters", "like_chosen"}
    wins = [row["win"] for row in examples]
    by_row = [{"tuned": 1.0, "tie": 0.5, "base": 0.0}[win] for win in wins]
    assert written.tuned["win_rate"] == pytest.approx(sum(by_row) / len(by_row))
    assert written.tuned["mean_reward"] == pytest.approx(sum(r["tuned_reward"] for r in examples) / len(examples))
    html = build_report(RunDir(run_dir.root))
    assert "Answers judged by the rewards" in html and "win_rate" in html
