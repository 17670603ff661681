"""score_model rewards backed by local models: a trained reward_model run scores answers exactly as the run's own
evaluation did; a judge model's reply is parsed (first number, clamped to range, none -> range[0] and counted), through
a stubbed and through the real generation path; wrong models are one line before training; both work as TRL's
GRPOTrainer reward_funcs."""

from __future__ import annotations

import json
import shutil

import pytest
from pydantic import TypeAdapter
from rich.console import Console

from tests.conftest import tiny_recipe, train_recipe, write_jsonl
from tests.unit.test_dpo import planted_pairs
from tunelab.device import Placement
from tunelab.errors import TunelabError
from tunelab.rewards.build import RewardContext, RewardSpec, check_rewards, reward_funcs
from tunelab.rewards.score_model import generate_replies

SPEC = TypeAdapter(RewardSpec)
CPU = Placement("cpu", "fp32")
PAIRS = planted_pairs(80)
JUDGE_INPUT = [{"role": "developer", "content": "Rate from 0 to 10 how well the answer reverses the word."},
               {"role": "user", "content": [{"type": "input_text", "text": "Word: {{ item.word }}\n"},
                                            {"type": "input_text", "text": "Answer: {{ sample.output_text }}"}]}]


def spec(**fields):
    return SPEC.validate_python({"type": "score_model", "name": "rm", **fields})


@pytest.fixture(scope="module")
def rm_home(tmp_path_factory):
    return tmp_path_factory.mktemp("home")


@pytest.fixture(scope="module")
def rm_run(tiny_checkpoint, rm_home, tmp_path_factory):
    """A reward_model run trained through the lifecycle on planted pairs (chosen: the word reversed) and evaluated."""
    from tunelab.train.lifecycle import evaluate_and_record

    folder = tmp_path_factory.mktemp("rm")
    recipe = tiny_recipe(folder, tiny_checkpoint, write_jsonl(folder / "pairs.jsonl", PAIRS),
                         train={"max_steps": 30, "lr": 1e-2, "batch_size": 8, "save_every": 30, "eval_every": 30})
    recipe["task"] = {"name": "reward_model"}
    recipe["data"]["split"] = {"validation": 0.1, "test": 0.2, "seed": 1}
    run = train_recipe(recipe, rm_home)
    evaluation = evaluate_and_record(run.root, rm_home, Console(quiet=True), "cpu")
    assert evaluation.tuned["preference_accuracy"] >= 0.75  # the run learned the pairs: scoring it means something
    return run


def test_a_reward_model_run_scores_answers_as_its_own_evaluation_did(rm_run, rm_home):
    examples = [json.loads(line) for line in rm_run.eval_examples.read_text().splitlines()]
    rejected = {pair["prompt"]: pair["rejected"] for pair in PAIRS}
    words = [row["prompt"] for row in examples]
    (reward,) = reward_funcs([spec(model=str(rm_run.root))], context=RewardContext(rm_home, CPU))
    # As GRPOTrainer passes conversational rows: the prompt's messages, each completion as an assistant message.
    prompts = [[{"role": "user", "content": word}] for word in words] * 2
    completions = [[{"role": "assistant", "content": answer}]
                   for answer in [row["reference"] for row in examples] + [rejected[word] for word in words]]
    scores = reward(prompts=prompts, completions=completions)
    margins = [good - bad for good, bad in zip(scores[: len(words)], scores[len(words):])]
    assert margins == pytest.approx([row["tuned_margin"] for row in examples], abs=1e-4)
    assert sum(margin > 0 for margin in margins) / len(margins) >= 0.75
    # Plain-text prompts and completions are read as one user and one assistant message: the same scores.
    texts = reward(prompts=[word for word in words] * 2, completions=[c[0]["content"] for c in completions])
    assert texts == pytest.approx(scores, abs=1e-5)
    assert not reward.scorer.loaded.model.training
    assert all(not parameter.requires_grad for parameter in reward.scorer.loaded.model.parameters())


def test_the_model_loads_once_on_the_first_call_and_leaves_the_random_stream_alone(rm_run, rm_home):
    import torch

    (reward,) = reward_funcs([spec(model=str(rm_run.root))], context=RewardContext(rm_home, CPU))
    assert reward.scorer.loaded is None  # building the reward (before training) loads nothing
    torch.manual_seed(0)
    reward(prompts=["abc"], completions=["cba"])  # loading seeds the head's init (load_sequence_classifier)
    after_loading = torch.rand(1)
    torch.manual_seed(0)
    assert torch.equal(torch.rand(1), after_loading)
    model = reward.scorer.loaded.model
    reward(prompts=["abc"], completions=["cba"])
    assert reward.scorer.loaded.model is model


def test_a_reward_model_with_input_scores_the_rendered_conversation(rm_run, rm_home):
    messages = [{"role": "user", "content": "{{ item.word }}"},
                {"role": "assistant", "content": "{{ sample.output_text }}"}]
    context = RewardContext(rm_home, CPU)
    (templated,) = reward_funcs([spec(model=str(rm_run.root), input=messages)], context=context)
    (default,) = reward_funcs([spec(model=str(rm_run.root))], context=context)
    got = templated(prompts=["ignored", "ignored"], completions=["cba", "xyz"], word=["abc", "abc"])
    assert got == pytest.approx(default(prompts=["abc", "abc"], completions=["cba", "xyz"]), abs=1e-5)


class Replies:
    """A stub judge: gives the replies it is told to and keeps the prompts it was sent (as text)."""

    def __init__(self, replies):
        self.replies, self.prompts = replies, []

    def __call__(self, model, tokenizer, prompts, sampling, placement):
        self.prompts += [tokenizer.decode(ids) for ids in prompts]
        return self.replies[: len(prompts)]


def test_a_judge_scores_the_first_number_clamped_to_range(tiny_checkpoint, tmp_path):
    replies = Replies(["Score: 7/10", "about .25 of it", "I cannot say", "-3", "1e1 points", "12"])
    judge = spec(name="judge", model=str(tiny_checkpoint), input=JUDGE_INPUT, range=[0, 10])
    (reward,) = reward_funcs([judge], context=RewardContext(tmp_path), generate=replies)
    logged = {}
    scores = reward(prompts=["q"] * 6, completions=["dcba", "x", "y", "z", "w", "v"], word=["abcd"] * 6,
                    log_metric=lambda name, value: logged.update({name: value}))
    assert scores == [7.0, 0.25, 0.0, 0.0, 10.0, 10.0]
    assert (reward.scorer.judged, reward.scorer.no_number) == (6, 1)
    assert logged == {"rewards/judge/no_number": pytest.approx(1 / 6)}
    assert "<|im_start|>system\nRate from 0 to 10" in replies.prompts[0]  # developer is sent as system
    assert "Word: abcd\nAnswer: dcba<|im_end|>\n<|im_start|>assistant\n" in replies.prompts[0]


def test_a_judge_through_the_real_generation_path(tiny_checkpoint, tmp_path):
    """A random tiny model rarely writes a number: whatever it writes, the score is what its reply says."""
    from tunelab.rewards.score_model import first_number

    sent = []

    def recording(*arguments):
        sent.append(generate_replies(*arguments))
        return sent[-1]

    judge = spec(name="judge", model=str(tiny_checkpoint), input=JUDGE_INPUT, range=[2, 5],
                 sampling_params={"max_completions_tokens": 8})
    (reward,) = reward_funcs([judge], context=RewardContext(tmp_path), generate=recording)
    scores = reward(prompts=["q"] * 4, completions=["dcba", "abcd", "a", ""], word=["abcd"] * 4)
    (replies,) = sent
    numbers = [first_number(reply) for reply in replies]
    assert scores == [2.0 if number is None else min(max(number, 2.0), 5.0) for number in numbers]
    assert reward.scorer.judged == 4 and reward.scorer.no_number == numbers.count(None)
    assert all(0 < len(reply) for reply in replies)


def test_judge_sampling_is_seeded_and_leaves_the_training_random_stream_alone(tiny_checkpoint, tmp_path):
    import torch

    judge = spec(name="judge", model=str(tiny_checkpoint), input=JUDGE_INPUT,
                 sampling_params={"temperature": 1.5, "top_p": 0.9, "seed": 3, "max_completions_tokens": 6})
    sent = []
    (reward,) = reward_funcs([judge], context=RewardContext(tmp_path),
                             generate=lambda *arguments: sent.append(generate_replies(*arguments)) or sent[-1])
    torch.manual_seed(0)
    reward(prompts=["q"], completions=["dcba"], word=["abcd"])
    after_judging = torch.rand(1)
    reward(prompts=["q"], completions=["dcba"], word=["abcd"])
    torch.manual_seed(0)
    assert torch.equal(torch.rand(1), after_judging)
    assert sent[0] == sent[1]  # the same seed: the same sampled reply


def test_wrong_models_are_one_line_before_training(rm_run, rm_home, tiny_checkpoint, tmp_path):
    context = RewardContext(rm_home, CPU)

    def refused(grader, message, rows=({"word": "abc"},)):
        with pytest.raises(TunelabError, match=message) as error:
            check_rewards([grader], list(rows), context=context)
        assert "\n" not in str(error.value)

    refused(spec(model=str(tmp_path / "nowhere")),
            r"rewards\[0\] \(score_model 'rm'\): model '.*nowhere' is not a built-in model .* a tunelab run folder")
    (tmp_path / "empty").mkdir()
    refused(spec(model=str(tmp_path / "empty")), r"rewards\[0\] \(score_model 'rm'\): folder .* holds no config.json")
    unsaved = tmp_path / "unsaved"
    unsaved.mkdir()
    shutil.copy(rm_run.record_path, unsaved / "run.json")
    refused(spec(model=str(unsaved)), r"rewards\[0\] \(score_model 'rm'\): .*unsaved: the run has no saved model")
    refused(spec(model=str(tiny_checkpoint)), r"model .*tiny-llama is a judge \(it writes text\): give input")
    refused(spec(model=str(rm_run.root), input=[{"role": "user", "content": "{{ row.word }}"}]),
            r"input\[0\]: '\{\{ row.word \}\}' is not a variable")
    refused(spec(model=str(tiny_checkpoint), input=JUDGE_INPUT[1:]),
            r"\(score_model 'rm'\) reads item.word, and 1 of 2 row", rows=({"word": "abc"}, {"prompt": "x"}))
    with pytest.raises(ValueError, match="range"):
        spec(model="x", range=[1, 0])
    with pytest.raises(ValueError, match="reasoning_effort"):
        spec(model="x", sampling_params={"reasoning_effort": "low"})


def test_a_run_that_neither_scores_nor_writes_text_is_refused(tiny_checkpoint, tmp_path, home):
    from tests.unit.test_classification import classification_recipe, vowel_rows

    data = write_jsonl(tmp_path / "vowels.jsonl", vowel_rows(40))
    recipe = classification_recipe(tmp_path, tiny_checkpoint, data, task={"style": "head"}, train={"max_steps": 1})
    run = train_recipe(recipe, home)
    with pytest.raises(TunelabError, match=r"rewards\[0\] \(score_model 'rm'\): .* is a run of task classification, "
                                           r"whose model neither scores answers .* nor writes text"):
        check_rewards([spec(model=str(run.root))], [{}], context=RewardContext(home, CPU))


def test_a_relative_model_path_starts_from_base(rm_run, rm_home):
    (reward,) = reward_funcs([spec(model=rm_run.root.name)], base=rm_run.root.parent,
                             context=RewardContext(rm_home, CPU))
    assert reward.scorer.source.kind == "reward_model" and reward.scorer.source.run


def test_score_model_rewards_inside_trl_grpo(rm_run, rm_home, tiny_checkpoint, tmp_path):
    """GRPOTrainer calls the reward model run and a judge (real generation) with its completions; both are logged."""
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import GRPOConfig, GRPOTrainer

    rows = [{"prompt": [{"role": "user", "content": word}], "word": word} for word in ["abc", "bcd", "cde", "def"]]
    rewards = reward_funcs([spec(model=str(rm_run.root)),
                            spec(name="judge", model=str(tiny_checkpoint), input=JUDGE_INPUT,
                                 sampling_params={"max_completions_tokens": 4})],
                           context=RewardContext(rm_home, CPU))
    args = GRPOConfig(output_dir=str(tmp_path / "grpo"), use_cpu=True, max_steps=2, per_device_train_batch_size=4,
                      num_generations=4, max_completion_length=6, logging_steps=1, report_to=[], save_strategy="no",
                      disable_tqdm=True)
    trainer = GRPOTrainer(model=AutoModelForCausalLM.from_pretrained(str(tiny_checkpoint)), reward_funcs=rewards,
                          args=args, train_dataset=Dataset.from_list(rows),
                          processing_class=AutoTokenizer.from_pretrained(str(tiny_checkpoint)))
    trainer.train()
    logged = [entry for entry in trainer.state.log_history if "rewards/rm/mean" in entry]
    assert len(logged) == 2 and all(entry["rewards/rm/std"] > 0 for entry in logged)  # the head tells answers apart
    assert all(0 <= entry["rewards/judge/no_number"] <= 1 for entry in logged)
    assert rewards[1].scorer.judged == 2 * 4


def test_the_reward_model_shorthand_is_a_score_model_of_the_run(rm_run, rm_home, tiny_checkpoint):
    context = RewardContext(rm_home, CPU)
    shorthand = SPEC.validate_python({"type": "reward_model", "name": "rm", "run": str(rm_run.root)})
    (short,), (full,) = reward_funcs([shorthand], context=context), reward_funcs([spec(model=str(rm_run.root))],
                                                                                   context=context)
    assert short(prompts=["abc", "abc"], completions=["cba", "xyz"]) == \
        pytest.approx(full(prompts=["abc", "abc"], completions=["cba", "xyz"]))
    judge = SPEC.validate_python({"type": "reward_model", "name": "rm", "run": str(tiny_checkpoint)})
    with pytest.raises(TunelabError, match=r"rewards\[0\] \(reward_model 'rm'\): .* is not a run of task reward_"):
        check_rewards([judge], [{}], context=context)


def test_a_checkpoint_with_a_one_output_head_is_read_as_a_reward_model(tiny_checkpoint, tmp_path):
    """A ready-made reward model folder: the score is the head's output on the conversation."""
    from tunelab.evaluate.preference import chat_ids, rewards
    from tunelab.models.classifier import load_sequence_classifier
    from tunelab.models.tokenizer import load_tokenizer

    tokenizer = load_tokenizer(tiny_checkpoint)
    for labels in (["reward"], ["good", "bad"]):
        head = load_sequence_classifier(tiny_checkpoint, labels, tokenizer.pad_token_id, seed=0)
        head.save_pretrained(tmp_path / str(len(labels)))
        tokenizer.save_pretrained(tmp_path / str(len(labels)))
    (reward,) = reward_funcs([spec(model=str(tmp_path / "1"))], context=RewardContext(tmp_path))
    got = reward(prompts=["abc", "abc"], completions=["cba", "xyz"])
    head = load_sequence_classifier(tiny_checkpoint, ["reward"], tokenizer.pad_token_id, seed=0).eval()
    sequences = [chat_ids(tokenizer, [{"role": "user", "content": "abc"}, {"role": "assistant", "content": answer}],
                          False) for answer in ("cba", "xyz")]
    assert got == pytest.approx(rewards(head, sequences, tokenizer.pad_token_id, 2, None), abs=1e-5)
    with pytest.raises(TunelabError, match=r"is a classifier over 2 labels; a reward model has one output"):
        check_rewards([spec(model=str(tmp_path / "2"))], [{}], context=RewardContext(tmp_path))


@pytest.fixture
def served_judge(tiny_checkpoint, tmp_path, home):
    """`tunelab serve`'s app on a loopback port serving the tiny checkpoint, with an API key."""
    from tests.unit.test_serve import LiveServer
    from tunelab.serve.server import build_service
    from tunelab.serve.settings import ServeSettings

    settings = ServeSettings(serve_dir=tmp_path / "serve", api_keys=frozenset({"judge-key"}), max_tokens=64)
    server = LiveServer(build_service([], str(tiny_checkpoint), settings, home, say=lambda _: None))
    yield server, server.service.registry.base.id
    server.stop()


def test_a_judge_served_over_http_replies_as_the_same_model_in_process(served_judge, tiny_checkpoint, tmp_path,
                                                                       monkeypatch):
    """A score_model with base_url sends the rendered messages to the server's chat completions; greedy, the
    server's replies are the in-process judge's, so the scores are too."""
    server, model_id = served_judge
    monkeypatch.setenv("JUDGE_KEY", "judge-key")
    fields = {"name": "judge", "input": JUDGE_INPUT, "range": [0, 10], "sampling_params": {"max_completions_tokens": 8}}
    local_replies = []
    (local,) = reward_funcs([spec(model=str(tiny_checkpoint), **fields)], context=RewardContext(tmp_path),
                            generate=lambda *arguments: local_replies.append(generate_replies(*arguments))
                            or local_replies[-1])
    (remote,) = reward_funcs([spec(model=model_id, base_url=f"http://127.0.0.1:{server.port}/v1",
                                   api_key_env="JUDGE_KEY", **fields)], context=RewardContext(tmp_path))
    batch = {"prompts": ["q"] * 4, "completions": ["dcba", "abcd", "a", ""], "word": ["abcd", "abcd", "ab", "xy"]}
    served_replies = [remote.scorer.served.reply(remote.scorer.messages(p, c, {"word": w}), {"max_tokens": 8,
                                                                                            "temperature": 0.0})
                      for p, c, w in zip(batch["prompts"], batch["completions"], batch["word"])]
    assert remote(**batch) == local(**batch)
    assert served_replies == local_replies[0] and all(served_replies)
    assert remote.scorer.judged == 4 and remote.scorer.loaded is None  # nothing was loaded in this process


def test_a_served_judge_that_is_down_unknown_or_locked_is_one_line(served_judge, tmp_path, monkeypatch):
    from tunelab.serve.server import bind

    server, model_id = served_judge
    url = f"http://127.0.0.1:{server.port}/v1"

    def refused(message, **fields):
        with pytest.raises(TunelabError, match=message):
            check_rewards([spec(**{"input": JUDGE_INPUT, **fields})], [{"word": "abcd"}],
                          context=RewardContext(tmp_path))

    monkeypatch.setenv("JUDGE_KEY", "judge-key")
    refused(r"rewards\[0\] \(score_model 'rm'\): .* serves no model 'nope' \(it serves: " + model_id,
            model="nope", base_url=url, api_key_env="JUDGE_KEY")
    refused(r"rewards\[0\] \(score_model 'rm'\): GET .*/v1/models answered 401: ", model=model_id, base_url=url)
    refused(r"api_key_env names UNSET_JUDGE_KEY, which is not set", model=model_id, base_url=url,
            api_key_env="UNSET_JUDGE_KEY")
    closed = bind("127.0.0.1", 0)
    port = closed.getsockname()[1]
    closed.close()
    refused(rf"GET http://127.0.0.1:{port}/v1/models failed: ", model=model_id, base_url=f"http://127.0.0.1:{port}/v1")
    refused(r"is a judge \(it writes text\): give input", model=model_id, base_url=url, api_key_env="JUDGE_KEY",
            input=[])
