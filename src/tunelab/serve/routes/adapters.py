"""POST /v1/adapters (load a run's adapter), DELETE /v1/adapters/{model} (unload it); admin key only."""

from __future__ import annotations

from fastapi import APIRouter, Request

from tunelab.serve.protocol import DeletedModel, LoadAdapterRequest, ModelCard
from tunelab.serve.routes.common import log_of, service_of

router = APIRouter()


@router.post("/v1/adapters", response_model=ModelCard)
async def load_adapter(body: LoadAdapterRequest, request: Request) -> ModelCard:
    return await service_of(request).load_adapter(body, log_of(request))


@router.delete("/v1/adapters/{model_id}", response_model=DeletedModel)
async def unload_adapter(model_id: str, request: Request) -> DeletedModel:
    return await service_of(request).unload_adapter(model_id, log_of(request))
