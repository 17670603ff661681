"""The model card (README.md) of an export, built from the run's record (run.json) alone.

Hugging Face's card format: YAML front matter (base_model, library_name, tags) and Markdown. Everything in it is
read from the record, so the card states what the run measured, not what anyone hoped.
"""

from __future__ import annotations

from typing import Any

import yaml

from tunelab import __version__

LOWER_IS_BETTER = {"loss", "perplexity"}

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


def model_card(record: dict[str, Any], run_name: str, export: dict[str, Any]) -> str:
    """README.md text for an export described by `export` (format, dtype, quant, file, verification)."""
    base = record.get("base_model", {}).get("name", "?")
    method = record.get("method", {})
    front = {
        "base_model": base,
        "library_name": "peft" if export["format"] == "adapter" else "transformers",
        "tags": ["tunelab", method.get("name", "?"), *(["gguf"] if export["format"] == "gguf" else [])],
    }
    parts = [
        f"---\n{yaml.safe_dump(front, sort_keys=False)}---\n",
        f"# {run_name}\n",
        f"Fine-tuned from **{base}** with **{method.get('name', '?')}** by tunelab {record.get('tunelab_version')}; "
        f"exported as **{export['format']}** ({export_precision(export)}) by tunelab {__version__}.\n",
        "## Verdict\n",
        objective_text(record),
        evaluation_table(record),
        "## Training data\n",
        data_table(record),
        "## Training\n",
        training_text(record, method),
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


def objective_text(record: dict[str, Any]) -> str:
    objective = record.get("objective")
    if not objective:
        return "No objective was set in the recipe; the base-vs-tuned comparison below is the evidence.\n"
    if not isinstance(objective, dict):
        return f"Objective: {objective}\n"
    met = next((objective[key] for key in ("met", "passed") if isinstance(objective.get(key), bool)), None)
    headline = {True: "**Objective met.**", False: "**Objective NOT met.**", None: "**Objective:**"}[met]
    details = "\n".join(f"- {key}: {value}" for key, value in objective.items() if key not in ("met", "passed"))
    return f"{headline}\n\n{details}\n"


def evaluation_table(record: dict[str, Any]) -> str:
    evaluation = record.get("evaluation")
    if not evaluation:
        return "The run was not evaluated (`tunelab eval RUN` compares base and tuned on the held-out rows).\n"
    lines = [f"Base vs tuned on {evaluation['rows']} held-out test rows, same greedy decoding:\n",
             "| metric | base | tuned | change |", "| --- | ---: | ---: | ---: |"]
    for key, delta in evaluation["delta"].items():
        base, tuned = evaluation["base"][key], evaluation["tuned"][key]
        if key in LOWER_IS_BETTER:
            lines.append(f"| {key} | {base:.4f} | {tuned:.4f} | {delta:+.4f} |")
        else:
            lines.append(f"| {key} | {100 * base:.1f}% | {100 * tuned:.1f}% | {100 * delta:+.1f} pts |")
    return "\n".join(lines) + "\n"


def data_table(record: dict[str, Any]) -> str:
    data = record.get("data", {})
    lines = ["| role | file | rows | sha256 |", "| --- | --- | ---: | --- |"]
    for item in data.get("files", []):
        lines.append(f"| {item['role']} | `{item['path']}` | {item['rows']} | `{item['sha256']}` |")
    splits = data.get("splits", {})
    used = ", ".join(f"{name} {info.get('kept', info.get('rows'))}" for name, info in splits.items())
    return "\n".join(lines) + (f"\n\nRows used: {used}.\n" if used else "\n")


def training_text(record: dict[str, Any], method: dict[str, Any]) -> str:
    recipe = record.get("recipe", {})
    metrics = record.get("metrics", {})
    options = {key: value for key, value in recipe.get("method", {}).items() if key != "name"}
    train = recipe.get("train", {})
    lines = [
        f"- method: {method.get('name')} {options}; trained {method.get('trainable_parameters', 0):,} of "
        f"{method.get('total_parameters', 0):,} parameters",
        f"- steps: {record.get('steps')}, tokens seen: {record.get('tokens_seen')}, lr {train.get('lr')}, "
        f"batch size {train.get('batch_size')}, seed {train.get('seed')}",
        f"- device {record.get('device')}, precision {record.get('precision')}",
        f"- final train loss: {metrics.get('train_loss')}, final validation loss: {metrics.get('final_eval_loss')}",
        f"- status: {record.get('status')}, {record.get('started_at')} to {record.get('ended_at')}",
    ]
    return "\n".join(lines) + "\n"


def export_text(export: dict[str, Any]) -> str:
    lines = [f"- format: {export['format']}, precision: {export_precision(export)}"]
    if export.get("tensor_types"):
        lines.append(f"- GGUF tensor types: {export['tensor_types']}")
    check = export.get("verification")
    if check:
        lines.append(f"- checked after writing: {check['same_greedy_answers']} of {check['prompts']} prompts give the "
                     f"same greedy answer ({check['max_new_tokens']} new tokens) as {check['against']}; "
                     f"{check['same_prompt_tokens']} of {check['prompts']} prompts tokenize identically")
    return "\n".join(lines) + "\n"


def environment_text(record: dict[str, Any]) -> str:
    environment = record.get("environment", {})
    packages = ", ".join(f"{name} {version}" for name, version in environment.get("packages", {}).items() if version)
    return f"Python {environment.get('python')}; {packages}; git {environment.get('git_sha')}.\n"
