"""GET /v1/models"""

from __future__ import annotations

from fastapi import APIRouter, Request

from tunelab.serve.protocol import ModelList
from tunelab.serve.routes.common import service_of

router = APIRouter()


@router.get("/v1/models", response_model=ModelList)
async def list_models(request: Request) -> ModelList:
    return service_of(request).list_models()
