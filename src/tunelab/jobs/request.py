"""What `POST /v1/fine_tuning/jobs` takes: OpenAI's create-job fields, in its order, and tunelab's extras.

OpenAI's fields: model, training_file, validation_file, suffix, seed, hyperparameters (deprecated by OpenAI in
favour of method.<type>.hyperparameters; both are read, the method's win), method (supervised, dpo with beta,
reinforcement with a grader), metadata, integrations (accepted and kept; tunelab runs none of them).

tunelab's extras go where OpenAI has nothing: a `tunelab` object in the body (`extra_body={"tunelab": {...}}` with
the openai client), or the same as a JSON string under metadata["tunelab"] for clients that cannot add fields. It
holds recipe sections over the job's recipe: `method` (the tuning method: lora, qlora, dora, ...), `train`, `eval`,
`objective`, `task` options, and the data options that are not paths (`split`, `max_length`, `system_prompt`, ...).
A recipe section the API must not set (`output`, `model`, data paths, `rewards`) is refused: a job's files are file
ids and its run lives under the serve folder.
"""

from __future__ import annotations

import json
from typing import Annotated, Any, Literal, Union

from pydantic import BaseModel, ConfigDict, Field, field_validator

from tunelab.rewards.graders import (
    MultiGrader,
    PythonGrader,
    ScoreModelGrader,
    StringCheckGrader,
    TextSimilarityGrader,
)

Auto = Literal["auto"]
Grader = Annotated[Union[StringCheckGrader, TextSimilarityGrader, PythonGrader,  # noqa: UP007
                         ScoreModelGrader, MultiGrader], Field(discriminator="type")]
EXTRA_SECTIONS = {"method", "train", "eval", "objective", "task", "data"}
DATA_PATHS = {"train", "validation", "test", "generate"}


class Body(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Hyperparameters(Body):
    """OpenAI's ranges: epochs 1-50, batch 1-256, learning-rate multiplier above 0 up to 10."""

    batch_size: Auto | Annotated[int, Field(ge=1, le=256)] | None = None
    learning_rate_multiplier: Auto | Annotated[float, Field(gt=0, le=10)] | None = None
    n_epochs: Auto | Annotated[int, Field(ge=1, le=50)] | None = None


class DpoHyperparameters(Hyperparameters):
    beta: Auto | Annotated[float, Field(gt=0, le=2)] | None = None


class ReinforcementHyperparameters(Hyperparameters):
    # OpenAI's knobs for its own RL service; kept so its requests validate. compute_multiplier scales the answers
    # sampled per prompt (GRPO's num_generations); the others have no local meaning and are ignored.
    compute_multiplier: Auto | Annotated[float, Field(gt=0, le=10)] | None = None
    eval_interval: Auto | Annotated[int, Field(ge=1)] | None = None
    eval_samples: Auto | Annotated[int, Field(ge=1)] | None = None
    reasoning_effort: Literal["default", "low", "medium", "high"] | None = None


class SupervisedMethod(Body):
    hyperparameters: Hyperparameters | None = None


class DpoMethod(Body):
    hyperparameters: DpoHyperparameters | None = None


class ReinforcementMethod(Body):
    grader: Grader
    hyperparameters: ReinforcementHyperparameters | None = None


class Method(Body):
    type: Literal["supervised", "dpo", "reinforcement"]
    supervised: SupervisedMethod | None = None
    dpo: DpoMethod | None = None
    reinforcement: ReinforcementMethod | None = None


class CreateJob(Body):
    model: str = Field(..., min_length=1)
    training_file: str = Field(..., min_length=1)
    hyperparameters: Hyperparameters | None = None
    integrations: list[dict[str, Any]] | None = None
    metadata: dict[str, str] | None = None
    method: Method | None = None
    seed: int | None = Field(None, ge=0, le=2_147_483_647)
    suffix: str | None = Field(None, min_length=1, max_length=64, pattern=r"^[A-Za-z0-9._-]+$")
    validation_file: str | None = None
    tunelab: dict[str, Any] | None = None

    @field_validator("metadata")
    @classmethod
    def openai_metadata(cls, metadata: dict[str, str] | None) -> dict[str, str] | None:
        if metadata is None:
            return None
        if len(metadata) > 16:
            raise ValueError("at most 16 keys")
        for key, value in metadata.items():
            if len(key) > 64 or (len(value) > 512 and key != "tunelab"):
                raise ValueError(f"'{key[:64]}': keys are at most 64 characters, values at most 512")
        return metadata

    def method_type(self) -> str:
        return self.method.type if self.method else "supervised"

    def method_hyperparameters(self) -> Hyperparameters:
        """The method's hyperparameters over the top-level ones (OpenAI's order of precedence)."""
        top = self.hyperparameters or Hyperparameters()
        inner = getattr(self.method, self.method_type(), None) if self.method else None
        given = inner.hyperparameters if inner is not None and inner.hyperparameters is not None else None
        kind = {"dpo": DpoHyperparameters, "reinforcement": ReinforcementHyperparameters}.get(self.method_type(),
                                                                                             Hyperparameters)
        merged = {**top.model_dump(exclude_none=True), **(given.model_dump(exclude_none=True) if given else {})}
        return kind(**merged)

    def extras(self) -> dict[str, Any]:
        """tunelab's recipe sections from the body's `tunelab` or metadata["tunelab"] (JSON); ValueError naming
        what is wrong."""
        extras = self.tunelab
        if extras is None and self.metadata and "tunelab" in self.metadata:
            try:
                extras = json.loads(self.metadata["tunelab"])
            except ValueError as error:
                raise ValueError(f"metadata.tunelab is not JSON: {error}") from None
        extras = extras or {}
        if not isinstance(extras, dict):
            raise ValueError("tunelab: an object of recipe sections")
        unknown = sorted(set(extras) - EXTRA_SECTIONS)
        if unknown:
            raise ValueError(f"tunelab.{unknown[0]}: a job may set only {', '.join(sorted(EXTRA_SECTIONS))} "
                             "(its model, files and run folder come from the job)")
        paths = sorted(DATA_PATHS & set(extras.get("data") or {}))
        if paths:
            raise ValueError(f"tunelab.data.{paths[0]}: a job's data are its training_file and validation_file ids")
        return extras


class FeedbackFile(Body):
    """POST /v1/fine_tuning/feedback_files (tunelab's): a served model's feedback as a fine-tune file, through the
    data doctor as `tunelab feedback export` writes it; with `job`, also a job trained on it at once."""

    model: str = Field(..., min_length=1, description="The served model whose answers were judged.")
    format: Literal["sft", "dpo", "kto"] = Field("dpo", description="sft: corrections as chats; dpo: correction "
                                                 "chosen over the original; kto: thumbs as labelled answers.")
    job: dict[str, Any] | None = Field(None, description="A job's create fields but training_file (model, method, "
                                                         "suffix, hyperparameters, tunelab, ...).")
