"""POST /tokenize, POST /detokenize, GET /tokenizer_info: the server's tokenizer, in vLLM's shapes.

lm-eval's `local-completions` with `tokenizer_backend=remote` uses them to count context tokens and to send
loglikelihood requests as token ids, so the scores it gets are for exactly the tokens the server's model sees.
They sit at the root (not under /v1/), where vLLM and lm-eval put them.
"""

from __future__ import annotations

from fastapi import APIRouter, Request

from tunelab.serve import protocol as api
from tunelab.serve.errors import APIError
from tunelab.serve.registry import ServedModel
from tunelab.serve.routes.common import log_of, service_of

router = APIRouter()


def model_of(request: Request, model_id: str | None) -> ServedModel:
    service = service_of(request)
    return service.registry.base if model_id is None else service.served(model_id, log_of(request))


@router.post("/tokenize", response_model=api.TokenizeResponse)
async def tokenize(body: api.TokenizeRequest, request: Request) -> api.TokenizeResponse:
    tokenizer = model_of(request, body.model).tokenizer
    tokens = tokenizer(body.prompt, add_special_tokens=body.add_special_tokens)["input_ids"]
    strings = tokenizer.convert_ids_to_tokens(tokens) if body.return_token_strs else None
    return api.TokenizeResponse(count=len(tokens), max_model_len=service_of(request).context_length, tokens=tokens,
                            token_strs=strings)


@router.post("/detokenize", response_model=api.DetokenizeResponse)
async def detokenize(body: api.DetokenizeRequest, request: Request) -> api.DetokenizeResponse:
    tokenizer = model_of(request, body.model).tokenizer
    bad = next((token for token in body.tokens if not 0 <= token < len(tokenizer)), None)
    if bad is not None:
        raise APIError(400, f"tokens: token id {bad} is outside the vocabulary (0 to {len(tokenizer) - 1})",
                       param="tokens")
    return api.DetokenizeResponse(prompt=tokenizer.decode(body.tokens))


@router.get("/tokenizer_info", response_model=api.TokenizerInfo)
async def tokenizer_info(request: Request, model: str | None = None) -> api.TokenizerInfo:
    tokenizer = model_of(request, model).tokenizer
    template = tokenizer.chat_template if isinstance(tokenizer.chat_template, str) else None
    return api.TokenizerInfo(tokenizer_class=type(tokenizer).__name__, eos_token=tokenizer.eos_token,
                         bos_token=tokenizer.bos_token, pad_token=tokenizer.pad_token,
                         unk_token=tokenizer.unk_token, chat_template=template,
                         model_max_length=service_of(request).context_length, vocab_size=len(tokenizer))
