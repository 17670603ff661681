"""Check an exported model against the model it came from: the same greedy answers on a few of the run's prompts
(a language model), or the same classes on the run's test texts (a classifier with a head)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from tunelab.data.templates import encode_prompt, prompt_and_reference, stop_token_ids
from tunelab.evaluate.generation import generate_texts
from tunelab.models.load import model_stop_ids

FALLBACK_PROMPTS = [[{"role": "user", "content": "Name three colours."}]]


@dataclass
class Agreement:
    prompts: int
    same_prompt_tokens: int  # prompts the exported tokenizer encodes to the same ids
    same_answers: int  # prompts with the same greedy answer
    max_new_tokens: int
    examples: list[dict[str, str]]

    @property
    def identical(self) -> bool:
        return self.same_prompt_tokens == self.prompts and self.same_answers == self.prompts

    def to_json(self) -> dict[str, Any]:
        return {"prompts": self.prompts, "same_prompt_tokens": self.same_prompt_tokens,
                "same_greedy_answers": self.same_answers, "max_new_tokens": self.max_new_tokens,
                "examples": self.examples}


def check_prompts(test_examples: list[Any], count: int) -> list[list[dict[str, str]]]:
    """Up to `count` conversations from the run's test rows (the prompt part), else a fixed one."""
    chats = [example.messages for example in test_examples if example.kind == "chat"][:count]
    return [prompt_and_reference(messages)[0] for messages in chats] or FALLBACK_PROMPTS


def check_texts(test_examples: list[Any], count: int) -> list[str]:
    texts = [example.text for example in test_examples if example.text][:count]
    return texts or [FALLBACK_PROMPTS[0][0]["content"]]


def compare_classes(classify: Any, reference: Any, reference_tokenizer: Any, exported: Any, exported_tokenizer: Any,
                    texts: list[str]) -> Agreement:
    expected = classify(reference, reference_tokenizer, texts)
    produced = classify(exported, exported_tokenizer, texts)
    same_tokens = sum(reference_tokenizer(text)["input_ids"] == exported_tokenizer(text)["input_ids"]
                      for text in texts)
    return Agreement(prompts=len(texts), same_prompt_tokens=same_tokens,
                     same_answers=sum(a == b for a, b in zip(expected, produced)), max_new_tokens=0,
                     examples=[{"expected": a, "exported": b} for a, b in zip(expected, produced)][:8])


def compare_greedy(reference: Any, reference_tokenizer: Any, exported: Any, exported_tokenizer: Any,
                   conversations: list[list[dict[str, str]]], max_new_tokens: int, placement: Any = None) -> Agreement:
    """Render each conversation with the run's template; encode it with each side's tokenizer; generate greedily."""
    from tunelab.data.templates import render, tokens

    reference_prompts = [encode_prompt(reference_tokenizer, chat) for chat in conversations]
    texts = [render(reference_tokenizer, chat, add_generation_prompt=True) for chat in conversations]
    exported_prompts = [tokens(exported_tokenizer, text) for text in texts]
    stops = sorted(stop_token_ids(reference_tokenizer, model_stop_ids(reference)))
    expected = generate_texts(reference, reference_tokenizer, reference_prompts, max_new_tokens, 8, stops,
                              placement=placement).texts
    produced = generate_texts(exported, exported_tokenizer, exported_prompts, max_new_tokens, 8, stops,
                              placement=placement).texts
    return Agreement(
        prompts=len(conversations),
        same_prompt_tokens=sum(a == b for a, b in zip(reference_prompts, exported_prompts)),
        same_answers=sum(a == b for a, b in zip(expected, produced)),
        max_new_tokens=max_new_tokens,
        examples=[{"expected": a, "exported": b} for a, b in zip(expected, produced)],
    )
