"""Request and response bodies in OpenAI's shapes (fields in OpenAI's order), as pydantic models.

Parameters OpenAI defines but this server does not implement are accepted at their neutral value and refused
with a 400 naming the parameter otherwise (see service.check_request), so a client never gets silently
different behaviour. Unknown fields, wrong types and values out of range (NaN and infinities included) are refused
with a 422 that names the field. Sampling values are clamped here to what the sampler computes safely, so no value
that passes validation can break a batch (see `clamp_temperature`).
"""

from __future__ import annotations

import time
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

SEED_MAX = 2**63 - 1  # torch.Generator.manual_seed takes a signed 64-bit seed
GREEDY_BELOW = 1e-5  # a temperature under this is greedy decoding (what such a temperature means anyway)
MIN_TEMPERATURE = 0.01  # lower ones are raised to this: logits / 1e-40 overflow to inf and softmax gives NaN
MAX_LOGPROBS = 20  # most likely alternatives a token's logprobs may list (OpenAI's limit for chat)


class Body(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)


class TextPart(Body):
    type: Literal["text"]
    text: str


class ChatMessage(Body):
    role: Literal["system", "developer", "user", "assistant"]
    content: str | list[TextPart] | None = None
    name: str | None = None

    def text(self) -> str:
        if self.content is None:
            return ""
        if isinstance(self.content, str):
            return self.content
        return "".join(part.text for part in self.content)


class StreamOptions(Body):
    include_usage: bool = False


class ResponseFormat(Body):
    type: Literal["text", "json_object", "json_schema"] = "text"
    json_schema: dict[str, Any] | None = None


class SamplingFields(Body):
    """What chat and completions share, in OpenAI's order."""

    frequency_penalty: float | None = Field(None, ge=-2, le=2)
    logit_bias: dict[str, float] | None = None
    max_tokens: int | None = Field(None, ge=1, description="New tokens at most; the server's --max-tokens caps it.")
    n: int = Field(1, ge=1, le=16, description="Choices per prompt.")
    presence_penalty: float | None = Field(None, ge=-2, le=2)
    seed: int | None = Field(None, ge=0, le=SEED_MAX,
                             description="Same seed, same prompt, same parameters: the same sampled answer.")
    stop: str | list[str] | None = Field(None, description="Up to 4 strings; generation ends before the first.")
    stream: bool = False
    stream_options: StreamOptions | None = None
    temperature: float = Field(1.0, ge=0, le=2, description=f"0 (or under {GREEDY_BELOW}) = greedy; other values "
                                                             f"under {MIN_TEMPERATURE} are raised to it.")
    top_p: float = Field(1.0, gt=0, le=1)
    top_k: int = Field(0, ge=0, le=1 << 20, description="Not OpenAI's (vLLM's): sample from the k most likely "
                                                          "tokens only; 0 = all.")
    user: str | None = None

    @field_validator("temperature")
    @classmethod
    def clamp_temperature(cls, value: float) -> float:
        if value < GREEDY_BELOW:
            return 0.0
        return max(value, MIN_TEMPERATURE)

    def stop_strings(self) -> list[str]:
        if self.stop is None:
            return []
        return [self.stop] if isinstance(self.stop, str) else list(self.stop)


class ChatCompletionRequest(SamplingFields):
    messages: list[ChatMessage] = Field(..., min_length=1)
    model: str
    logprobs: bool | None = Field(None, description="Return each new token's logprob (choices[].logprobs.content).")
    top_logprobs: int | None = Field(None, ge=0, le=MAX_LOGPROBS,
                                     description="With logprobs: also the most likely alternatives at each token.")
    max_completion_tokens: int | None = Field(None, ge=1, description="OpenAI's newer name for max_tokens.")
    response_format: ResponseFormat | None = None
    tools: list[dict[str, Any]] | None = None
    tool_choice: Any = None
    parallel_tool_calls: bool | None = None


class CompletionRequest(SamplingFields):
    model: str
    prompt: str | list[str] | list[int] | list[list[int]] = Field(
        ..., description="A text, a list of texts, a list of token ids, or a list of lists of token ids.")
    echo: bool = Field(False, description="Put the prompt before the completion (and its tokens in logprobs).")
    logprobs: int | None = Field(None, ge=0, le=MAX_LOGPROBS,
                                 description="Each token's logprob and this many most likely alternatives.")
    max_tokens: int | None = Field(None, ge=0, description="New tokens at most (0: score the prompt only, with "
                                                           "echo); the server's --max-tokens caps it.")
    suffix: str | None = None
    best_of: int | None = None


class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class AssistantMessage(BaseModel):
    role: Literal["assistant"] = "assistant"
    content: str


class TopLogprob(BaseModel):
    token: str
    logprob: float
    bytes: list[int] | None = None


class TokenLogprob(BaseModel):
    token: str
    logprob: float
    bytes: list[int] | None = None
    top_logprobs: list[TopLogprob]


class ChoiceLogprobs(BaseModel):
    content: list[TokenLogprob] | None = None
    refusal: list[TokenLogprob] | None = None


class ChatChoice(BaseModel):
    index: int
    message: AssistantMessage
    logprobs: ChoiceLogprobs | None = None
    finish_reason: str


class ChatCompletion(BaseModel):
    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int = Field(default_factory=lambda: int(time.time()))
    model: str
    choices: list[ChatChoice]
    usage: Usage


class Delta(BaseModel):
    role: Literal["assistant"] | None = None
    content: str | None = None


class ChunkChoice(BaseModel):
    index: int
    delta: Delta
    logprobs: ChoiceLogprobs | None = None
    finish_reason: str | None = None


class ChatCompletionChunk(BaseModel):
    id: str
    object: Literal["chat.completion.chunk"] = "chat.completion.chunk"
    created: int
    model: str
    choices: list[ChunkChoice]
    usage: Usage | None = None


class CompletionLogprobs(BaseModel):
    """Legacy completions' shape: per token its text, logprob (None for the first prompt token, which has no
    context), the most likely alternatives (text -> logprob) and where it starts in the text."""

    tokens: list[str]
    token_logprobs: list[float | None]
    top_logprobs: list[dict[str, float] | None]
    text_offset: list[int]


class CompletionChoice(BaseModel):
    index: int
    text: str
    logprobs: CompletionLogprobs | None = None
    finish_reason: str | None = None


class Completion(BaseModel):
    id: str
    object: Literal["text_completion"] = "text_completion"
    created: int
    model: str
    choices: list[CompletionChoice]
    usage: Usage | None = None


class ModelCard(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str = "tunelab"
    parent: str | None = None


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]


class LoadAdapterRequest(Body):
    run: str = Field(..., description="Run folder on the server whose adapter to load, inside its --runs-root.")
    name: str | None = Field(None, description="Model id to serve it as; default the run folder's name.")


class PromoteRequest(Body):
    version: str = Field(..., description="The version to serve: its number (3 or v3), or a run folder on the "
                                          "server inside its --runs-root (recorded as a new version).")
    by: str | None = Field(None, max_length=200, description="Who promotes it, as the history records it; "
                                                             "default: admin.")


class RollbackRequest(Body):
    by: str | None = Field(None, max_length=200, description="Who rolls back, as the history records it.")
    reason: str | None = Field(None, max_length=2000, description="Why, as the history records it.")


class DeletedModel(BaseModel):
    id: str
    object: Literal["model"] = "model"
    deleted: bool = True
    in_flight: int = Field(0, description="Requests still using the adapter; it is unloaded once they finish.")



class TokenizeRequest(Body):
    """POST /tokenize (vLLM's shape, which lm-eval's remote tokenizer uses)."""

    model: str | None = Field(None, description="Whose tokenizer; default the base model's.")
    prompt: str
    add_special_tokens: bool = True
    return_token_strs: bool = False


class TokenizeResponse(BaseModel):
    count: int
    max_model_len: int
    tokens: list[int]
    token_strs: list[str] | None = None


class DetokenizeRequest(Body):
    model: str | None = None
    tokens: list[int]


class DetokenizeResponse(BaseModel):
    prompt: str


class TokenizerInfo(BaseModel):
    """GET /tokenizer_info: what a client needs to tokenize like the server (lm-eval reads eos_token, bos_token and
    chat_template)."""

    tokenizer_class: str
    eos_token: str | None
    bos_token: str | None
    pad_token: str | None
    unk_token: str | None
    chat_template: str | None
    model_max_length: int
    vocab_size: int


# ---- files (/v1/files) ---------------------------------------------------------------------------------------
class FileObject(BaseModel):
    """OpenAI's File object; `status` and `status_details` are deprecated there and constant here (an upload that
    fails the checks is refused, never kept with status `error`)."""

    id: str
    bytes: int
    created_at: int
    filename: str
    object: Literal["file"] = "file"
    purpose: str
    status: Literal["processed"] = "processed"
    status_details: str | None = None
    expires_at: int | None = None


class FileList(BaseModel):
    object: Literal["list"] = "list"
    data: list[FileObject]
    first_id: str | None
    last_id: str | None
    has_more: bool


class FileDeleted(BaseModel):
    id: str
    object: Literal["file"] = "file"
    deleted: bool = True


class FeedbackRequest(Body):
    """POST /v1/feedback (a tunelab extension; OpenAI has no such endpoint): a judgement of a logged answer."""

    completion_id: str = Field(..., max_length=128, description="The id of a chat completion or completion.")
    index: int = Field(0, ge=0, description="The choice judged (for n > 1 or several prompts).")
    rating: Literal["up", "down"] | None = None
    correction: str | None = Field(None, description="The answer the model should have given.")
    preferred: str | None = Field(None, description="An alternative answer preferred to the model's.")
    comment: str | None = None


class Feedback(BaseModel):
    id: str
    object: Literal["feedback"] = "feedback"
    created_at: int
    completion_id: str
    model: str | None
    index: int
    rating: Literal["up", "down"] | None = None
    correction: str | None = None
    preferred: str | None = None
    comment: str | None = None
