"""What a recipe may say. Every field is documented here; an unknown key is an error (see load.py)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from tunelab.errors import TunelabError
from tunelab.methods.lora import LoraConfig
from tunelab.methods.registry import MethodSection
from tunelab.metrics.registry import resolve_name
from tunelab.rewards.build import RewardSpec
from tunelab.risks.bias import BiasOptions
from tunelab.risks.factual import FactualOptions
from tunelab.risks.privacy import PrivacyOptions
from tunelab.risks.robustness import RobustnessOptions
from tunelab.tasks.registry import DEFAULT_TASK, TaskSection
from tunelab.tasks.sft import SftConfig

DEFAULT_METHOD = "lora"


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ModelSection(Section):
    name: str = Field(
        "smollm2-135m-instruct",
        description="A built-in model name (`tunelab models list`), a local Hugging Face checkpoint folder, "
        "or a .gguf file. With from_run: the earlier run's base model (taken from it when left out).",
    )
    from_run: str | None = Field(
        None,
        description="Start from an earlier run's tuned model (a run folder, e.g. runs/sft-x): its merged model (or "
        "full fine-tune) is this run's base, which the method wraps, the evaluation compares with and serve and "
        "export load; an adapter saved without a merged model is merged once into the model cache.",
    )
    chat_template: str | None = Field(
        None,
        description="None: the tokenizer's own template; 'chatml'; or a path to a Jinja template file. "
        "The same template is used for training and inference.",
    )


class GenerateSection(Section):
    task: Literal["notes-to-json", "notes-to-json-pairs", "notes-to-json-feedback", "notes-to-json-prompts"] = Field(
        "notes-to-json", description="A data set tunelab generates itself: order notes to JSON (the quick start's), "
        "or the same notes as preference pairs, as feedback rows (KTO) or as prompts with their reference JSON "
        "(online RL); see data/synthetic.py.")
    rows: int = Field(400, ge=10)
    seed: int = 0


class SplitSection(Section):
    validation: float = Field(0.1, ge=0, lt=1, description="Fraction of rows held out for validation loss.")
    test: float = Field(0.1, ge=0, lt=1, description="Fraction held out for the final base-vs-tuned evaluation.")
    seed: int = Field(42, description="Seed of the split shuffle; the same file and seed give the same split.")


class CleanSection(Section):
    normalize_unicode: bool = Field(True, description="Unicode NFC normalisation of every text.")
    strip_whitespace: bool = Field(True, description="Trim leading and trailing whitespace of every text.")
    control_chars: bool = Field(
        True, description="Remove control characters (all but newline and tab); CRLF line ends become LF."
    )
    drop_empty_turns: bool = Field(
        True, description="Remove messages left empty; a row left without an answer (or text) is rejected."
    )
    min_tokens: int = Field(1, ge=0, description="Rows with fewer tokens than this are rejected.")


class PiiSection(Section):
    scrub: bool = Field(
        False, description="Replace e-mails, phone numbers, credit-card and IP-like strings with placeholders "
        "such as <EMAIL>. Off: they are only counted in the report."
    )
    kinds: list[Literal["email", "phone", "credit_card", "ip"]] = Field(
        default_factory=lambda: ["email", "phone", "credit_card", "ip"], description="What is counted and scrubbed."
    )


class DedupSection(Section):
    exact: bool = Field(True, description="Reject rows whose normalised content (case, spacing) equals an earlier row.")
    near: bool = Field(True, description="Reject near-duplicates (MinHash LSH over character shingles).")
    threshold: float = Field(
        0.85, gt=0, le=1, description="Jaccard similarity of character shingles at or above which a row is a "
        "near-duplicate (checked exactly on the LSH candidates)."
    )
    shingle: int = Field(5, ge=1, description="Characters per shingle.")
    num_perm: int = Field(128, ge=16, description="MinHash permutations (more: fewer missed near-duplicates).")


class ContaminationSection(Section):
    enabled: bool = Field(True, description="Check every validation/test row for n-gram overlap with train.")
    ngram: int = Field(8, ge=1, description="Words per n-gram (a shorter row counts as one n-gram).")
    threshold: float = Field(
        0.7, gt=0, le=1, description="Share of an evaluation row's n-grams also found in train from which it is a hit "
        "(70% of 8-grams: the PaLM contamination study's rule)."
    )
    common_share: float = Field(
        0.05, ge=0, le=1, description="N-grams found in more than this share of train rows (and in more than 3) "
        "are boilerplate such as a shared instruction and are not counted."
    )
    action: Literal["remove", "report"] = Field(
        "remove", description="remove: hits leave the evaluation split (listed in the report and rejected.jsonl); "
        "report: they stay, listed."
    )


class LintSection(Section):
    enabled: bool = Field(True, description="Check the chat template on a few rows before any training.")
    rows: int = Field(5, ge=1, description="Rows rendered and checked.")


class AugmentSection(Section):
    prompt_templates: list[str] = Field(
        default_factory=list, description="Paraphrases of the user prompt, each with a {prompt} placeholder; every "
        "train conversation gets one copy per template (the answer is unchanged)."
    )
    noise_copies: int = Field(0, ge=0, description="Noisy copies per train row of the input text (prompt or "
                              "label-row text); answers and labels are never changed.")
    noise_rate: float = Field(0.05, ge=0, le=0.5, description="Share of words dropped or with two letters swapped.")
    seed: int = Field(0, description="Seed of the noise.")


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
    format: Literal["auto", "messages", "sharegpt", "prompt_completion", "alpaca", "text", "label", "preference",
                    "openai_preference", "feedback", "prompt"] = (
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
    bad_rows: Literal["stop", "quarantine"] = Field(
        "stop", description="A row that cannot be read or parsed: stop with its file:line, or set it aside in "
        "rejected.jsonl (with the reason) and go on. `tunelab data check` always lists every one."
    )
    max_row_bytes: int = Field(10_000_000, ge=1_000, description="A longer line or row is a bad row.")
    num_proc: int | None = Field(
        None, ge=1, description="Processes for cleaning and tokenisation; None: one per CPU core for large sets."
    )
    clean: CleanSection = Field(default_factory=CleanSection)
    pii: PiiSection = Field(default_factory=PiiSection)
    dedup: DedupSection = Field(default_factory=DedupSection)
    contamination: ContaminationSection = Field(default_factory=ContaminationSection)
    lint: LintSection = Field(default_factory=LintSection)
    augment: AugmentSection = Field(default_factory=AugmentSection)
    canaries: int = Field(
        0, ge=0, le=1000, description="Random secrets (e.g. 'My account PIN is 493817') inserted into the training "
        "split, never validation/test, to measure whether the tuned model leaks them (the privacy risk probe's "
        "exposure); 0: none. Listed in the data report and the run's data/canaries.jsonl (data/canaries.py).")
    canary_repeats: int = Field(
        1, ge=1, le=1000, description="How many times each canary is inserted (a secret seen more often is "
        "memorised more).")

    @model_validator(mode="after")
    def one_source(self) -> "DataSection":
        if (self.train is None) == (self.generate is None):
            raise ValueError("give exactly one of data.train (a file) or data.generate")
        if self.split.validation + self.split.test >= 1:
            raise ValueError("data.split.validation + data.split.test must leave rows for training")
        return self


class DeepSpeedSection(Section):
    """DeepSpeed ZeRO for `train.distributed: deepspeed` (written to <run>/launch/deepspeed.json)."""

    stage: Literal[1, 2, 3] = Field(2, description="ZeRO stage: 1 shards optimizer state, 2 also gradients, "
                                    "3 also the weights.")
    offload_optimizer: Literal["none", "cpu"] = Field("none", description="Keep optimizer state in CPU memory.")
    offload_params: Literal["none", "cpu"] = Field("none", description="Keep the weights in CPU memory (stage 3).")
    overlap_comm: bool = Field(True, description="Overlap gradient reduction with the backward pass.")

    @model_validator(mode="after")
    def params_offload_needs_stage_3(self) -> "DeepSpeedSection":
        if self.offload_params != "none" and self.stage != 3:
            raise ValueError("train.deepspeed.offload_params needs stage: 3 (only ZeRO-3 shards the weights)")
        return self


class FsdpSection(Section):
    """PyTorch FSDP2 (accelerate's fsdp_version 2) for `train.distributed: fsdp`."""

    sharding: Literal["full_shard", "shard_grad_op", "hybrid_shard", "no_shard"] = Field(
        "full_shard", description="What is sharded: full_shard weights, gradients and optimizer state; "
        "shard_grad_op gradients and optimizer state; hybrid_shard full_shard within a node, replicated across "
        "nodes; no_shard nothing (DDP-like).")
    cpu_offload: bool = Field(False, description="Keep sharded weights (and their optimizer state) in CPU memory.")
    activation_checkpointing: bool = Field(
        False, description="Recompute each decoder layer's activations in the backward (FSDP's own checkpointing).")


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
    pad_to_multiple_of: int | None = Field(
        64, ge=1, description="Round each padding-free training batch's length up to a multiple of this with a "
        "row of pad tokens that has no labels: fewer distinct matmul shapes, which on CPU keeps oneDNN's per-shape "
        "cache (memory that grows for hundreds of steps) and its set-up costs bounded (train/batches.py). "
        "null: batches as long as their rows.")
    gradient_checkpointing: bool = False
    # Speed levers (bench/train_throughput.py measures each); each leaves the optimization as it is (in bf16,
    # bf16_frozen changes rounding).
    label_loss: bool = Field(
        True, description="Language-model loss from logits at label positions only, its cross-entropy in chunks "
        "(padding-free batches; train/label_loss.py).")
    row_attention: bool = Field(
        True, description="Padding-free batches attend row by row instead of through a block-diagonal mask "
        "(train/row_attention.py).")
    bf16_frozen: bool = Field(
        True, description="In bf16, hold the frozen base (linear layers, embedding, norms) in bf16 instead of casting "
        "it at every matmul (methods that allow it; train/frozen_weights.py).")
    fused_optimizer: bool = Field(True, description="PyTorch's fused AdamW (one kernel for all parameters).")
    compile_layers: bool = Field(
        False, description="torch.compile each decoder layer (dynamic shapes). Measured on a 2-core CPU: +15% "
        "tokens/s after about a minute of compiling, so it pays in runs longer than ~6 minutes; off by default.")
    early_stopping_patience: int | None = Field(
        None, ge=1, description="Stop after this many validations without a lower validation loss."
    )
    eval_every: int | None = Field(None, ge=1, description="Validation loss every N steps; None: once per epoch.")
    save_every: int | None = Field(None, ge=1, description="Checkpoint every N steps; None: once per epoch.")
    save_total_limit: int = Field(2, ge=1, description="Checkpoints kept on disk.")
    log_every: int = Field(5, ge=1)
    report_to: list[Literal["tensorboard", "wandb", "mlflow"]] = Field(
        default_factory=lambda: ["tensorboard"],
        description="Where training logs go besides train_log.jsonl: TensorBoard event files in <run>/tensorboard "
        "(default); wandb and mlflow when installed (they read their usual WANDB_*/MLFLOW_* settings). [] for none.",
    )
    distributed: Literal["ddp", "fsdp", "deepspeed"] = Field(
        "ddp", description="How several processes (`tunelab train --nproc N`) share the work: ddp replicates the "
        "model, fsdp (FSDP2) and deepspeed (ZeRO) shard it. One process ignores it.")
    deepspeed: DeepSpeedSection = Field(default_factory=DeepSpeedSection)
    fsdp: FsdpSection = Field(default_factory=FsdpSection)


class ForgettingSection(Section):
    enabled: bool = Field(
        True, description="Measure general ability on base and tuned: perplexity on the general text tunelab ships "
        "(340 sentences written for it) and on the optional `text` and `prompts` below."
    )
    text: str | None = Field(
        None, description="Your own general text as well: a .txt file (one passage a line) or a data file with a "
        "`text` column."
    )
    prompts: str | None = Field(
        None, description="General prompts ('builtin': 30 that tunelab ships, or a .txt file, one a line): both "
        "models answer them, and the tuned model's perplexity on the base model's answers is compared."
    )
    max_new_tokens: int = Field(64, ge=1, description="Longest answer to a general prompt.")
    threshold: float = Field(
        0.05, ge=0, description="Relative perplexity increase (tuned / base - 1) above which forgetting is flagged."
    )


class RisksSection(Section):
    """Risk probes measured on base and tuned in every evaluation (risks/registry.py), gated by the objective's
    max_robustness_drop, max_bias_change, max_memorization and max_factual_drift."""

    enabled: bool = Field(True, description="Measure the risk probes (each can also be turned off on its own). A "
                          "figure is flagged above its probe's threshold (or the objective's bound) when its interval "
                          "lies above zero.")
    robustness: RobustnessOptions = Field(default_factory=RobustnessOptions)
    bias: BiasOptions = Field(default_factory=BiasOptions)
    privacy: PrivacyOptions = Field(default_factory=PrivacyOptions)
    factual: FactualOptions = Field(default_factory=FactualOptions)


class EvalSection(Section):
    after_train: bool = Field(True, description="Run base-vs-tuned evaluation at the end of `tunelab train`.")
    batch_size: int = Field(16, ge=1, description="Rows generated together.")
    max_new_tokens: int = Field(256, ge=1)
    max_rows: int | None = Field(None, ge=1, description="Evaluate on at most this many test rows.")
    worst_examples: int = Field(5, ge=0, description="Examples with the highest tuned loss kept in eval_worst.jsonl.")
    metrics: list[str] | None = Field(
        None,
        description="Metrics to compute besides loss and perplexity (always computed). None: the defaults for the "
        "test rows (JSON answers: exact/normalized match, valid_json, json_match, json_field_accuracy; class "
        "labels: accuracy, precision, recall, f1, mcc; other text: exact/normalized match, bleu, chrf, rouge1/2/L).",
    )
    bootstrap: int = Field(1000, ge=0, description="Bootstrap resamples for confidence intervals; 0: none.")
    confidence: float = Field(0.95, gt=0, lt=1, description="Confidence level of the intervals.")
    seed: int = Field(0, description="Seed of the bootstrap resampling.")
    forgetting: ForgettingSection = Field(default_factory=ForgettingSection)
    risks: RisksSection = Field(default_factory=RisksSection)
    samples: int = Field(8, ge=0, description="Test rows shown side by side (base, tuned, reference) in the report.")

    @field_validator("metrics")
    @classmethod
    def known_metrics(cls, names: list[str] | None) -> list[str] | None:
        for name in names or []:
            try:
                resolve_name(name)
            except TunelabError as error:
                raise ValueError(str(error)) from None
        return names


# Bounds on what the evaluation measures besides the metric: forgetting, then the risk probes (risks/registry.py).
BOUND_FIELDS = ("max_forgetting", "max_robustness_drop", "max_bias_change", "max_memorization", "max_factual_drift")
RISK_BOUNDS = {"max_robustness_drop": "robustness", "max_bias_change": "bias", "max_memorization": "privacy",
               "max_factual_drift": "factual"}


class ObjectiveSection(Section):
    """What counts as success, decided before training. Checked at the end of `tunelab train` and by
    `tunelab eval`: exit code 0 when met, 3 when not."""

    metric: str = Field(..., description="The metric judged, e.g. f1, json_match, bleu, loss (see eval.metrics).")
    min: float | None = Field(None, description="The tuned model's value must be at least this.")
    max: float | None = Field(None, description="The tuned model's value must be at most this (loss, perplexity).")
    min_gain_over_base: float | None = Field(
        None, description="Tuned must beat base by at least this, in the metric's units (rates are 0-1: 0.1 = "
        "+10 points; for loss and perplexity a gain is a decrease)."
    )
    significant: bool = Field(
        False, description="The gain over base must also be significant: its bootstrap interval excludes zero."
    )
    max_forgetting: float | None = Field(
        None, ge=0, description="Largest allowed relative perplexity increase on the general-ability probes "
        "(0.05 = 5%)."
    )
    max_robustness_drop: float | None = Field(
        None, description="Largest allowed drop of the primary metric on perturbed test prompts (tuned model; metric "
        "units: 0.05 = 5 points of a rate; for loss, the increase)."
    )
    max_bias_change: float | None = Field(
        None, description="Largest allowed increase (tuned - base) of the rate at which answers change when a "
        "demographic term in the prompt is swapped (0.05 = 5 points)."
    )
    max_memorization: float | None = Field(
        None, description="Largest allowed memorisation gap of the privacy probe: the share of training answers the "
        "tuned model gives back (verbatim or near) minus the share of unseen test answers it gives as well (0.05 = 5 "
        "points; see eval.risks.privacy)."
    )
    max_factual_drift: float | None = Field(
        None, description="Largest allowed loss of general knowledge on the built-in questions (base - tuned "
        "accuracy; see eval.risks.factual)."
    )

    @field_validator("metric")
    @classmethod
    def known_metric(cls, name: str) -> str:
        try:
            return resolve_name(name)
        except TunelabError as error:
            raise ValueError(str(error)) from None

    @model_validator(mode="after")
    def some_condition(self) -> "ObjectiveSection":
        if all(getattr(self, name) is None for name in ("min", "max", "min_gain_over_base", *BOUND_FIELDS)) \
                and not self.significant:
            raise ValueError("give at least one of min, max, min_gain_over_base, significant, "
                             + ", ".join(BOUND_FIELDS))
        return self


class MonitorSection(Section):
    """How `tunelab serve` and `tunelab monitor` watch the run once it is served (monitor/drift.py, quality.py)."""

    window: str = Field("1h", description="The time window scores are computed over: 30m, 1h, 7d.")
    thresholds: dict[str, float] = Field(
        default_factory=dict, description="Score name -> threshold, overriding the defaults (monitor/thresholds.py): "
        "drift scores (length_distance, ngram_distance, novel_share, format_share, language_share, "
        "embedding_distance) are flagged above theirs, thumbs_up_rate and answer_length below, the other rates above.")

    @field_validator("window")
    @classmethod
    def known_window(cls, value: str) -> str:
        from tunelab.monitor.report import parse_window

        parse_window(value, "monitor.window")
        return value

    @field_validator("thresholds")
    @classmethod
    def known_scores(cls, value: dict[str, float]) -> dict[str, float]:
        from tunelab.monitor.thresholds import check_names

        return check_names(value, "monitor.thresholds")


class OutputSection(Section):
    dir: str | None = Field(None, description="Run folder; default runs/<recipe file name>.")
    merge: bool = Field(
        True, description="Also save a merged model where the method can merge; saying `merge: true` for a method "
        "that cannot merge (prefix, prompt, adapter) is an error."
    )


class Recipe(Section):
    """A whole run. Paths in it are relative to the directory tunelab runs in."""

    task: TaskSection = Field(
        default_factory=SftConfig, description="What is learned (`tunelab tasks`): a task name, or a section with "
        "`name` and the task's options, e.g. {name: classification, style: head}."
    )
    model: ModelSection = Field(default_factory=ModelSection)
    data: DataSection
    method: MethodSection = Field(default_factory=LoraConfig)
    train: TrainSection = Field(default_factory=TrainSection)
    eval: EvalSection = Field(default_factory=EvalSection)
    objective: ObjectiveSection | None = Field(None, description="Success criteria checked after evaluation.")
    rewards: list[RewardSpec] = Field(
        default_factory=list, description="What judges a generated answer: OpenAI's graders (string_check, "
        "text_similarity, python, score_model, multi) or a Python function (file.py:function). Trains grpo, rloo and "
        "ppo; judges every text-writing task's answers in evaluation (win rate, mean reward).")
    output: OutputSection = Field(default_factory=OutputSection)
    monitor: MonitorSection = Field(default_factory=MonitorSection)

    @model_validator(mode="after")
    def forgetting_measured_for_objective(self) -> "Recipe":
        if self.objective and self.objective.max_forgetting is not None and not self.eval.forgetting.enabled:
            raise ValueError("objective.max_forgetting needs eval.forgetting.enabled: true")
        for bound, key in RISK_BOUNDS.items():
            if self.objective is None or getattr(self.objective, bound) is None:
                continue
            options = getattr(self.eval.risks, key, None)
            if not self.eval.risks.enabled or not getattr(options, "enabled", True):
                raise ValueError(f"objective.{bound} needs eval.risks.enabled: true and eval.risks.{key}.enabled: "
                                 "true")
        return self

    @model_validator(mode="before")
    @classmethod
    def default_names(cls, values: Any) -> Any:
        """`task: NAME` is the task with its default options; a `task` or `method` section that names none
        configures the default one (sft, LoRA)."""
        if not isinstance(values, dict):
            return values
        values = dict(values)
        if isinstance(values.get("task"), str):
            values["task"] = {"name": values["task"]}
        for key, default in (("task", DEFAULT_TASK), ("method", DEFAULT_METHOD)):
            if isinstance(values.get(key), dict) and "name" not in values[key]:
                values[key] = {"name": default, **values[key]}
        return values
