"""What one model produced on a run's test rows and probes: the input of scoring.

Kept apart from scoring so that a model is run once and scored against any other on the same rows (compare-methods
scores every method against one run of the base model). `fingerprint` says what the outputs depend on besides the
model (the test rows, the decoding, the probes); outputs are reused only where it matches.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from tunelab.files import read_json, write_json


@dataclass
class ModelOutputs:
    predictions: list[str]  # each row's answer: generated text, or the class given
    losses: list[tuple[float, int]]  # per row: summed loss on the reference answer and the tokens it covers
    answer_tokens: list[int]  # per row: tokens the answer took (generated text), 0 where none was generated
    speed: dict[str, float]  # tokens_per_second (generated), rows_per_second
    probe: dict[str, Any] = field(default_factory=dict)  # forgetting probe rows, per probe (forgetting.py)
    prompt_answers: list[str] = field(default_factory=list)  # answers to the general prompts (forgetting probe)
    # per row of a preference pair: log p(chosen | prompt) - log p(rejected | prompt); of a feedback row: its
    # signed mean log-probability per token (evaluate/preference.py); empty for other rows
    margins: list[float] = field(default_factory=list)
    # Answers judged by the recipe's rewards (evaluate/judged.py), per row; empty where the recipe has no rewards.
    judged_answers: list[str] = field(default_factory=list)  # the greedy answer to the row's prompt
    judged_tokens: list[int] = field(default_factory=list)  # its length in tokens
    rewards: list[float] = field(default_factory=list)  # its rewards, summed
    reward_parts: dict[str, list[float | None]] = field(default_factory=dict)  # each reward's, by name (None: n/a)
    # log p(sampled answer) - log p_reference(sampled answer); empty where there is no adapter to disable (the base
    # model, which is its own reference, or a fully fine-tuned model)
    log_ratios: list[float] = field(default_factory=list)
    fingerprint: str = ""

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, value: dict[str, Any]) -> "ModelOutputs":
        value = dict(value)
        value["losses"] = [tuple(item) for item in value["losses"]]
        return cls(**value)


def save_outputs(path: Path, outputs: ModelOutputs) -> None:
    write_json(path, outputs.to_json())


def load_outputs(path: Path) -> ModelOutputs | None:
    return ModelOutputs.from_json(read_json(path)) if path.is_file() else None
