"""What every route needs: the service and the request's log entry."""

from __future__ import annotations

from typing import Any

from fastapi import Request
from fastapi.responses import StreamingResponse

from tunelab.serve.service import Service


def service_of(request: Request) -> Service:
    return request.app.state.service


def log_of(request: Request) -> dict[str, Any]:
    """The entry the accounting middleware writes to the request log once the response is sent."""
    return request.scope.setdefault("state", {}).setdefault("log", {})


def answer(result: Any, log: dict[str, Any], stream: bool) -> Any:
    log["stream"] = int(stream)
    if stream:
        return StreamingResponse(result, media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
    return result
