"""The dashboard's routes under /ui: thin; data.py reads, pages.py renders.

Who may do what (the key was checked by serve/middleware.py ApiKeys, which leaves its scope on `request.state.
ui_role`): with keys, any key views, and signs in through the login form (an HttpOnly SameSite=Strict cookie);
cancelling a job takes a fine-tuning or the admin key (without keys the fine-tuning API is open, and so is Cancel);
promote and rollback take the admin key, as the API's admin endpoints do. Every change is a POST form, and a POST
whose Origin is another site is refused (the cookie's SameSite already keeps it from such a request; an open
server has no cookie to rely on).
"""

from __future__ import annotations

import secrets
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse, RedirectResponse, Response

from tunelab.serve.errors import APIError
from tunelab.serve.middleware import UI_COOKIE, key_scope, ui_token
from tunelab.serve.routes.common import service_of
from tunelab.serve.ui import data, pages

router = APIRouter(include_in_schema=False)
PAGE_POLICY = ("default-src 'none'; style-src 'unsafe-inline'; img-src 'self' data:; connect-src 'self'; "
               "form-action 'self'; frame-ancestors 'none'; base-uri 'none'; script-src 'nonce-{nonce}'")
REPORT_POLICY = "default-src 'none'; style-src 'unsafe-inline'; img-src data:; frame-ancestors 'none'"


def role(request: Request) -> str | None:
    return getattr(request.state, "ui_role", None)


def signed_in(request: Request) -> bool:
    return UI_COOKIE in request.cookies and role(request) is not None


def keyed(request: Request) -> bool:
    settings = service_of(request).settings
    return bool(settings.api_keys or settings.fine_tune_keys)


def html_page(render: Any, status: int = 200) -> HTMLResponse:
    """`render(nonce)` -> the page, served with a policy that runs no script but the page's own."""
    nonce = secrets.token_urlsafe(16)
    return HTMLResponse(render(nonce), status_code=status,
                        headers={"Content-Security-Policy": PAGE_POLICY.format(nonce=nonce),
                                 "X-Content-Type-Options": "nosniff", "Cache-Control": "no-store"})


def refused(request: Request, status: int, message: str) -> HTMLResponse:
    return html_page(lambda nonce: pages.error_page(message, signed_in(request)), status)


def check_post(request: Request, allowed: bool, needed: str) -> HTMLResponse | None:
    """A refusal page for a POST from another site or without the key it needs; None: go on."""
    origin = request.headers.get("origin")
    if origin is not None and origin != f"{request.url.scheme}://{request.headers.get('host')}":
        return refused(request, 403, "This form was sent from another site; open the dashboard and send it from "
                                     "there")
    if not allowed:
        return refused(request, 403, f"This needs {needed}; sign in with it")
    return None


# ---- sign in and out --------------------------------------------------------------------------------------------
@router.get("/ui/login")
def login_form(request: Request) -> HTMLResponse:
    return html_page(lambda nonce: pages.login_page())


@router.post("/ui/login")
async def login(request: Request) -> Response:
    form = await request.form()
    key = str(form.get("key") or "")
    settings = service_of(request).settings
    if not key or key_scope(key, settings.api_keys, settings.fine_tune_keys, settings.admin_key) is None:
        return html_page(lambda nonce: pages.login_page("Wrong key"), 401)
    answer = RedirectResponse("/ui/runs", status_code=303)
    answer.set_cookie(UI_COOKIE, ui_token(request.app.state.ui_secret, key), httponly=True, samesite="strict",
                      secure=request.url.scheme == "https", path="/ui")
    return answer


@router.post("/ui/logout")
def logout(request: Request) -> Response:
    answer = RedirectResponse("/ui/login", status_code=303)
    answer.delete_cookie(UI_COOKIE, path="/ui")
    return answer


# ---- runs -------------------------------------------------------------------------------------------------------
@router.get("/ui")
@router.get("/ui/runs")
def runs(request: Request) -> HTMLResponse:
    views = data.run_views(service_of(request))
    return html_page(lambda nonce: pages.runs_page(views, signed_in(request)))


@router.get("/ui/runs/{key}/report")
def report(key: str, request: Request) -> Response:
    path = data.report_path(service_of(request), key)
    if path is None:
        return refused(request, 404, "No report for this run (not a run this server knows, or not evaluated yet)")
    return FileResponse(path, media_type="text/html; charset=utf-8",
                        headers={"Content-Security-Policy": REPORT_POLICY, "X-Content-Type-Options": "nosniff"})


# ---- jobs -------------------------------------------------------------------------------------------------------
@router.get("/ui/jobs")
def jobs(request: Request) -> HTMLResponse:
    views = data.list_job_views(service_of(request))
    return html_page(lambda nonce: pages.jobs_page(views, signed_in(request)))


@router.get("/ui/jobs/{job_id}")
def job(job_id: str, request: Request) -> HTMLResponse:
    try:
        view = data.job_detail(service_of(request), job_id)
    except APIError as error:
        return refused(request, error.status, error.message)
    return html_page(lambda nonce: pages.job_page(view, signed_in(request), nonce))


@router.get("/ui/jobs/{job_id}/live.json")
def job_live(job_id: str, request: Request) -> JSONResponse:
    try:
        view = data.job_detail(service_of(request), job_id)
    except APIError as error:
        return JSONResponse(error.body(), status_code=error.status)
    return JSONResponse(pages.job_live(view), headers={"Cache-Control": "no-store"})


@router.post("/ui/jobs/{job_id}/cancel")
def cancel(job_id: str, request: Request) -> Response:
    refusal = check_post(request, role(request) in ("fine-tuning", "admin") or not keyed(request),
                         "a fine-tuning key or the admin key")
    if refusal is not None:
        return refusal
    try:
        data.cancel_job(service_of(request), job_id)
    except APIError as error:
        return refused(request, error.status, error.message)
    return RedirectResponse(f"/ui/jobs/{job_id}", status_code=303)


# ---- models in service ------------------------------------------------------------------------------------------
@router.get("/ui/models")
def models(request: Request) -> HTMLResponse:
    found = data.models_data(service_of(request))
    return html_page(lambda nonce: pages.models_page(found, signed_in(request)))


@router.post("/ui/models/{name}/promote")
async def promote(name: str, request: Request) -> Response:
    form = await request.form()
    version = str(form.get("version") or "")
    return await deployment_change(request, lambda deployments: deployments.promote(name, version, by=who(request)))


@router.post("/ui/models/{name}/rollback")
async def rollback(name: str, request: Request) -> Response:
    return await deployment_change(request, lambda deployments: deployments.rollback(name, by=who(request)))


async def deployment_change(request: Request, change: Any) -> Response:
    """Promote or roll back through the service (no restart), as /v1/deployments does; its refusal's message is
    shown on the models page."""
    from starlette.concurrency import run_in_threadpool

    refusal = check_post(request, role(request) == "admin", "the admin key")
    if refusal is not None:
        return refusal
    service = service_of(request)
    try:
        if service.deployments is None:
            raise APIError(404, "This server does not apply versions")
        await change(service.deployments)
    except APIError as error:
        message, status = error.message, error.status
    else:
        return RedirectResponse("/ui/models", status_code=303)
    found = await run_in_threadpool(data.models_data, service)
    return html_page(lambda nonce: pages.models_page(found, signed_in(request), message), status)


def who(request: Request) -> str:
    """Who did it, for the version's record: the dashboard and the key's scope (never the key)."""
    return f"ui:{role(request) or 'open'}"


# ---- monitor ----------------------------------------------------------------------------------------------------
@router.get("/ui/monitor")
def monitor(request: Request, since: str = "1h") -> HTMLResponse:
    from tunelab.errors import TunelabError
    from tunelab.monitor.report import parse_window

    try:
        since_s = parse_window(since)
    except TunelabError as error:
        return refused(request, 400, str(error).replace("--since", "since"))
    found = data.monitor_data(service_of(request), since_s)
    return html_page(lambda nonce: pages.monitor_page(found, since, signed_in(request)))
