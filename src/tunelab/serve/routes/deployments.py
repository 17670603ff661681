"""Names in service and their versions (admin key only): GET /v1/deployments[/{name}], POST
/v1/deployments/{name}/promote and /rollback. The work is serve/deployments.py's; the record deploy/versions.py's."""

from __future__ import annotations

import dataclasses
from typing import Any

from fastapi import APIRouter, Request

from tunelab.deploy import versions
from tunelab.serve.errors import APIError
from tunelab.serve.protocol import PromoteRequest, RollbackRequest
from tunelab.serve.routes.common import log_of, service_of

router = APIRouter()


def shaped(version: versions.Version | None) -> dict[str, Any] | None:
    return None if version is None else {"object": "deployment.version", **dataclasses.asdict(version)}


def deployments_of(request: Request) -> Any:
    deployments = service_of(request).deployments
    if deployments is None:
        raise APIError(404, "this server keeps no versions (deployments are off)")
    return deployments


@router.get("/v1/deployments")
async def list_deployments(request: Request) -> dict[str, Any]:
    serve_dir = deployments_of(request).serve_dir
    return {"object": "list", "data": [
        {"object": "deployment", "name": name, "serving": shaped(versions.current(serve_dir, name)),
         "versions": len(versions.versions(serve_dir, name))} for name in versions.names(serve_dir)]}


@router.get("/v1/deployments/{name}")
async def get_deployment(name: str, request: Request) -> dict[str, Any]:
    serve_dir = deployments_of(request).serve_dir
    known = versions.versions(serve_dir, name)
    if not known:
        raise APIError(404, f"'{name[:160]}' is not a name in service here (no versions recorded)", param="name")
    return {"object": "deployment", "name": name, "serving": shaped(versions.current(serve_dir, name)),
            "versions": [shaped(version) for version in known],
            "history": [dataclasses.asdict(entry) for entry in versions.history(serve_dir, name)]}


@router.post("/v1/deployments/{name}/promote")
async def promote(name: str, body: PromoteRequest, request: Request) -> dict[str, Any]:
    log_of(request)["model"] = name[:160]
    version = await deployments_of(request).promote(name, body.version, by=body.by or "admin")
    return shaped(version)


@router.post("/v1/deployments/{name}/rollback")
async def rollback(name: str, body: RollbackRequest, request: Request) -> dict[str, Any]:
    log_of(request)["model"] = name[:160]
    version = await deployments_of(request).rollback(name, by=body.by or "admin", reason=body.reason)
    return shaped(version)
