"""Row formats, each turned into one shape: a conversation (list of role/content messages).

Formats: `messages` (chat, multi-turn), `prompt_completion`, `alpaca` (instruction/input/output). Field names in
the file can differ from these: `data.fields` maps tunelab's name to the file's column.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

from tunelab.data.readers import Record
from tunelab.errors import TunelabError

ROLES = ("system", "user", "assistant")


@dataclass(frozen=True)
class Example:
    messages: list[dict[str, str]]
    source: str
    line: int

    @property
    def where(self) -> str:
        return f"{self.source}:{self.line}"

    def to_json(self) -> dict[str, Any]:
        return {"messages": self.messages, "source": self.source, "line": self.line}

    @classmethod
    def from_json(cls, value: dict[str, Any]) -> "Example":
        return cls(value["messages"], value["source"], value["line"])


def field(record: Record, name: str, fields: dict[str, str], fmt: str, required: bool = True) -> Any:
    column = fields.get(name, name)
    if column not in record.fields or record.fields[column] is None:
        if not required:
            return None
        raise TunelabError(f"{record.where}: missing field '{column}' (format {fmt})")
    return record.fields[column]


def text_field(record: Record, name: str, fields: dict[str, str], fmt: str, required: bool = True) -> str | None:
    value = field(record, name, fields, fmt, required)
    if value is None:
        return None
    if not isinstance(value, str):
        raise TunelabError(f"{record.where}: field '{fields.get(name, name)}' must be text, got {type(value).__name__}")
    return value


def from_messages(record: Record, fields: dict[str, str]) -> list[dict[str, str]]:
    value = field(record, "messages", fields, "messages")
    role_key, content_key = fields.get("role", "role"), fields.get("content", "content")
    if not isinstance(value, list) or not value:
        raise TunelabError(f"{record.where}: '{fields.get('messages', 'messages')}' must be a non-empty list")
    messages = []
    for index, message in enumerate(value):
        if not isinstance(message, dict) or role_key not in message or content_key not in message:
            raise TunelabError(f"{record.where}: message {index} needs '{role_key}' and '{content_key}'")
        role, content = message[role_key], message[content_key]
        if role not in ROLES:
            raise TunelabError(f"{record.where}: message {index} has role '{role}' (expected {', '.join(ROLES)})")
        if not isinstance(content, str):
            raise TunelabError(f"{record.where}: message {index} content must be text")
        messages.append({"role": role, "content": content})
    return messages


def from_prompt_completion(record: Record, fields: dict[str, str]) -> list[dict[str, str]]:
    prompt = text_field(record, "prompt", fields, "prompt_completion")
    completion = text_field(record, "completion", fields, "prompt_completion")
    system = text_field(record, "system", fields, "prompt_completion", required=False)
    return with_system(system, [{"role": "user", "content": prompt}, {"role": "assistant", "content": completion}])


def from_alpaca(record: Record, fields: dict[str, str]) -> list[dict[str, str]]:
    instruction = text_field(record, "instruction", fields, "alpaca")
    extra_input = text_field(record, "input", fields, "alpaca", required=False)
    output = text_field(record, "output", fields, "alpaca")
    system = text_field(record, "system", fields, "alpaca", required=False)
    prompt = f"{instruction}\n\n{extra_input}" if extra_input else instruction
    return with_system(system, [{"role": "user", "content": prompt}, {"role": "assistant", "content": output}])


def with_system(system: str | None, messages: list[dict[str, str]]) -> list[dict[str, str]]:
    return ([{"role": "system", "content": system}] if system else []) + messages


FORMATS: dict[str, Callable[[Record, dict[str, str]], list[dict[str, str]]]] = {
    "messages": from_messages,
    "prompt_completion": from_prompt_completion,
    "alpaca": from_alpaca,
}

# The fields whose presence identifies each format, in the order auto-detection tries them.
SIGNATURES = {
    "messages": ("messages",),
    "prompt_completion": ("prompt", "completion"),
    "alpaca": ("instruction", "output"),
}


def detect_format(record: Record, fields: dict[str, str]) -> str:
    for fmt, names in SIGNATURES.items():
        if all(fields.get(name, name) in record.fields for name in names):
            return fmt
    found = ", ".join(sorted(record.fields)) or "none"
    raise TunelabError(
        f"{record.where}: cannot tell the data format from fields ({found}); set data.format "
        f"({', '.join(FORMATS)}) and data.fields to map column names"
    )


def to_examples(records: list[Record], fmt: str, fields: dict[str, str], system_prompt: str | None) -> list[Example]:
    """Every record as a conversation; a record that does not fit the format stops with its file:line."""
    if fmt == "auto":
        fmt = detect_format(records[0], fields)
    convert = FORMATS[fmt]
    examples = []
    for record in records:
        messages = convert(record, fields)
        if system_prompt and messages[0]["role"] != "system":
            messages = [{"role": "system", "content": system_prompt}] + messages
        if not any(message["role"] == "assistant" for message in messages):
            raise TunelabError(f"{record.where}: no assistant message to learn from")
        examples.append(Example(messages, record.source, record.line))
    return examples
