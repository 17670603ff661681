"""The app factory: routes, middleware and error handlers around one Service."""

from __future__ import annotations

import secrets
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException

from tunelab import __version__
from tunelab.serve.errors import APIError, error_body
from tunelab.serve.middleware import Accounting, ApiKeys, BodyLimit
from tunelab.serve.routes import (
    adapters,
    chat,
    completions,
    deployments,
    feedback,
    files,
    fine_tuning,
    health,
    models,
    tokenize,
)
from tunelab.serve.service import Service
from tunelab.serve.ui import routes as ui


def create_app(service: Service) -> FastAPI:
    """A FastAPI app serving `service`; shutting the app down closes the service (engine, request log)."""

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        yield
        service.close()

    app = FastAPI(title="tunelab", version=__version__, lifespan=lifespan, docs_url=None, redoc_url=None)
    app.state.service = service
    app.state.ui_secret = secrets.token_bytes(32)  # signs the dashboard's login cookies, for this server's life
    for module in (models, chat, completions, tokenize, adapters, deployments, feedback, files, fine_tuning, health,
                   ui):
        app.include_router(module.router)
    settings = service.settings
    # add_middleware wraps: the last added runs first (Accounting sees every request, even refused ones)
    app.add_middleware(BodyLimit, limit=settings.max_body_bytes, upload_limit=settings.max_file_bytes)
    app.add_middleware(ApiKeys, api_keys=settings.api_keys, fine_tune_keys=settings.fine_tune_keys,
                       admin_key=settings.admin_key,
                       metrics_key=settings.metrics_key, ui_secret=app.state.ui_secret)
    app.add_middleware(Accounting, record=lambda entry: record(service, entry))
    app.add_exception_handler(APIError, api_error)
    app.add_exception_handler(RequestValidationError, validation_error)
    app.add_exception_handler(HTTPException, http_error)
    app.add_exception_handler(Exception, server_error)
    return app


def record(service: Service, entry: dict[str, Any]) -> None:
    service.request_log.append(entry)
    service.metrics.observe(entry)


async def api_error(request: Request, error: APIError) -> JSONResponse:
    log = request.scope.get("state", {}).get("log")
    if log is not None:
        log["error"] = error.message
    return JSONResponse(error.body(), status_code=error.status, headers=error.headers)


async def validation_error(request: Request, error: RequestValidationError) -> JSONResponse:
    """Malformed JSON: 400. Wrong types, missing or unknown fields: 422 naming the first field."""
    problems = error.errors()
    first = problems[0]
    if first["type"] in ("json_invalid", "json_type"):
        return await api_error(request, APIError(400, f"The body is not valid JSON: {first.get('msg')}"))
    field = ".".join(str(part) for part in first["loc"] if part != "body" and not is_type_tag(part))
    others = len({problem["loc"][:2] for problem in problems}) - 1
    more = f" (and {others} more problem{'s' if others > 1 else ''})" if others > 0 else ""
    message = f"{field or 'body'}: {first['msg']}{more}"
    # OpenAI answers a bad files or fine-tuning request (an out-of-range hyperparameter) with 400, not 422
    status = 400 if request.url.path.startswith(("/v1/files", "/v1/fine_tuning")) else 422
    return await api_error(request, APIError(status, message, param=field or None))


def is_type_tag(part: object) -> bool:
    """pydantic names the union member it tried inside `loc` (str, list[TextPart], ...): not a field of the body."""
    return isinstance(part, str) and (part in ("str", "int", "float", "bool", "dict", "list") or "[" in part)


async def http_error(request: Request, error: HTTPException) -> JSONResponse:
    return JSONResponse(error_body(error.status_code, str(error.detail)), status_code=error.status_code,
                        headers=getattr(error, "headers", None))


async def server_error(request: Request, error: Exception) -> JSONResponse:
    return JSONResponse(error_body(500, f"internal error: {type(error).__name__}"), status_code=500)
