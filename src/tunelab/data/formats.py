"""Row formats, each turned into one `Example`.

Conversations (`messages`, `sharegpt`, `prompt_completion`, `alpaca`) become a list of role/content messages.
`text` rows (continued pre-training) keep their text, `label` rows a text and its class, `preference` rows a prompt
(as messages) with a chosen and a rejected answer, `feedback` rows (unpaired, as KTO takes them) a prompt with one
completion labelled desirable (true) or not (false), and `prompt` rows (online RL: GRPO, RLOO, PPO) a prompt alone
with every other field of the row kept for the rewards to read (a reference answer, say). Field names in the file
can differ from these: `data.fields` maps tunelab's name to the file's column.

OpenAI's fine-tuning files read as they are: its chat format is `messages` (a message's `weight` and the row's
`tools` are not read), its preference (DPO) format is `openai_preference`, and its reinforcement format is `prompt`
with `data.fields: {prompt: messages}` (every other field of the row stays for the graders).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Callable

from tunelab.data.readers import BadRow, Record
from tunelab.errors import TunelabError

ROLES = ("system", "user", "assistant")
SHAREGPT_ROLES = {"system": "system", "human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant"}


@dataclass(frozen=True)
class Example:
    source: str
    line: int
    messages: list[dict[str, str]] | None = None  # conversations; for `preference`, the prompt
    text: str | None = None  # `text` and `label` rows
    label: str | None = None  # `label` rows: the class
    chosen: str | None = None  # `preference` rows
    rejected: str | None = None
    completion: str | None = None  # `feedback` rows: the answer judged, and whether it is desirable
    desirable: bool | None = None
    extra: dict[str, Any] | None = None  # `prompt` rows: the row's other fields, for the rewards (`{{ item.x }}`)
    origin: str | None = None  # how a row not read as is was made, e.g. "augment: template 1"

    @property
    def where(self) -> str:
        return f"{self.source}:{self.line}"

    @property
    def kind(self) -> str:
        """chat, text, label, preference, feedback or prompt: what a trainer or evaluator can do with the row."""
        if self.chosen is not None:
            return "preference"
        if self.desirable is not None:
            return "feedback"
        if self.extra is not None:
            return "prompt"
        if self.label is not None:
            return "label"
        if self.messages is not None:
            return "chat"
        return "text"

    def to_json(self) -> dict[str, Any]:
        return {key: value for key, value in asdict(self).items() if value is not None}

    @classmethod
    def from_json(cls, value: dict[str, Any]) -> "Example":
        return cls(**value)



def canonical_row(example: Example) -> dict[str, Any]:
    """A row as a file the data doctor reads back (its canonical field names, by the row's kind): what a prepared
    split or exported feedback becomes when it is training data again."""
    if example.chosen is not None:
        return {"prompt": example.messages, "chosen": example.chosen, "rejected": example.rejected}
    if example.desirable is not None:
        return {"prompt": example.messages, "completion": example.completion, "label": example.desirable}
    if example.label is not None:
        return {"text": example.text, "label": example.label}
    if example.messages is not None:
        return {"messages": example.messages}
    return {"text": example.text}

def field(record: Record, name: str, fields: dict[str, str | list[str]], fmt: str, required: bool = True) -> Any:
    """The value of tunelab field `name`: from the mapped column, or the first non-empty of a list of columns."""
    mapped = fields.get(name, name)
    for column in [mapped] if isinstance(mapped, str) else mapped:
        if record.fields.get(column) is not None:
            return record.fields[column]
    if not required:
        return None
    shown = mapped if isinstance(mapped, str) else " or ".join(mapped)
    raise TunelabError(f"{record.where}: missing field '{shown}' (format {fmt})")


def text_field(record: Record, name: str, fields: dict[str, str], fmt: str, required: bool = True) -> str | None:
    value = field(record, name, fields, fmt, required)
    if value is None:
        return None
    if not isinstance(value, str):
        raise TunelabError(f"{record.where}: field '{name}' must be text, got {type(value).__name__}")
    return value


def message_list(record: Record, value: Any, column: str, role_key: str, content_key: str,
                 role_names: dict[str, str]) -> list[dict[str, str]]:
    if not isinstance(value, list) or not value:
        raise TunelabError(f"{record.where}: '{column}' must be a non-empty list of messages")
    messages = []
    for index, message in enumerate(value):
        if not isinstance(message, dict) or role_key not in message or content_key not in message:
            raise TunelabError(f"{record.where}: message {index} needs '{role_key}' and '{content_key}'")
        role, content = message[role_key], message[content_key]
        if role not in role_names:
            raise TunelabError(
                f"{record.where}: message {index} has role '{role}' (expected {', '.join(role_names)})"
            )
        if not isinstance(content, str):
            raise TunelabError(f"{record.where}: message {index} content must be text")
        messages.append({"role": role_names[role], "content": content})
    return messages


def with_system(system: str | None, messages: list[dict[str, str]]) -> list[dict[str, str]]:
    return ([{"role": "system", "content": system}] if system else []) + messages


def from_messages(record: Record, fields: dict[str, str]) -> dict[str, Any]:
    column = fields.get("messages", "messages")
    value = field(record, "messages", fields, "messages")
    roles = {role: role for role in ROLES}
    return {"messages": message_list(record, value, column, fields.get("role", "role"),
                                     fields.get("content", "content"), roles)}


def from_sharegpt(record: Record, fields: dict[str, str]) -> dict[str, Any]:
    column = fields.get("conversations", "conversations")
    value = field(record, "conversations", fields, "sharegpt")
    return {"messages": message_list(record, value, column, fields.get("from", "from"),
                                     fields.get("value", "value"), SHAREGPT_ROLES)}


def from_prompt_completion(record: Record, fields: dict[str, str]) -> dict[str, Any]:
    prompt = text_field(record, "prompt", fields, "prompt_completion")
    completion = text_field(record, "completion", fields, "prompt_completion")
    system = text_field(record, "system", fields, "prompt_completion", required=False)
    return {"messages": with_system(system, [{"role": "user", "content": prompt},
                                             {"role": "assistant", "content": completion}])}


def from_alpaca(record: Record, fields: dict[str, str]) -> dict[str, Any]:
    instruction = text_field(record, "instruction", fields, "alpaca")
    extra_input = text_field(record, "input", fields, "alpaca", required=False)
    output = text_field(record, "output", fields, "alpaca")
    system = text_field(record, "system", fields, "alpaca", required=False)
    prompt = f"{instruction}\n\n{extra_input}" if extra_input else instruction
    return {"messages": with_system(system, [{"role": "user", "content": prompt},
                                             {"role": "assistant", "content": output}])}


def from_text(record: Record, fields: dict[str, str]) -> dict[str, Any]:
    return {"text": text_field(record, "text", fields, "text")}


def from_label(record: Record, fields: dict[str, str]) -> dict[str, Any]:
    label = field(record, "label", fields, "label")
    if isinstance(label, (dict, list)) or isinstance(label, bool):
        raise TunelabError(f"{record.where}: field '{fields.get('label', 'label')}' must be a class name or number")
    return {"text": text_field(record, "text", fields, "label"), "label": str(label)}


def prompt_messages(record: Record, fields: dict[str, str], fmt: str) -> list[dict[str, str]]:
    """A prompt given as text (one user message) or as a list of messages."""
    prompt = field(record, "prompt", fields, fmt)
    if isinstance(prompt, str):
        return [{"role": "user", "content": prompt}]
    roles = {role: role for role in ROLES}
    return message_list(record, prompt, fields.get("prompt", "prompt"), "role", "content", roles)


def from_preference(record: Record, fields: dict[str, str]) -> dict[str, Any]:
    return {"messages": prompt_messages(record, fields, "preference"),
            "chosen": text_field(record, "chosen", fields, "preference"),
            "rejected": text_field(record, "rejected", fields, "preference")}


def from_openai_preference(record: Record, fields: dict[str, str]) -> dict[str, Any]:
    """OpenAI's preference (DPO) rows: {"input": {"messages": [...], "tools": ..., "parallel_tool_calls": ...},
    "preferred_output": [assistant message], "non_preferred_output": [assistant message]}; the prompt is
    input.messages (its tools are not used), each answer the last assistant message of its list."""
    column = fields.get("input", "input")
    given = field(record, "input", fields, "openai_preference")
    if not isinstance(given, dict) or "messages" not in given:
        raise TunelabError(f"{record.where}: '{column}' must be an object with 'messages'")
    roles = {role: role for role in ROLES}
    prompt = message_list(record, given["messages"], f"{column}.messages", "role", "content", roles)
    return {"messages": prompt, "chosen": last_assistant(record, fields, "preferred_output"),
            "rejected": last_assistant(record, fields, "non_preferred_output")}


def last_assistant(record: Record, fields: dict[str, str], name: str) -> str:
    column = fields.get(name, name)
    value = field(record, name, fields, "openai_preference")
    roles = {role: role for role in ROLES}
    messages = message_list(record, value, column, "role", "content", roles)
    answers = [message["content"] for message in messages if message["role"] == "assistant"]
    if not answers:
        raise TunelabError(f"{record.where}: '{column}' holds no assistant message")
    return answers[-1]


DESIRABLE = {"true": True, "false": False, "1": True, "0": False, "yes": True, "no": False}


def from_feedback(record: Record, fields: dict[str, str]) -> dict[str, Any]:
    label = field(record, "label", fields, "feedback")
    if isinstance(label, str) and label.strip().lower() in DESIRABLE:
        label = DESIRABLE[label.strip().lower()]
    elif isinstance(label, int) and not isinstance(label, bool) and label in (0, 1):
        label = bool(label)
    if not isinstance(label, bool):
        raise TunelabError(f"{record.where}: field '{fields.get('label', 'label')}' must be true (a desirable "
                           f"completion) or false, got {label!r}")
    return {"messages": prompt_messages(record, fields, "feedback"),
            "completion": text_field(record, "completion", fields, "feedback"), "desirable": label}


def from_prompt(record: Record, fields: dict[str, str]) -> dict[str, Any]:
    system = text_field(record, "system", fields, "prompt", required=False)
    used = {fields.get("prompt", "prompt"), fields.get("system", "system")}
    extra = {key: value for key, value in record.fields.items() if key not in used}
    return {"messages": with_system(system, prompt_messages(record, fields, "prompt")), "extra": extra}


FORMATS: dict[str, Callable[[Record, dict[str, str]], dict[str, Any]]] = {
    "messages": from_messages,
    "sharegpt": from_sharegpt,
    "prompt_completion": from_prompt_completion,
    "alpaca": from_alpaca,
    "text": from_text,
    "label": from_label,
    "preference": from_preference,
    "openai_preference": from_openai_preference,
    "feedback": from_feedback,
    "prompt": from_prompt,
}

# The fields whose presence identifies each format, in the order auto-detection tries them.
SIGNATURES = {
    "openai_preference": ("input", "preferred_output", "non_preferred_output"),
    "messages": ("messages",),
    "sharegpt": ("conversations",),
    "preference": ("prompt", "chosen", "rejected"),
    "feedback": ("prompt", "completion", "label"),
    "prompt_completion": ("prompt", "completion"),
    "alpaca": ("instruction", "output"),
    "label": ("text", "label"),
    "text": ("text",),
    "prompt": ("prompt",),  # last: any row with a prompt fits it
}


def detect_format(record: Record, fields: dict[str, str | list[str]]) -> str:
    def present(name: str) -> bool:
        mapped = fields.get(name, name)
        return any(column in record.fields for column in ([mapped] if isinstance(mapped, str) else mapped))

    for fmt, names in SIGNATURES.items():
        if all(present(name) for name in names):
            return fmt
    found = ", ".join(sorted(record.fields)) or "none"
    raise TunelabError(
        f"{record.where}: cannot tell the data format from fields ({found}); set data.format "
        f"({', '.join(FORMATS)}) and data.fields to map column names"
    )


def to_example(record: Record, fmt: str, fields: dict[str, str], system_prompt: str | None) -> Example:
    """One record in the given format; a record that does not fit stops with its file:line."""
    parts = FORMATS[fmt](record, fields)
    messages = parts.get("messages")
    if messages is not None:
        if system_prompt and messages[0]["role"] != "system":
            parts["messages"] = [{"role": "system", "content": system_prompt}] + messages
        if ("chosen" not in parts and "completion" not in parts and "extra" not in parts
                and not any(message["role"] == "assistant" for message in messages)):
            raise TunelabError(f"{record.where}: no assistant message to learn from")
    return Example(source=record.source, line=record.line, **parts)


def to_examples(records: list[Record], fmt: str, fields: dict[str, str], system_prompt: str | None) -> list[Example]:
    if fmt == "auto":
        fmt = detect_format(records[0], fields)
    return [to_example(record, fmt, fields, system_prompt) for record in records]


def parse_items(items: list[Record | BadRow], fmt: str, fields: dict[str, str | list[str]],
                system_prompt: str | None) -> tuple[list[Example], list[BadRow]]:
    """Rows that fit the format as examples, every other one as a `BadRow` with its reason (nothing stops).

    With `auto`, the format is the most common among the first rows; a row that fits another format is named as
    such (mixed formats in one file).
    """
    records = [item for item in items if isinstance(item, Record)]
    if fmt == "auto" and records:
        fmt = majority_format(records, fields)
    examples, bad = [], []
    for item in items:
        if isinstance(item, BadRow):
            bad.append(item)
            continue
        try:
            examples.append(to_example(item, fmt, fields, system_prompt))
        except TunelabError as error:
            reason = str(error).removeprefix(f"{item.where}: ")
            other = other_format(item, fmt, fields)
            if other:
                reason = f"row is in format '{other}', not the file's '{fmt}' (mixed formats in one file): {reason}"
            bad.append(BadRow(item.source, item.line, reason, json_preview(item.fields)))
    return examples, bad


def majority_format(records: list[Record], fields: dict[str, str | list[str]], sample: int = 1000) -> str:
    from collections import Counter

    found = Counter()
    for record in records[:sample]:
        try:
            found[detect_format(record, fields)] += 1
        except TunelabError:
            continue
    if not found:
        detect_format(records[0], fields)  # raises, naming the fields it saw
    return found.most_common(1)[0][0]


def other_format(record: Record, fmt: str, fields: dict[str, str | list[str]]) -> str | None:
    """The format a row that does not fit the file's is in instead; None where it is just the file's format with
    fields missing (a prompt_completion row without its completion fits `prompt` too, and is not mixed in)."""
    try:
        found = detect_format(record, fields)
    except TunelabError:
        return None
    if found == fmt or set(SIGNATURES.get(found, ())) < set(SIGNATURES.get(fmt, ())):
        return None
    return found


def json_preview(fields: dict[str, Any]) -> str:
    import json

    from tunelab.data.readers import raw_text

    return raw_text(json.dumps(fields, ensure_ascii=False, default=str))
