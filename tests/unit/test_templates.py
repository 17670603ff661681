"""Label masks: loss only on assistant tokens, end-of-turn inside the labels, prompt encoding as at inference."""

import pytest

from tests.tiny import tiny_tokenizer
from tunelab.data.templates import (
    CHATML_TEMPLATE,
    IGNORE_INDEX,
    encode_conversation,
    encode_prompt,
    prompt_and_reference,
)
from tunelab.errors import TunelabError

CONVERSATION = [
    {"role": "system", "content": "Be brief."},
    {"role": "user", "content": "hi"},
    {"role": "assistant", "content": "hello"},
    {"role": "user", "content": "bye"},
    {"role": "assistant", "content": "ciao"},
]


@pytest.fixture
def tokenizer():
    return tiny_tokenizer()


def labelled_text(tokenizer, encoded):
    return tokenizer.decode([t for t, label in zip(encoded.input_ids, encoded.labels) if label != IGNORE_INDEX])


def test_only_assistant_tokens_carry_loss_and_each_turn_ends_with_eos(tokenizer):
    encoded = encode_conversation(tokenizer, CONVERSATION, {tokenizer.eos_token_id})
    assert labelled_text(tokenizer, encoded) == "hello<|im_end|>ciao<|im_end|>"
    labelled_ids = [t for t, label in zip(encoded.input_ids, encoded.labels) if label != IGNORE_INDEX]
    assert labelled_ids.count(tokenizer.eos_token_id) == 2
    # labels equal the input ids wherever they are set
    assert all(label in (IGNORE_INDEX, token) for token, label in zip(encoded.input_ids, encoded.labels))


def test_sequence_is_the_rendered_conversation_up_to_the_last_end_of_turn(tokenizer):
    encoded = encode_conversation(tokenizer, CONVERSATION, {tokenizer.eos_token_id})
    rendered = tokenizer.apply_chat_template(CONVERSATION, tokenize=False)
    assert tokenizer.decode(encoded.input_ids) == rendered.rstrip("\n")
    assert encoded.labels[-1] == tokenizer.eos_token_id


def test_user_turns_after_the_last_answer_are_left_out(tokenizer):
    encoded = encode_conversation(tokenizer, CONVERSATION + [{"role": "user", "content": "more"}],
                                  {tokenizer.eos_token_id})
    assert "more" not in tokenizer.decode(encoded.input_ids)


def test_prompt_encoding_is_the_training_prefix(tokenizer):
    messages, reference = prompt_and_reference(CONVERSATION)
    assert reference == "ciao"
    prompt = encode_prompt(tokenizer, messages)
    encoded = encode_conversation(tokenizer, CONVERSATION, {tokenizer.eos_token_id})
    assert encoded.input_ids[: len(prompt)] == prompt
    # inside the prompt only the earlier answer carries loss; the last answer starts right after it
    prefix = type(encoded)(encoded.input_ids[: len(prompt)], encoded.labels[: len(prompt)])
    assert labelled_text(tokenizer, prefix) == "hello<|im_end|>"
    assert encoded.labels[len(prompt)] != IGNORE_INDEX


def test_template_whose_renderings_do_not_extend_each_other_is_refused(tokenizer):
    # Puts the message count first, so a longer conversation does not start with the shorter one's rendering.
    tokenizer.chat_template = "{{ messages|length }}" + CHATML_TEMPLATE
    with pytest.raises(TunelabError, match="cannot mark the assistant turn"):
        encode_conversation(tokenizer, CONVERSATION, {tokenizer.eos_token_id})


def test_template_without_end_of_turn_is_refused(tokenizer):
    tokenizer.chat_template = (
        "{% for m in messages %}{{ m['role'] + ': ' + m['content'] + '\n' }}{% endfor %}"
        "{% if add_generation_prompt %}{{ 'assistant: ' }}{% endif %}"
    )
    with pytest.raises(TunelabError, match="end of the assistant turn"):
        encode_conversation(tokenizer, CONVERSATION, {tokenizer.eos_token_id})


def test_tokenizer_without_template_is_refused(tokenizer):
    tokenizer.chat_template = None
    with pytest.raises(TunelabError, match="no chat template"):
        encode_conversation(tokenizer, CONVERSATION, {tokenizer.eos_token_id})


def test_text_rows_carry_loss_on_every_token_and_end_with_eos(tokenizer):
    from tunelab.data.formats import Example
    from tunelab.data.templates import encode_example

    encoded = encode_example(tokenizer, Example("f", 1, text="abc"), {tokenizer.eos_token_id})
    assert encoded.labels == encoded.input_ids
    assert tokenizer.decode(encoded.input_ids) == "abc<|im_end|>"


def test_label_rows_are_refused_for_language_model_training(tokenizer):
    from tunelab.data.formats import Example
    from tunelab.data.templates import encode_example

    with pytest.raises(TunelabError, match="f:3: 'label' rows do not train"):
        encode_example(tokenizer, Example("f", 3, text="x", label="a"), {tokenizer.eos_token_id})
