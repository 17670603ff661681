"""What a recipe may say. Every field is documented here; an unknown key is an error (see load.py)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from tunelab.methods.lora import LoraConfig
from tunelab.methods.registry import MethodSection

DEFAULT_METHOD = "lora"


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ModelSection(Section):
    name: str = Field(
        "smollm2-135m-instruct",
        description="A built-in model name (`tunelab models list`), a local Hugging Face checkpoint folder, "
        "or a .gguf file.",
    )
    chat_template: str | None = Field(
        None,
        description="None: the tokenizer's own template; 'chatml'; or a path to a Jinja template file. "
        "The same template is used for training and inference.",
    )


class GenerateSection(Section):
    task: Literal["notes-to-json"] = Field(
        "notes-to-json", description="A data set tunelab generates itself (used by the quick start)."
    )
    rows: int = Field(400, ge=10)
    seed: int = 0


class SplitSection(Section):
    validation: float = Field(0.1, ge=0, lt=1, description="Fraction of rows held out for validation loss.")
    test: float = Field(0.1, ge=0, lt=1, description="Fraction held out for the final base-vs-tuned evaluation.")
    seed: int = Field(42, description="Seed of the split shuffle; the same file and seed give the same split.")


class DataSection(Section):
    train: str | None = Field(None, description="Training file: .jsonl, .json, .csv or .parquet.")
    generate: GenerateSection | None = Field(None, description="Instead of `train`: data tunelab generates.")
    validation: str | None = Field(None, description="Validation file; if absent, split from `train`.")
    test: str | None = Field(None, description="Test file; if absent, split from `train`.")
    split: SplitSection = Field(default_factory=SplitSection)
    file_type: Literal["auto", "jsonl", "json", "csv", "tsv", "parquet"] = Field(
        "auto", description="How to read the files; auto goes by the file extension."
    )
    columns: list[str] | None = Field(
        None, description="Column names of a CSV/TSV file without a header row, e.g. [label, text]."
    )
    format: Literal["auto", "messages", "sharegpt", "prompt_completion", "alpaca", "text", "label", "preference"] = (
        Field("auto", description="Row format; auto picks it from the first row's fields.")
    )
    fields: dict[str, str | list[str]] = Field(
        default_factory=dict,
        description="Map of tunelab field name to the file's column, e.g. {prompt: question}; a list takes the "
        "first non-empty column, e.g. {prompt: [rewritten_intent, intent]}.",
    )
    system_prompt: str | None = Field(None, description="System message added to rows that carry none.")
    max_length: int = Field(1024, ge=8, description="Longest tokenized row (prompt + answer).")
    overlong: Literal["drop", "truncate"] = Field(
        "drop", description="What to do with rows longer than max_length; either way they are counted."
    )

    @model_validator(mode="after")
    def one_source(self) -> "DataSection":
        if (self.train is None) == (self.generate is None):
            raise ValueError("give exactly one of data.train (a file) or data.generate")
        if self.split.validation + self.split.test >= 1:
            raise ValueError("data.split.validation + data.split.test must leave rows for training")
        return self


class TrainSection(Section):
    epochs: float = Field(3, gt=0, description="Passes over the training split (ignored when max_steps is set).")
    max_steps: int | None = Field(None, ge=1, description="Optimizer steps; overrides epochs.")
    lr: float = Field(2e-4, gt=0, description="Peak learning rate.")
    scheduler: Literal["linear", "cosine", "constant"] = "cosine"
    warmup: float = Field(0.03, ge=0, description="Warm-up: a fraction of all steps if < 1, else a step count.")
    batch_size: int = Field(8, ge=1, description="Rows per device per step.")
    grad_accum: int = Field(1, ge=1, description="Batches accumulated per optimizer step.")
    weight_decay: float = Field(0.0, ge=0)
    max_grad_norm: float = Field(1.0, gt=0)
    seed: int = 42
    precision: Literal["auto", "bf16", "fp16", "fp32"] = Field(
        "auto", description="auto: bf16 where the device supports it, else fp32 (fp16 never on CPU)."
    )
    padding_free: bool = Field(
        True,
        description="Concatenate a batch's rows into one sequence with per-row positions (no pad tokens); "
        "exact for attention implementations that honour packed position ids.",
    )
    gradient_checkpointing: bool = False
    early_stopping_patience: int | None = Field(
        None, ge=1, description="Stop after this many validations without a lower validation loss."
    )
    eval_every: int | None = Field(None, ge=1, description="Validation loss every N steps; None: once per epoch.")
    save_every: int | None = Field(None, ge=1, description="Checkpoint every N steps; None: once per epoch.")
    save_total_limit: int = Field(2, ge=1, description="Checkpoints kept on disk.")
    log_every: int = Field(5, ge=1)


class EvalSection(Section):
    after_train: bool = Field(True, description="Run base-vs-tuned evaluation at the end of `tunelab train`.")
    batch_size: int = Field(16, ge=1, description="Rows generated together.")
    max_new_tokens: int = Field(256, ge=1)
    max_rows: int | None = Field(None, ge=1, description="Evaluate on at most this many test rows.")
    worst_examples: int = Field(5, ge=0, description="Examples with the highest tuned loss kept in eval_worst.jsonl.")


class OutputSection(Section):
    dir: str | None = Field(None, description="Run folder; default runs/<recipe file name>.")
    merge: bool = Field(
        True, description="Also save a merged model where the method can merge; saying `merge: true` for a method "
        "that cannot merge (prefix, prompt, adapter) is an error."
    )


class ClassificationSection(Section):
    style: Literal["auto", "head", "generate"] = Field(
        "auto", description="head: a classification head on the model's last hidden state (encoders such as "
        "minilm-l6-v2, or a causal LM); generate: a causal LM fine-tuned to answer the label, decoded over the label "
        "set only; auto: generate for a causal LM checkpoint, head otherwise."
    )
    labels: list[str] | None = Field(
        None, description="The classes, in the order of reports and confusion matrices; default: the labels found "
        "in the training split, sorted. A held-out row with another label is an error."
    )
    prompt: str = Field(
        "Classify the text into one of these classes: {labels}. Answer with the class only.\n\nText: {text}",
        description="style generate: the user message built from each row ({labels}: the classes, comma-separated; "
        "{text}: the row's text). The model answers with the label.",
    )

    @model_validator(mode="after")
    def prompt_has_text(self) -> "ClassificationSection":
        if "{text}" not in self.prompt:
            raise ValueError("classification.prompt must contain {text}, where each row's text goes")
        if self.labels is not None and len(set(self.labels)) < 2:
            raise ValueError("classification.labels needs at least two different classes")
        return self


class Recipe(Section):
    """A whole run. Paths in it are relative to the directory tunelab runs in."""

    task: Literal["sft", "classification"] = Field(
        "sft", description="sft: learn to write the answers of conversation rows; classification: learn the `label` "
        "of label rows (text, label), evaluated with accuracy, per-class and macro precision/recall/F1, MCC."
    )
    model: ModelSection = Field(default_factory=ModelSection)
    data: DataSection
    method: MethodSection = Field(default_factory=LoraConfig)
    train: TrainSection = Field(default_factory=TrainSection)
    eval: EvalSection = Field(default_factory=EvalSection)
    output: OutputSection = Field(default_factory=OutputSection)
    classification: ClassificationSection = Field(
        default_factory=ClassificationSection, description="Options of task: classification."
    )

    @model_validator(mode="before")
    @classmethod
    def default_method_name(cls, values: Any) -> Any:
        """A `method` section that names no method configures the default one (LoRA)."""
        if isinstance(values, dict) and isinstance(values.get("method"), dict) and "name" not in values["method"]:
            values = {**values, "method": {"name": DEFAULT_METHOD, **values["method"]}}
        return values
