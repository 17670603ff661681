"""GET /health (liveness and what is loaded) and GET /metrics (Prometheus)."""

from __future__ import annotations

from fastapi import APIRouter, Request, Response

from tunelab.serve.routes.common import service_of

router = APIRouter()


@router.get("/health")
async def health(request: Request) -> dict:
    service = service_of(request)
    return {"status": "ok", "models": service.registry.ids(), "queue_depth": service.engine.queue_depth()}


@router.get("/metrics")
async def metrics(request: Request) -> Response:
    body, content_type = service_of(request).metrics.render()
    return Response(body, media_type=content_type)
