"""The model card (README.md) of an export, built from the run's record (run.json) alone.

Hugging Face's card format: YAML front matter (base_model, library_name, tags) and Markdown. Everything in it is
read from the record, so the card states what the run measured, not what anyone hoped.
"""

from __future__ import annotations

from typing import Any

import yaml

from tunelab import __version__
from tunelab.present.format import format_change, format_interval, format_percent, format_value
from tunelab.run.record import RunRecord

USAGE = {
    "merged": """```python
from transformers import AutoModelForCausalLM, AutoTokenizer

model = AutoModelForCausalLM.from_pretrained("{folder}")
tokenizer = AutoTokenizer.from_pretrained("{folder}")
```""",
    "adapter": """```python
from peft import PeftModel
from transformers import AutoModelForCausalLM, AutoTokenizer

base = AutoModelForCausalLM.from_pretrained("<the base model: {base}>")
model = PeftModel.from_pretrained(base, "{folder}")
tokenizer = AutoTokenizer.from_pretrained("{folder}")
```""",
    "gguf": """llama.cpp: `llama-cli -m {folder}/{file}`; Ollama: `ollama create {name} -f {folder}/Modelfile`;
transformers:

```python
from transformers import AutoModelForCausalLM, AutoTokenizer

model = AutoModelForCausalLM.from_pretrained("{folder}", gguf_file="{file}")
tokenizer = AutoTokenizer.from_pretrained("{folder}", gguf_file="{file}")
```""",
}


def model_card(record: RunRecord, run_name: str, export: dict[str, Any]) -> str:
    """README.md text for an export described by `export` (format, dtype, quant, file, verification)."""
    base, method = record.base_model.name, record.method.name
    front = {
        "base_model": base,
        "library_name": "peft" if export["format"] == "adapter" else "transformers",
        "tags": ["tunelab", record.task, method, *(["gguf"] if export["format"] == "gguf" else [])],
    }
    parts = [
        f"---\n{yaml.safe_dump(front, sort_keys=False)}---\n",
        f"# {run_name}\n",
        f"Fine-tuned ({record.task}) from **{base}** with **{method}** by tunelab {record.tunelab_version}; "
        f"exported as **{export['format']}** ({export_precision(export)}) by tunelab {__version__}.\n",
        "## Verdict\n",
        objective_text(record),
        evaluation_table(record),
        "## Training data\n",
        data_table(record),
        "## Training\n",
        training_text(record),
        "## Export\n",
        export_text(export),
        "## Use\n",
        USAGE[export["format"]].format(folder=".", base=base, file=export.get("file", ""), name=run_name) + "\n",
        "## Environment\n",
        environment_text(record),
    ]
    return "\n".join(parts)


def export_precision(export: dict[str, Any]) -> str:
    return export.get("quant") or export.get("dtype") or "as trained"


def objective_text(record: RunRecord) -> str:
    evaluation = record.evaluation
    if evaluation is None:
        return "The run was not evaluated, so no objective was checked.\n"
    verdict = evaluation.objective
    if verdict is None:
        return "No objective was set in the recipe; the base-vs-tuned comparison below is the evidence.\n"
    headline = "**Objective met.**" if verdict.met else "**Objective NOT met.**"
    checks = "\n".join(f"- {'pass' if check.ok else 'FAIL'}: {check.text}" for check in verdict.checks)
    return f"{headline} The objective on {verdict.metric} was fixed before training:\n\n{checks}\n"


def evaluation_table(record: RunRecord) -> str:
    evaluation = record.evaluation
    if evaluation is None:
        return "`tunelab eval RUN` compares base and tuned on the held-out rows.\n"
    intervals = evaluation.delta_intervals or {}
    lines = [f"Base vs tuned on {evaluation.rows} held-out test rows, answered the same way:\n",
             "| metric | base | tuned | change | interval |", "| --- | ---: | ---: | ---: | ---: |"]
    for key, delta in evaluation.delta.items():
        lines.append(f"| {key} | {format_value(key, evaluation.base[key])} | {format_value(key, evaluation.tuned[key])}"
                     f" | {format_change(key, delta)} | {format_interval(key, intervals.get(key), signed=True)} |")
    if evaluation.forgetting:
        forgetting = evaluation.forgetting
        lines.append(f"\nForgetting: {format_percent(forgetting.value)} ({forgetting.worst_probe} "
                     f"{forgetting.measure}){', flagged' if forgetting.flagged else ''}.")
    return "\n".join(lines) + "\n"


def data_table(record: RunRecord) -> str:
    lines = ["| role | file | rows | sha256 |", "| --- | --- | ---: | --- |"]
    for item in record.data.files:
        lines.append(f"| {item.role} | `{item.path}` | {item.rows} | `{item.sha256}` |")
    used = ", ".join(f"{name} {info.kept}" for name, info in record.data.splits.items())
    return "\n".join(lines) + (f"\n\nRows used: {used}.\n" if used else "\n")


def training_text(record: RunRecord) -> str:
    recipe, method, training = record.recipe, record.method, record.training
    options = {key: value for key, value in recipe.get("method", {}).items() if key != "name"}
    train = recipe.get("train", {})
    lines = [
        f"- method: {method.name} {options}; trained {method.trainable_parameters:,} of "
        f"{method.total_parameters:,} parameters",
        f"- steps: {training.steps if training else '?'}, tokens seen: {training.tokens_seen if training else '?'}, "
        f"lr {train.get('lr')}, batch size {train.get('batch_size')}, seed {train.get('seed')}",
        f"- device {record.device}, precision {record.precision}",
        f"- final train loss: {training.train_loss if training else None}, final validation loss: "
        f"{training.final_eval_loss if training else None}",
        f"- status: {record.status}, {record.started_at} to {record.ended_at}",
    ]
    return "\n".join(lines) + "\n"


def export_text(export: dict[str, Any]) -> str:
    lines = [f"- format: {export['format']}, precision: {export_precision(export)}"]
    if export.get("tensor_types"):
        lines.append(f"- GGUF tensor types: {export['tensor_types']}")
    check = export.get("verification")
    if check:
        answer = (f"greedy answer ({check['max_new_tokens']} new tokens)" if check["max_new_tokens"] else "class")
        lines.append(f"- checked after writing: {check['same_greedy_answers']} of {check['prompts']} prompts give the "
                     f"same {answer} as {check['against']}; "
                     f"{check['same_prompt_tokens']} of {check['prompts']} prompts tokenize identically")
    return "\n".join(lines) + "\n"


def environment_text(record: RunRecord) -> str:
    environment = record.environment
    packages = ", ".join(f"{name} {version}" for name, version in environment.packages.items() if version)
    return f"Python {environment.python}; {packages}; git {environment.git_sha}.\n"
