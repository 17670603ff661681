"""ASGI middleware, outermost first: accounting (request log + metrics), API keys, body size limit.

Keys and the body limit are checked before the request reaches FastAPI, so an unauthenticated or oversized
request is refused before its body is parsed or validated (an upload to /v1/files as it arrives: see
BodyLimit). With API keys, /health is the only route open without one: /v1/*, /metrics, /openapi.json and any
unknown path need a key (/metrics also takes --metrics-key). The dashboard (/ui) takes the key as a Bearer header
or as the cookie its login form sets; it is not written to the request log (its live pages poll every 2 s).
"""

from __future__ import annotations

import hashlib
import hmac
import time
from typing import Any, Callable

from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect
from starlette.responses import JSONResponse, RedirectResponse

from tunelab.serve.errors import CLIENT_LEFT, error_body

ADMIN_PREFIXES = ("/v1/adapters", "/v1/deployments")  # load/unload adapters; promote, roll back
FINE_TUNING_PREFIXES = ("/v1/files", "/v1/fine_tuning")  # the fine-tuning scope: uploads and jobs
OPEN = "/health"  # liveness for load balancers and orchestrators: holds nothing a key protects
METRICS = "/metrics"
UNLOGGED = (OPEN, METRICS)
UPLOADS = "/v1/files"  # POST: a file upload, under its own limit
UPLOAD_FRAMING = 64 * 1024  # what multipart adds around an upload's file (boundaries, headers, the purpose field)
UI = "/ui"
UI_LOGIN = "/ui/login"
UI_COOKIE = "tunelab_ui"


def refuse(scope: dict, status: int, message: str) -> JSONResponse:
    """An error response; the message also goes to the request's log entry."""
    log = scope.get("state", {}).get("log")
    if log is not None:
        log["error"] = message
    return JSONResponse(error_body(status, message), status_code=status)


class Accounting:
    """Times every request and, once its last byte is sent, hands what the service left on
    `request.state.log` to `record` (the request log and the metrics).

    A client that leaves before the response starts (mid-body, or while its answer is generated) is recorded with
    status 499 and "client disconnected"; starlette's ClientDisconnect is caught here, so it is one log entry and
    not a 500 with a traceback for a response nobody would read."""

    def __init__(self, app: Any, record: Callable[[dict[str, Any]], None]):
        self.app = app
        self.record = record

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        if scope["type"] != "http" or scope["path"] in UNLOGGED or is_ui(scope["path"]):
            await self.app(scope, receive, send)
            return
        started, arrived = time.perf_counter(), time.time()
        log: dict[str, Any] = {}
        scope.setdefault("state", {})["log"] = log
        status: dict[str, Any] = {"code": 500, "started": False, "left": False}

        async def receiving() -> dict:
            message = await receive()
            if message["type"] == "http.disconnect" and not status["started"]:
                status["left"] = True
            return message

        async def sending(message: dict) -> None:
            if message["type"] == "http.response.start":
                status["code"], status["started"] = message["status"], True
            await send(message)

        try:
            await self.app(scope, receiving, sending)
        except ClientDisconnect:
            status["left"] = True
        finally:
            if status["left"] and not status["started"]:
                log.update(status=CLIENT_LEFT, error="client disconnected before the response was sent")
            entry = {**log, "ts": arrived, "endpoint": scope["path"], "status": log.get("status", status["code"]),
                     "latency_ms": (time.perf_counter() - started) * 1000, "stream": log.get("stream")}
            self.record(entry)


class ApiKeys:
    """`Authorization: Bearer KEY`, by scope. With any API key given, every route but /health needs a key:
      inference (chat, completions, models, feedback, ...)   an API key, a fine-tuning key or the admin key
      fine-tuning (/v1/files, /v1/fine_tuning)               a fine-tuning key or the admin key (an inference key: 403)
      admin (/v1/adapters, /v1/deployments)                  the admin key only, with or without API keys
    /metrics also opens to the metrics key. With no API key given, all but admin is open (a local server).

    The dashboard (/ui) opens to any key, sent as the Bearer header or as the login cookie (an HMAC of the key with
    `ui_secret`, so the cookie is not the key and dies with the server); the key's scope is left on the request
    (`request.state.ui_role`) for the dashboard's own checks on Cancel, Promote and Rollback. Without a key a page
    answers a redirect to the login form, a POST 401."""

    def __init__(self, app: Any, api_keys: frozenset[str], admin_key: str | None, metrics_key: str | None = None,
                 fine_tune_keys: frozenset[str] = frozenset(), ui_secret: bytes = b""):
        self.app = app
        self.api_keys = api_keys
        self.fine_tune_keys = fine_tune_keys
        self.admin_key = admin_key
        self.metrics_key = metrics_key
        self.ui_secret = ui_secret

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        refusal = None
        if scope["type"] == "http" and is_ui(scope["path"]):
            refusal = self.ui_refusal(scope)
        elif scope["type"] == "http" and scope["path"] != OPEN:
            refusal = self.refusal(scope)
        if refusal is not None:
            await refusal(scope, receive, send)
            return
        await self.app(scope, receive, send)

    def refusal(self, scope: dict) -> JSONResponse | None:
        token = bearer_token(scope)
        path = scope["path"]
        if path.startswith(ADMIN_PREFIXES):
            if self.admin_key is None:
                return refuse(scope, 403, "The admin endpoints are off; start the server with --admin-key")
            if token is None or not same_key(token, self.admin_key):
                return refuse(scope, 401, "Missing or wrong admin key (Authorization: Bearer <admin key>)")
            return None
        keys = self.keys_for(path)
        if not keys:
            return None
        if token is not None and any(same_key(token, key) for key in keys):
            return None
        if token is not None and path.startswith(FINE_TUNING_PREFIXES) and \
                any(same_key(token, key) for key in self.api_keys):
            return refuse(scope, 403, "This key may use the model but not the files and fine-tuning API; use a key "
                                      "given with --fine-tune-key (or the admin key)")
        return refuse(scope, 401, "Missing or wrong API key (Authorization: Bearer <key>)")

    def ui_refusal(self, scope: dict) -> JSONResponse | RedirectResponse | None:
        scopes = scoped_keys(self.api_keys, self.fine_tune_keys, self.admin_key)
        token, cookie = bearer_token(scope), cookie_value(scope, UI_COOKIE)
        role = key_scope(token, self.api_keys, self.fine_tune_keys, self.admin_key) if token else None
        if role is None and cookie:
            role = next((found for found, key in scopes if hmac.compare_digest(cookie.encode("latin-1"), ui_token(
                self.ui_secret, key).encode("ascii"))), None)
        scope.setdefault("state", {})["ui_role"] = role
        if role is not None or not (self.api_keys or self.fine_tune_keys) or scope["path"] == UI_LOGIN:
            return None
        if scope["method"] in ("GET", "HEAD"):
            return RedirectResponse(UI_LOGIN, status_code=303)
        return refuse(scope, 401, "Missing or wrong API key: sign in at /ui/login")

    def keys_for(self, path: str) -> frozenset[str]:
        """The keys that open `path`; empty: it is open."""
        keyed = bool(self.api_keys or self.fine_tune_keys)
        admin = {self.admin_key} if keyed and self.admin_key else set()
        if keyed and path.startswith(FINE_TUNING_PREFIXES):
            return frozenset(self.fine_tune_keys | admin)
        keys = self.api_keys | self.fine_tune_keys | admin
        if path == METRICS and self.metrics_key:
            keys |= {self.metrics_key}
        return frozenset(keys)


def is_ui(path: str) -> bool:
    return path == UI or path.startswith(UI + "/")


def scoped_keys(api_keys: frozenset[str], fine_tune_keys: frozenset[str],
                admin_key: str | None) -> list[tuple[str, str]]:
    """(scope, key), the widest scope first: a key given twice counts as its widest."""
    return ([("admin", admin_key)] if admin_key else []) + [("fine-tuning", key) for key in fine_tune_keys] + \
        [("inference", key) for key in api_keys]


def key_scope(token: str, api_keys: frozenset[str], fine_tune_keys: frozenset[str],
              admin_key: str | None) -> str | None:
    """admin, fine-tuning or inference: the widest scope `token` holds; None: it is no key of this server."""
    return next((scope for scope, key in scoped_keys(api_keys, fine_tune_keys, admin_key) if same_key(token, key)),
                None)


def ui_token(secret: bytes, key: str) -> str:
    """The dashboard's cookie for `key`: an HMAC, so the cookie never holds the key itself."""
    return hmac.new(secret, key.encode("utf-8"), hashlib.sha256).hexdigest()


def cookie_value(scope: dict, name: str) -> str | None:
    from http.cookies import CookieError, SimpleCookie

    for header, value in scope.get("headers", []):
        if header == b"cookie":
            cookie = SimpleCookie()
            try:
                cookie.load(value.decode("latin-1"))
            except CookieError:  # a malformed Cookie header holds no key of ours
                return None
            return cookie[name].value if name in cookie else None
    return None


def same_key(token: str, key: str) -> bool:
    """Constant-time comparison of the header's bytes with the key's UTF-8 bytes (compare_digest raises TypeError
    on str with non-ASCII characters)."""
    return hmac.compare_digest(token.encode("latin-1"), key.encode("utf-8"))


def bearer_token(scope: dict) -> str | None:
    for name, value in scope.get("headers", []):
        if name == b"authorization":
            scheme, _, token = value.decode("latin-1").partition(" ")
            return token.strip() if scheme.lower() == "bearer" and token.strip() else None
    return None


class BodyLimit:
    """Refuse bodies over `limit` bytes with 413, by Content-Length or by counting what arrives.

    An upload (POST /v1/files) has its own limit, `upload_limit` (the file's, plus the multipart framing), and its
    body is passed on as it arrives, counted but not held here: at hundreds of MiB, holding it would cost that much
    memory, where the route spools it to disk. jobs/files.py checks the file's own size against the file limit."""

    def __init__(self, app: Any, limit: int, upload_limit: int | None = None):
        self.app = app
        self.limit = limit
        self.upload_limit = limit if upload_limit is None else upload_limit + UPLOAD_FRAMING

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        upload = scope["path"] == UPLOADS and scope["method"] == "POST"
        limit = self.upload_limit if upload else self.limit
        message = f"The request body is over this server's limit of {limit} bytes"

        def too_big() -> JSONResponse:
            return refuse(scope, 413, message)

        declared = dict(scope.get("headers", [])).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            await too_big()(scope, receive, send)
            return
        if upload:
            await self.app(scope, counted(receive, limit, message), send)
            return
        body, more = b"", True
        while more:
            received = await receive()
            if received["type"] == "http.disconnect":
                return
            body += received.get("body", b"")
            more = received.get("more_body", False)
            if len(body) > self.limit:
                await too_big()(scope, receive, send)
                return
        replayed = False

        async def replay() -> dict:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()  # after the body: wait for the disconnect, as the server would send it

        await self.app(scope, replay, send)


def counted(receive: Callable, limit: int, message: str) -> Callable:
    """`receive` that raises a 413 once more than `limit` bytes have arrived (a body without Content-Length).
    FastAPI passes an HTTPException raised while it reads the form on to the app's handler, which answers it in
    OpenAI's shape."""
    arrived = 0

    async def receiving() -> dict:
        nonlocal arrived
        message_in = await receive()
        arrived += len(message_in.get("body", b""))
        if arrived > limit:
            raise HTTPException(413, message)
        return message_in

    return receiving
