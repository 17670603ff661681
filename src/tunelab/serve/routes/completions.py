"""POST /v1/completions"""

from __future__ import annotations

from fastapi import APIRouter, Request

from tunelab.serve.protocol import Completion, CompletionRequest
from tunelab.serve.routes.common import answer, log_of, service_of

router = APIRouter()


@router.post("/v1/completions", response_model=Completion)
async def completions(body: CompletionRequest, request: Request):
    log = log_of(request)
    # a client that leaves cancels its request (checked while it waits)
    return answer(await service_of(request).complete(body, log, request.is_disconnected), log, body.stream)
