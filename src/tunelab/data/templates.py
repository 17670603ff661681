"""Conversations into token ids and labels with the tokenizer's chat template.

Loss falls only on assistant turns, and each turn's end-of-turn/EOS token is inside the labels so the tuned model
learns to stop. The prompt and each assistant answer are tokenized as separate pieces, exactly as at inference
(the prompt is encoded with the generation prompt, the model writes the rest), so what is trained is what is served.

transformers' `return_assistant_tokens_mask` needs `{% generation %}` markers that most shipped templates lack;
rendering prefix by prefix works with any template whose renderings of a growing conversation extend each other.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tunelab.errors import TunelabError

IGNORE_INDEX = -100

CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


@dataclass(frozen=True)
class Encoded:
    input_ids: list[int]
    labels: list[int]

    @property
    def label_count(self) -> int:
        return sum(label != IGNORE_INDEX for label in self.labels)


def resolve_chat_template(choice: str | None) -> str | None:
    """The recipe's `model.chat_template`: None keeps the tokenizer's, 'chatml' or a Jinja file replaces it."""
    if choice is None:
        return None
    if choice == "chatml":
        return CHATML_TEMPLATE
    path = Path(choice)
    if not path.is_file():
        raise TunelabError(f"model.chat_template: '{choice}' is neither 'chatml' nor a template file")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as error:
        raise TunelabError(f"model.chat_template: {path}: not UTF-8 (byte offset {error.start})") from None
    check_template_syntax(text, f"model.chat_template: {path}")
    return text


def check_template_syntax(template: str, where: str) -> None:
    """Refuse a chat template Jinja cannot parse, naming its line, before any row is rendered with it.

    It is compiled the way transformers compiles it (its sandbox, its `generation` tag and extensions), by rendering
    one short conversation; an error the template raises itself on that conversation is not a syntax error and is
    left to the rows that trigger it (see `render`).
    """
    import jinja2
    from transformers.utils.chat_template_utils import render_jinja_template

    try:
        render_jinja_template(conversations=[[{"role": "user", "content": "hi"}]], chat_template=template,
                              add_generation_prompt=True)
    except jinja2.TemplateSyntaxError as error:
        raise TunelabError(f"{where}:{error.lineno}: not a valid Jinja template: {error.message}") from None
    except Exception:  # noqa: BLE001  the template ran (and raised): its syntax is fine
        return


def render(tokenizer: Any, messages: list[dict[str, str]], add_generation_prompt: bool) -> str:
    import jinja2

    if not tokenizer.chat_template:
        raise TunelabError(
            "the tokenizer has no chat template; set model.chat_template to 'chatml' or a template file"
        )
    try:
        return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=add_generation_prompt)
    except (jinja2.TemplateError, TypeError) as error:  # raise_exception(...) in the template, or a bad operation
        reason = getattr(error, "message", None) or str(error)
        raise TunelabError(f"the chat template failed on this conversation: {reason}") from None


def tokens(tokenizer: Any, text: str) -> list[int]:
    # The template already wrote every special token it wants, so none is added here.
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def stop_token_ids(tokenizer: Any, model_eos: int | list[int] | None = None) -> set[int]:
    """Ids that end an assistant turn: the tokenizer's EOS and the model's generation EOS ids."""
    ids = {tokenizer.eos_token_id} if tokenizer.eos_token_id is not None else set()
    if isinstance(model_eos, int):
        ids.add(model_eos)
    elif model_eos:
        ids.update(model_eos)
    if not ids:
        raise TunelabError("the tokenizer has no EOS token, so the model could not learn to stop")
    return ids


def encode_conversation(tokenizer: Any, messages: list[dict[str, str]], stop_ids: set[int]) -> Encoded:
    """Token ids of the whole conversation and labels that are -100 everywhere but the assistant answers."""
    input_ids: list[int] = []
    labels: list[int] = []
    rendered = ""
    last_assistant = max(i for i, message in enumerate(messages) if message["role"] == "assistant")
    for index, message in enumerate(messages[: last_assistant + 1]):
        if message["role"] != "assistant":
            continue
        prompt = render(tokenizer, messages[:index], add_generation_prompt=True)
        full = render(tokenizer, messages[: index + 1], add_generation_prompt=False)
        if not prompt.startswith(rendered) or not full.startswith(prompt):
            raise TunelabError(
                "the chat template cannot mark the assistant turn: its rendering of a longer conversation does "
                "not extend the shorter one; set model.chat_template to 'chatml' or a template file"
            )
        prompt_ids = tokens(tokenizer, prompt[len(rendered) :])
        answer_ids = tokens(tokenizer, full[len(prompt) :])
        end = last_stop_index(answer_ids, stop_ids)
        input_ids += prompt_ids + answer_ids
        labels += [IGNORE_INDEX] * len(prompt_ids)
        labels += answer_ids[: end + 1] + [IGNORE_INDEX] * (len(answer_ids) - end - 1)
        rendered = full
    # What follows the last end-of-turn token (a newline, say) carries no loss: leave it out of the sequence.
    end = len(labels) - next(i for i, label in enumerate(reversed(labels)) if label != IGNORE_INDEX)
    return Encoded(input_ids[:end], labels[:end])


def last_stop_index(answer_ids: list[int], stop_ids: set[int]) -> int:
    for position in range(len(answer_ids) - 1, -1, -1):
        if answer_ids[position] in stop_ids:
            return position
    raise TunelabError(
        "the chat template cannot mark the end of the assistant turn (no EOS/end-of-turn token after the answer); "
        "set model.chat_template to 'chatml' or a template that closes each turn"
    )


def encode_text(tokenizer: Any, text: str, stop_ids: set[int]) -> Encoded:
    """A plain-text row (continued pre-training): every token carries loss, and the row ends with EOS."""
    ids = tokens(tokenizer, text) + [min(stop_ids) if tokenizer.eos_token_id is None else tokenizer.eos_token_id]
    return Encoded(ids, list(ids))


def encode_example(tokenizer: Any, example: Any, stop_ids: set[int]) -> Encoded:
    """Token ids and labels of a row for language-model training (conversation or plain text)."""
    if example.kind == "chat":
        return encode_conversation(tokenizer, example.messages, stop_ids)
    if example.kind == "text":
        return encode_text(tokenizer, example.text, stop_ids)
    raise TunelabError(
        f"{example.where}: '{example.kind}' rows do not train a language model with supervised fine-tuning "
        "(label rows are for classification, preference rows for preference tuning)"
    )


def prompt_and_reference(messages: list[dict[str, str]]) -> tuple[list[dict[str, str]], str]:
    """The conversation up to the last assistant turn, and that turn's text (what evaluation compares with)."""
    last = max(i for i, message in enumerate(messages) if message["role"] == "assistant")
    return messages[:last], messages[last]["content"]


def encode_prompt(tokenizer: Any, messages: list[dict[str, str]]) -> list[int]:
    """Token ids that ask the model to write the next assistant turn."""
    return tokens(tokenizer, render(tokenizer, messages, add_generation_prompt=True))
