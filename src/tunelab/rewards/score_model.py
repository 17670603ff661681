"""The models behind OpenAI's `score_model` grader, run locally: which model `model` names, and how it scores.

`model` names one of:
  a tunelab run of task reward_model   its scalar head scores the conversation (the row's prompt, then the answer),
                                       tokenized with the run's chat template as TRL's RewardTrainer read it in
                                       training (evaluate/preference.py); the raw score is the reward
  a run of a task that writes text,    a judge: the grader's `input` messages are rendered with the row and the
  a built-in model name or a           answer, the judge writes a reply (greedy unless sampling_params say
  checkpoint folder (a causal LM)      otherwise), and the first number in it, clamped to `range`, is the score
  a checkpoint folder with a one-      read like a reward model run (a ready-made reward model)
  output classification head
  an id a server lists, with base_url  a judge over OpenAI's chat completions API (served.py): a running
                                       `tunelab serve`, checked to answer and to serve the model when built

What `model` is gets decided when the reward is built (and by check_rewards, before training), without loading
weights: a wrong name, a run with no saved model, or a run that neither scores nor writes text is one line naming the
reward. Weights load once, on the first call, on the training's placement, in eval mode with no gradients.

Why not TRL's own model reward (GRPOTrainer takes an nn.Module): a tunelab run is an adapter over a base that must be
loaded by its method, a judge generates rather than reads a head, and the PPO engine (train/ppo.py) calls functions.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

from tunelab.errors import TunelabError
from tunelab.rewards.graders import SamplingParams, ScoreModelGrader
from tunelab.rewards.served import served_judge
from tunelab.rewards.template import render

if TYPE_CHECKING:
    from tunelab.device import Placement

JUDGE_MAX_TOKENS = 32  # enough for "Score: 7/10" and a short reason; OpenAI sets no local default
BATCH_SIZE = 16
NUMBER = re.compile(r"[-+]?(?:\d+\.\d*|\.\d+|\d+)(?:[eE][-+]?\d+)?")


@dataclass(frozen=True)
class ModelSource:
    """What a score_model's `model` names, found without loading weights."""

    kind: str  # reward_model | judge
    path: Path  # the run folder or the checkpoint folder
    run: bool  # a tunelab run (loaded by its task and method) rather than a plain checkpoint


def model_source(grader: ScoreModelGrader, where: str, base: Path | None, home: Path) -> ModelSource:
    """The model `grader.model` names (relative paths from `base`), or one line naming the reward."""
    from tunelab.models.catalog import BUILTIN_MODELS

    where = f"{where} (score_model '{grader.name}')"
    path = Path(grader.model).expanduser()
    path = path if path.is_absolute() or base is None else base / path
    if grader.model not in BUILTIN_MODELS and (path / "run.json").is_file():
        return run_source(path, where, home)
    if grader.model not in BUILTIN_MODELS and not path.is_dir():
        raise TunelabError(f"{where}: model '{grader.model}' is not a built-in model ({', '.join(BUILTIN_MODELS)}), "
                           "a tunelab run folder or a checkpoint folder")
    return judge_or_head(checkpoint_path(grader.model if grader.model in BUILTIN_MODELS else str(path), where, home),
                         where)


def run_source(path: Path, where: str, home: Path) -> ModelSource:
    from tunelab.run.models import open_run_models

    try:
        models = open_run_models(path, home, "cpu")
    except TunelabError as error:
        raise TunelabError(f"{where}: {error}") from None
    if models.record.task == "reward_model":
        return ModelSource("reward_model", path, run=True)
    if models.inference().writes_text:
        return ModelSource("judge", path, run=True)
    raise TunelabError(f"{where}: {path} is a run of task {models.record.task}, whose model neither scores answers "
                       "(task reward_model) nor writes text (a judge)")


def checkpoint_path(name: str, where: str, home: Path) -> Path:
    from tunelab.models.load import resolve_model

    try:
        return resolve_model(name, home).path
    except TunelabError as error:
        raise TunelabError(f"{where}: {str(error).removeprefix('model.name: ')}") from None


def judge_or_head(folder: Path, where: str) -> ModelSource:
    from tunelab.files import read_json
    from tunelab.models.classifier import is_causal_lm_checkpoint, is_sequence_classifier_checkpoint

    if is_causal_lm_checkpoint(folder):
        return ModelSource("judge", folder, run=False)
    if is_sequence_classifier_checkpoint(folder):
        labels = read_json(folder / "config.json").get("id2label") or {}
        if len(labels) == 1:
            return ModelSource("reward_model", folder, run=False)
        raise TunelabError(f"{where}: {folder} is a classifier over {len(labels)} labels; a reward model has "
                           "one output")
    raise TunelabError(f"{where}: {folder} is neither a causal LM (a judge) nor a one-output classifier (a reward "
                       "model)")


@dataclass
class Loaded:
    model: Any  # placed, in eval mode, no gradients
    tokenizer: Any
    max_length: int | None  # a reward model run's data.max_length: its conversations are cut as in its evaluation


def load(source: ModelSource, home: Path, placement: "Placement") -> Loaded:
    from tunelab.models.tokenizer import load_tokenizer

    if source.run:
        from tunelab.run.models import open_run_models

        models = replace(open_run_models(source.path, home, placement.device), placement=placement)
        model, tokenizer, max_length = models.inference().load_tuned(), models.tokenizer(), \
            models.recipe.data.max_length
    else:
        from tunelab.models.classifier import load_saved_classifier
        from tunelab.models.load import load_causal_lm

        loader = load_causal_lm if source.kind == "judge" else load_saved_classifier
        model, tokenizer, max_length = placement.place(loader(source.path)), load_tokenizer(source.path), None
    model.eval().requires_grad_(False)
    return Loaded(model, tokenizer, max_length)


def own_random_state(placement: "Placement") -> Any:
    """A fork of torch's random state, restored on leaving: what a reward draws (a judge's sampling, the seeded head
    of a reward model loaded mid-training) leaves the training's random stream where it was."""
    import torch

    return torch.random.fork_rng(devices=[torch.cuda.current_device()] if placement.device == "cuda" else [])


# (model, tokenizer, prompts as token ids, sampling, placement) -> the judge's reply to each prompt
Generate = Callable[[Any, Any, list[list[int]], SamplingParams, "Placement"], list[str]]


def generate_replies(model: Any, tokenizer: Any, prompts: list[list[int]], sampling: SamplingParams,
                     placement: "Placement") -> list[str]:
    """The judge's replies, greedy unless a temperature is given, sampled on its own random state (a resumed run
    draws what the whole run drew)."""
    import torch

    from tunelab.evaluate.answers import model_stops
    from tunelab.evaluate.generation import generate_texts

    with own_random_state(placement):
        if sampling.seed is not None:
            torch.manual_seed(sampling.seed)
        return generate_texts(model, tokenizer, prompts, sampling.max_completions_tokens or JUDGE_MAX_TOKENS,
                              BATCH_SIZE, sorted(model_stops(model, tokenizer)), sampling.temperature or 0.0,
                              placement, top_p=sampling.top_p).texts


def first_number(reply: str) -> float | None:
    match = NUMBER.search(reply)
    return float(match.group(0)) if match else None


class ScoreModel:
    """One score_model reward: the model is found when built, loaded on the first call, reused after."""

    def __init__(self, grader: ScoreModelGrader, where: str, base: Path | None, home: Path,
                 placement: "Placement", generate: Generate = generate_replies):
        self.grader, self.where, self.home, self.placement, self.generate = grader, where, home, placement, generate
        self.served = None if grader.base_url is None else served_judge(
            grader.base_url, grader.model, grader.api_key_env, f"{where} (score_model '{grader.name}')")
        self.source = None if self.served else model_source(grader, where, base, home)
        if self.judges and not grader.input:
            raise TunelabError(f"{where} (score_model '{grader.name}'): model {grader.model} is a judge (it writes "
                               "text): give input, the messages that ask it for a score")
        if self.served:
            self.served.check()
        self.loaded: Loaded | None = None
        self.judged = 0  # the judge's replies so far
        self.no_number = 0  # ... of which held no number (scored range[0]: a judge may ramble, it is not an error)

    @property
    def judges(self) -> bool:
        """The model writes a reply that holds the score (rather than a reward model's head giving it)."""
        return self.served is not None or self.source.kind == "judge"

    def __call__(self, prompts: list[Any], completions: list[Any], rows: list[dict[str, Any]]) -> list[float]:
        conversations = [self.messages(prompts[i], completions[i], rows[i]) for i in range(len(rows))]
        if self.served:
            return self.scores(self.served.replies(conversations, served_sampling(self.grader.sampling_params)))
        if self.loaded is None:
            with own_random_state(self.placement):
                self.loaded = load(self.source, self.home, self.placement)
        if self.source.kind == "reward_model":
            return self.head_scores(conversations)
        return self.judge_scores(conversations)

    def messages(self, prompt: Any, completion: Any, row: dict[str, Any]) -> list[dict[str, str]]:
        from tunelab.rewards.build import answer_text, row_where

        if not self.grader.input:  # the reward model's default: the conversation as it was trained on
            return as_messages(prompt, "user") + as_messages(completion, "assistant")
        sample = {"output_text": answer_text(completion)}
        where = f"{self.where}, {row_where(row, prompt)}"
        # Chat templates know system, user and assistant; OpenAI's developer role is its newer name for system.
        return [{"role": "system" if message.role == "developer" else message.role,
                 "content": render(message.text(), row, sample, where)} for message in self.grader.input]

    def head_scores(self, conversations: list[list[dict[str, str]]]) -> list[float]:
        from tunelab.evaluate.preference import chat_ids, rewards

        model, tokenizer, max_length = self.loaded.model, self.loaded.tokenizer, self.loaded.max_length
        sequences = [chat_ids(tokenizer, messages, add_generation_prompt=False)[:max_length]
                     for messages in conversations]
        return rewards(model, sequences, tokenizer.pad_token_id, BATCH_SIZE, self.placement)

    def judge_scores(self, conversations: list[list[dict[str, str]]]) -> list[float]:
        from tunelab.data.templates import encode_prompt

        tokenizer = self.loaded.tokenizer
        prompts = [encode_prompt(tokenizer, messages) for messages in conversations]
        replies = self.generate(self.loaded.model, tokenizer, prompts, self.grader.sampling_params or SamplingParams(),
                                self.placement)
        return self.scores(replies)

    def scores(self, replies: list[str]) -> list[float]:
        """A judge's replies as scores: the first number, clamped to range; range[0] (and counted) where none."""
        low, high = self.grader.range
        numbers = [first_number(reply) for reply in replies]
        self.judged += len(numbers)
        self.no_number += numbers.count(None)
        return [low if number is None else min(max(number, low), high) for number in numbers]


def served_sampling(params: SamplingParams | None) -> dict[str, Any]:
    """The grader's sampling_params as chat completions fields: greedy and JUDGE_MAX_TOKENS unless given, as the
    in-process judge."""
    params = params or SamplingParams()
    fields = {"max_tokens": params.max_completions_tokens or JUDGE_MAX_TOKENS, "temperature": params.temperature or 0.0,
              "seed": params.seed, "top_p": params.top_p}
    return {key: value for key, value in fields.items() if value is not None}


def as_messages(value: Any, role: str) -> list[dict[str, str]]:
    """A prompt or completion as TRL passes it: a list of messages as it is, plain text as one message of `role`
    (how the data doctor turns a text prompt into a conversation)."""
    if isinstance(value, list) and all(isinstance(message, dict) for message in value):
        return [{"role": message["role"], "content": str(message.get("content", ""))} for message in value]
    return [{"role": role, "content": str(value)}]
