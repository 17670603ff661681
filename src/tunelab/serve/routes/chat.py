"""POST /v1/chat/completions"""

from __future__ import annotations

from fastapi import APIRouter, Request

from tunelab.serve.protocol import ChatCompletion, ChatCompletionRequest
from tunelab.serve.routes.common import answer, log_of, service_of

router = APIRouter()


@router.post("/v1/chat/completions", response_model=ChatCompletion)
async def chat_completions(body: ChatCompletionRequest, request: Request):
    log = log_of(request)
    # a client that leaves cancels its request (checked while it waits)
    return answer(await service_of(request).chat(body, log, request.is_disconnected), log, body.stream)
