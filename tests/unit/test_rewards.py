"""Rewards for RL tuning: OpenAI's graders run locally (names, fields and templates as OpenAI has them), Python
reward functions from a file, and the one-line errors for each way a reward can be wrong."""

from __future__ import annotations

import pytest
from pydantic import TypeAdapter, ValidationError

from tunelab.errors import TunelabError
from tunelab.rewards.build import RewardSpec, check_rewards, reward_funcs

SPEC = TypeAdapter(RewardSpec)


def spec(**fields):
    return SPEC.validate_python(fields)


def scores(reward, completions, prompts=None, **columns):
    (function,) = reward_funcs([reward])
    return function(prompts=prompts or ["q"] * len(completions), completions=completions, **columns)


@pytest.mark.parametrize("operation, expected", [("eq", [1, 0, 0]), ("ne", [0, 1, 1]), ("like", [1, 1, 0]),
                                                 ("ilike", [1, 1, 1])])
def test_string_check_operations(operation, expected):
    grader = spec(type="string_check", name="city", input="{{ sample.output_text }}",
                  reference="{{ item.city }}", operation=operation)
    got = scores(grader, ["Paris", "Paris, France", "paris"], city=["Paris"] * 3)
    assert got == [float(value) for value in expected]


def test_templates_follow_json_paths_and_read_chat_completions():
    grader = spec(type="string_check", name="nested", input="{{ sample.output_text }}",
                  reference="{{ item.answer.cities[1] }}", operation="eq")
    completions = [[{"role": "assistant", "content": "Lyon"}], [{"role": "assistant", "content": "Nice"}]]
    assert scores(grader, completions, answer=[{"cities": ["Paris", "Lyon"]}] * 2) == [1.0, 0.0]


@pytest.mark.parametrize("metric", ["fuzzy_match", "bleu", "gleu", "rouge_1", "rouge_2", "rouge_l"])
def test_text_similarity_is_one_for_the_reference_and_less_for_another_answer(metric):
    grader = spec(type="text_similarity", name="close", input="{{ sample.output_text }}",
                  reference="{{ item.reference }}", evaluation_metric=metric)
    reference = "the quick brown fox jumps over the lazy dog"
    same, other = scores(grader, [reference, "a slow red fox sat under the lazy cat"], reference=[reference] * 2)
    assert same == pytest.approx(1.0) and 0 <= other < 0.9


@pytest.mark.parametrize("metric", ["cosine", "meteor"])
def test_metrics_that_cannot_run_locally_are_refused_when_read(metric):
    with pytest.raises(ValidationError, match=f"evaluation_metric {metric}"):
        spec(type="text_similarity", name="x", input="a", reference="b", evaluation_metric=metric)


def test_python_grader_and_a_weighted_multi_grader():
    python = {"type": "python", "name": "short",
              "source": "def grade(sample, item):\n    return 1.0 if len(sample['output_text']) <= 5 else 0.0\n"}
    exact = {"type": "string_check", "name": "exact", "input": "{{ sample.output_text }}",
             "reference": "{{ item.answer }}", "operation": "eq"}
    multi = spec(type="multi", name="both", graders={"short": python, "exact": exact},
                 calculate_output="0.25 * short + 0.75 * exact")
    assert scores(multi, ["yes", "no", "yes, surely"], answer=["yes", "yes", "yes, surely"]) == [1.0, 0.25, 0.75]


@pytest.mark.parametrize("formula, message", [
    ("exact + missing", "names missing, which are not among its graders"),
    ("__import__('os').system('true')", "may call min, max"),
    ("exact.real", "only numbers, grader names"),
    ("exact +", "is not a formula"),
])
def test_a_bad_multi_formula_is_refused_before_training(formula, message):
    exact = {"type": "string_check", "name": "exact", "input": "a", "reference": "a", "operation": "eq"}
    with pytest.raises(TunelabError, match=message):
        check_rewards([spec(type="multi", name="m", graders={"exact": exact}, calculate_output=formula)], [{}])


def test_a_grader_reading_a_field_the_rows_lack_is_one_line():
    grader = spec(type="string_check", name="city", input="{{ sample.output_text }}", reference="{{ item.city }}",
                  operation="eq")
    with pytest.raises(TunelabError, match=r"rewards\[0\] \(string_check 'city'\) reads item.city, and 1 of 2 row"):
        check_rewards([grader], [{"city": "Paris"}, {"prompt": "x"}])


@pytest.mark.parametrize("source, message", [
    ("def grade(sample, item)\n    return 1", "the source does not run \\(SyntaxError"),
    ("def other(sample, item):\n    return 1", "defines no function grade"),
])
def test_a_python_grader_that_cannot_load_is_refused_before_training(source, message):
    with pytest.raises(TunelabError, match=message):
        check_rewards([spec(type="python", name="p", source=source)], [{}])


def test_a_grader_that_raises_or_gives_a_non_number_names_itself_and_the_row():
    raising = spec(type="python", name="boom", source="def grade(sample, item):\n    return 1 / 0\n")
    with pytest.raises(TunelabError, match=r"rewards\[0\] 'boom', row data.jsonl:7: raised ZeroDivisionError"):
        scores(raising, ["a"], where=["data.jsonl:7"])
    text = spec(type="python", name="texty", source="def grade(sample, item):\n    return 'good'\n")
    with pytest.raises(TunelabError, match=r"'texty', row with prompt 'what\?': gave 'good'; a reward is a finite"):
        scores(text, ["a"], prompts=["what?"])


def write(tmp_path, text):
    path = tmp_path / "rewards.py"
    path.write_text(text)
    return path


def test_a_reward_function_from_a_file_gets_the_columns_like_trl_passes_them(tmp_path):
    path = write(tmp_path, "def length_match(prompts, completions, target, **kwargs):\n"
                           "    return [float(len(c) == t) for c, t in zip(completions, target)]\n")
    function = spec(type="function", function=f"{path}:length_match")
    (reward,) = reward_funcs([function])
    assert reward.__name__ == "length_match"
    assert reward(prompts=["a", "b"], completions=["xyz", "xy"], target=[3, 3], completion_ids=[[1], [2]],
                  trainer_state=None) == [1.0, 0.0]


@pytest.mark.parametrize("text, name, message", [
    (None, "f", "reward file not found"),
    ("import no_such_module_here\n", "f", "does not import \\(ModuleNotFoundError"),
    ("x = 1\n", "f", "has no function 'f'"),
    ("def f(text):\n    return [1.0]\n", "f", "takes \\(prompts, completions, \\*\\*kwargs\\)"),
])
def test_a_reward_function_that_cannot_be_used_is_one_line(tmp_path, text, name, message):
    path = tmp_path / "rewards.py" if text is None else write(tmp_path, text)
    with pytest.raises(TunelabError, match=message):
        reward_funcs([spec(type="function", function=f"{path}:{name}")])


@pytest.mark.parametrize("body, message", [
    ("raise ValueError('bad row')", "raised ValueError: bad row"),
    ("return 0.5", "returned float for 2 completions"),
    ("return [1.0, float('nan')]", "gave nan"),
])
def test_a_reward_function_that_fails_when_called_is_one_line(tmp_path, body, message):
    path = write(tmp_path, f"def f(prompts, completions, **kwargs):\n    {body}\n")
    (reward,) = reward_funcs([spec(type="function", function=f"{path}:f")])
    with pytest.raises(TunelabError, match=rf"rewards\[0\] 'f'.*{message}"):
        reward(prompts=["a", "b"], completions=["x", "y"])


def test_a_bad_template_variable_is_refused_before_training():
    grader = spec(type="string_check", name="t", input="{{ sample.output_text }}", reference="{{ row.city }}",
                  operation="eq")
    with pytest.raises(TunelabError, match=r"'\{\{ row.city \}\}' is not a variable"):
        check_rewards([grader], [{}])


def test_no_reward_at_all_is_refused():
    with pytest.raises(TunelabError, match="no reward given"):
        check_rewards([], [{}])


def grpo_on_tiny(tiny_checkpoint, tmp_path, reward):
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import GRPOConfig, GRPOTrainer

    rows = [{"prompt": [{"role": "user", "content": word}], "letter": "a", "where": f"prompts.jsonl:{i + 1}"}
            for i, word in enumerate(["abc", "bcd", "cde", "def"] * 2)]
    args = GRPOConfig(output_dir=str(tmp_path / "grpo"), use_cpu=True, max_steps=2, per_device_train_batch_size=4,
                      num_generations=4, max_completion_length=6, logging_steps=1, report_to=[], save_strategy="no",
                      disable_tqdm=True)
    trainer = GRPOTrainer(model=AutoModelForCausalLM.from_pretrained(str(tiny_checkpoint)),
                          reward_funcs=reward_funcs([reward]), args=args, train_dataset=Dataset.from_list(rows),
                          processing_class=AutoTokenizer.from_pretrained(str(tiny_checkpoint)))
    trainer.train()
    return trainer.state.log_history


def test_graders_are_trl_reward_funcs(tiny_checkpoint, tmp_path):
    """TRL's GRPOTrainer calls the grader with its completions and the rows' columns and logs it by name."""
    grader = spec(type="python", name="count_a",
                  source="def grade(sample, item):\n    return sample['output_text'].count(item['letter']) / 6\n")
    logged = [entry for entry in grpo_on_tiny(tiny_checkpoint, tmp_path, grader) if "rewards/count_a/mean" in entry]
    assert len(logged) == 2 and all(0 <= entry["rewards/count_a/mean"] <= 1 for entry in logged)


def test_a_grader_failing_inside_trl_stops_training_with_one_line(tiny_checkpoint, tmp_path):
    grader = spec(type="python", name="broken", source="def grade(sample, item):\n    return item['nope']\n")
    with pytest.raises(TunelabError, match=r"rewards\[0\] 'broken', row prompts.jsonl:\d: raised KeyError: 'nope'"):
        grpo_on_tiny(tiny_checkpoint, tmp_path, grader)
